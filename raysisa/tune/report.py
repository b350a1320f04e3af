"""A study's results people can read, from its Tune experiments (finished or running).

Written to ``<storage>/<study>/report/``:

- ``trials.parquet`` and ``trials.md``: every trial of every cell, its sampled
  hyperparameters (``param.<name>``), status, epochs run and last reported metrics;
- ``best.json`` and ``best.md``: the best trial per (method, bits), by the objective;
- ``gap_vs_bits.png``: the best trial's Avg Gap against bit width per method (mean ± std
  over the seeds);
- ``gap_vs_rte.png``: every trial's Avg Gap against its run time (the cost of forgetting
  well), the retrained reference's time marked.

A hybrid study (``kind: hybrid``) has its own report (:mod:`raysisa.tune.hybrid_report`):
the same tables, and ``pareto.png``/``pareto.md`` instead of the two plots.
"""

from __future__ import annotations

import io
import math
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raysisa.errors import ConfigError
from raysisa.evaluation.report import figure_png
from raysisa.store import ObjectStore
from raysisa.tune.paths import SweepPaths, storage_store
from raysisa.tune.hybrid_report import write_hybrid_report
from raysisa.config.recipe import FULL_PRECISION, bits_label
from raysisa.tune.spec import AnyStudy, Cell, HybridStudySpec, StudySpec, parse_study
from raysisa.tune.tables import experiment_trials as _trials
from raysisa.tune.tables import markdown_table as _table
from raysisa.tune.tables import number as _number
from raysisa.tune.tables import plain as _plain
from raysisa.tune.tables import sampled_params
from raysisa.tune.trial import REPORTED

__all__ = ["trial_rows", "best_rows", "write_report", "sweep_report", "studies_at"]

COLUMNS = ("method", "bits", "trial", "status", "epochs_run", *REPORTED)


def trial_rows(study: StudySpec, paths: SweepPaths) -> list[dict[str, Any]]:
    """One row per trial of every cell (trials not started yet are absent)."""
    rows = []
    for cell in study.cells():
        for trial in _trials(paths.cell(cell)):
            last = trial.last_result or {}
            row: dict[str, Any] = {
                "method": cell.method,
                "bits": cell.bits,
                "trial": trial.trial_id,
                "status": trial.status,
                "epochs_run": int(last.get("training_iteration", 0)),
            }
            row.update({k: _number(last.get(k)) for k in REPORTED})
            row.update({f"param.{k}": v for k, v in sorted(trial.config.items())})
            row["error"] = bool(trial.error_file) if hasattr(trial, "error_file") else trial.status == "ERROR"
            rows.append(row)
    return rows


def best_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The row with the lowest objective per cell (``<method>-w<bits>``), among trials that reported."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        if not math.isfinite(row["objective"]):
            continue
        name = Cell(method=row["method"], bits=row["bits"]).name
        if name not in best or row["objective"] < best[name]["objective"]:
            best[name] = row
    return best


def _gap_vs_bits(study: StudySpec, best: dict[str, dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bits = sorted(study.quantization.bits)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in study.methods:
        points = [(i, best[f"{method}-w{b}"]) for i, b in enumerate(bits) if f"{method}-w{b}" in best]
        if points:
            ax.errorbar([i for i, _ in points], [r["avg_gap"] for _, r in points], yerr=[r["avg_gap_std"] for _, r in points],
                        marker="o", capsize=3, label=method)
    ax.set_xticks(range(len(bits)), [bits_label(b) for b in bits])
    ax.set_xlabel("weight bits")
    ax.set_ylabel("Avg Gap to retrain (best trial, mean ± std over seeds)")
    ax.set_title(f"{study.name}: Avg Gap against bit width")
    ax.legend()
    return figure_png(fig)


def _gap_vs_rte(study: StudySpec, rows: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {2: "v", 4: "s", 8: "D", FULL_PRECISION: "o"}
    fig, ax = plt.subplots(figsize=(6, 4))
    for index, method in enumerate(study.methods):
        color = f"C{index}"
        for bits in study.quantization.bits:
            points = [r for r in rows if r["method"] == method and r["bits"] == bits and math.isfinite(r["avg_gap"])]
            if points:
                ax.scatter([r["rte_seconds"] for r in points], [r["avg_gap"] for r in points], color=color,
                           marker=markers.get(bits, "o"), label=f"{method} {bits_label(bits)}", alpha=0.8)
    retrain = [r["retrain_seconds"] for r in rows if math.isfinite(r["retrain_seconds"])]
    if retrain:
        ax.axvline(sum(retrain) / len(retrain), color="grey", linestyle="--", label="retrain (mean)")
    ax.set_xlabel("run time of the unlearning, s (RTE, mean over seeds)")
    ax.set_ylabel("Avg Gap to retrain")
    ax.set_title(f"{study.name}: the cost of forgetting well")
    ax.legend(fontsize=7)
    return figure_png(fig)


def write_report(study: AnyStudy, paths: SweepPaths) -> dict[str, Any]:
    """Write the report files of ``study``; returns the best trial per cell and the file keys."""
    if isinstance(study, HybridStudySpec):
        return write_hybrid_report(study, paths)
    rows = trial_rows(study, paths)
    best = best_rows(rows)
    files = paths.files
    params = sorted({k for r in rows for k in r if k.startswith("param.")})
    columns = [*COLUMNS, *params, "error"]
    table = pa.table({c: [r.get(c) if not c.startswith("param.") else _plain(r.get(c)) for r in rows] for c in columns}) if rows else pa.table({c: [] for c in COLUMNS})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    files.put_bytes("report/trials.parquet", buffer.getvalue())
    shown = ["method", "bits", "trial", "status", "epochs_run", "objective", "avg_gap", "UA", "RA", "TA", "MIA", "rte_seconds", *params]
    files.put_bytes("report/trials.md", (f"# {study.name}: all trials\n\n" + _table(rows, shown) + "\n").encode())
    best_list = [best[c.name] for c in study.cells() if c.name in best]
    summary = {
        "study": study.name,
        "objective": study.objective.to_dict(),
        "best": {name: {"params": sampled_params(row),
                        **{k: row[k] for k in ("objective", "avg_gap", "avg_gap_std", "UA", "RA", "TA", "MIA", "rte_seconds", "retrain_seconds", "trial", "epochs_run")}}
                 for name, row in best.items()},
        "trials": len(rows),
        "errors": sum(1 for r in rows if r["error"]),
    }
    files.put_json("report/best.json", summary)
    files.put_bytes("report/best.md", (f"# {study.name}: best trial per (method, bits)\n\n" + _table(best_list, shown) + "\n").encode())
    files.put_bytes("report/gap_vs_bits.png", _gap_vs_bits(study, best))
    files.put_bytes("report/gap_vs_rte.png", _gap_vs_rte(study, rows))
    summary["files"] = [f"report/{name}" for name in ("trials.parquet", "trials.md", "best.json", "best.md", "gap_vs_bits.png", "gap_vs_rte.png")]
    return summary


def studies_at(storage: str) -> list[str]:
    """Names of the studies under ``storage``."""
    keys = ObjectStore(storage_store(SweepPaths.of(storage, "-").storage)).glob("*/study.json")
    return [k.split("/", 1)[0] for k in keys]


def sweep_report(storage: str, study: str | None = None) -> list[dict[str, Any]]:
    """Regenerate the report of ``study`` (default: every study under ``storage``).

    Raises:
        ConfigError: no such study there.
    """
    names = [study] if study else studies_at(storage)
    if not names:
        raise ConfigError(f"no sweep study under {storage} (looked for */study.json)")
    from raysisa.sisa.actors import ray_session  # Tune's ExperimentAnalysis needs a Ray session

    out = []
    with ray_session():
        for name in names:
            paths = SweepPaths.of(storage, name)
            if not paths.files.exists("study.json"):
                raise ConfigError(f"no study {name!r} under {storage}; studies there: {', '.join(studies_at(storage)) or 'none'}")
            out.append(write_report(parse_study(paths.files.get_json("study.json")), paths))
    return out
