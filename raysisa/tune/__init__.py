"""Ray Tune sweeps of unlearning methods across bit widths (``raysisa sweep``).

- :mod:`~raysisa.tune.spec`: a study as data (``tune_configs/*.yaml``), validated on load;
- :mod:`~raysisa.tune.artifacts`: the original and reference models, trained once and shared;
- :mod:`~raysisa.tune.trial`: one trial, reporting once per unlearning epoch;
- :mod:`~raysisa.tune.runner`: one Tune experiment per (method, bits), resumable;
- :mod:`~raysisa.tune.report`: tables, best configurations and plots.
"""

from raysisa.tune.report import sweep_report, write_report
from raysisa.tune.runner import SweepResult, sweep
from raysisa.tune.spec import StudySpec, load_study, parse_study

__all__ = ["StudySpec", "SweepResult", "load_study", "parse_study", "sweep", "sweep_report", "write_report"]
