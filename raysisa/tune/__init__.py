"""Ray Tune sweeps (``raysisa sweep``) of unlearning methods across bit widths, and of the
coordinator's retrain-or-update policy on a deletion stream (``kind: hybrid``).

- :mod:`~raysisa.tune.spec`: a study as data (``tune_configs/*.yaml``), validated on load;
- :mod:`~raysisa.tune.artifacts`: the original and reference models, trained once and shared;
- :mod:`~raysisa.tune.trial`: one trial, reporting once per unlearning epoch;
- :mod:`~raysisa.tune.hybrid`: a hybrid study's scenario (ensemble, stream, PRS baseline),
  prepared once, its trial (one replay of the stream) and its Pareto front;
- :mod:`~raysisa.tune.runner`: one Tune experiment per (method, bits), or one per hybrid
  study, resumable;
- :mod:`~raysisa.tune.report` and :mod:`~raysisa.tune.hybrid_report`: tables, best
  configurations and plots.
"""

from raysisa.tune.report import sweep_report, write_report
from raysisa.tune.runner import SweepResult, sweep
from raysisa.tune.spec import HybridStudySpec, StudySpec, load_study, parse_study

__all__ = ["HybridStudySpec", "StudySpec", "SweepResult", "load_study", "parse_study", "sweep", "sweep_report", "write_report"]
