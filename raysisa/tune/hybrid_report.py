"""The report of a hybrid study (``kind: hybrid``), from its Tune experiment (finished or
running) and its stored PRS baseline.

Written to ``<storage>/<study>/report/``:

- ``trials.parquet`` and ``trials.md``: every trial, its sampled coordinator parameters
  (``param.<dotted name>``), status, objective, whether it is within the accuracy floor
  (``feasible``) and on the Pareto front (``pareto``), requests per hour, gain over PRS,
  apply time, accuracy gap to PRS, final and minimum served accuracy, the time to restore
  exactness afterwards, and its shard decisions (retrains, updates);
- ``best.json`` and ``best.md``: the best trial by the objective (the fastest within the
  floor when any is), the PRS baseline, the front;
- ``pareto.png``: requests per hour against the accuracy gap for every trial, the front
  highlighted, PRS marked, the floor drawn;
- ``pareto.md``: the front's configurations and a recommendation.
"""

from __future__ import annotations

import io
import math
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raysisa.evaluation.report import figure_png
from raysisa.tune.hybrid import HYBRID_REPORTED, pareto_front, recommend
from raysisa.tune.paths import SweepPaths
from raysisa.tune.spec import HybridStudySpec
from raysisa.tune.tables import experiment_trials, markdown_table, number, plain, sampled_params

__all__ = ["HYBRID_EXPERIMENT", "HYBRID_FILES", "hybrid_rows", "baseline_of", "pareto_markdown", "write_hybrid_report"]

HYBRID_EXPERIMENT = "hybrid"  # the study's one Tune experiment: <storage>/<study>/hybrid/
HYBRID_FILES = ("trials.parquet", "trials.md", "best.json", "best.md", "pareto.png", "pareto.md")
COLUMNS = ("trial", "status", *HYBRID_REPORTED)
SHOWN = ("trial", "status", "objective", "feasible", "pareto", "requests_per_hour", "gain", "apply_seconds", "accuracy_gap",
         "final_accuracy", "min_accuracy", "restore_seconds", "retrains", "updates")


def hybrid_rows(study: HybridStudySpec, paths: SweepPaths) -> list[dict[str, Any]]:
    """One row per trial (trials not started yet are absent), with ``feasible`` (within the
    accuracy floor) and ``pareto`` (on the front) set."""
    rows = []
    for trial in experiment_trials(paths.experiment(HYBRID_EXPERIMENT)):
        last = trial.last_result or {}
        row: dict[str, Any] = {"trial": trial.trial_id, "status": trial.status}
        row.update({k: number(last.get(k)) for k in HYBRID_REPORTED})
        row["feasible"] = study.objective.feasible(row["accuracy_gap"])
        row.update({f"param.{k}": v for k, v in sorted(trial.config.items())})
        row["error"] = bool(trial.error_file) if hasattr(trial, "error_file") else trial.status == "ERROR"
        rows.append(row)
    front = {r["trial"] for r in pareto_front(rows)}
    for row in rows:
        row["pareto"] = row["trial"] in front
    return rows


def baseline_of(paths: SweepPaths) -> dict[str, Any] | None:
    """The PRS baseline the study's trials compare with (from ``prepared.json``; None before
    the study was prepared)."""
    files = paths.files
    if not files.exists("prepared.json"):
        return None
    prepared = files.get_json("prepared.json")
    return {**prepared["baseline"], "requests": prepared["requests"], "deleted": prepared["deleted"],
            "initial_accuracy": prepared["initial_accuracy"]}


def _params_text(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sampled_params(row).items())


def _best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    scored = [r for r in rows if math.isfinite(r["objective"])]
    return min(scored, key=lambda r: r["objective"]) if scored else None


def pareto_markdown(study: HybridStudySpec, rows: list[dict[str, Any]], baseline: dict[str, Any] | None) -> str:
    """``pareto.md``: the front's trials with their parameters, and what they recommend."""
    floor = study.objective.accuracy_floor
    front = [r for r in rows if r["pareto"]]
    front.sort(key=lambda r: (-r["requests_per_hour"], r["accuracy_gap"]))
    params = sorted({k for r in rows for k in r if k.startswith("param.")})
    lines = [f"# {study.name}: throughput against accuracy (Pareto front)", ""]
    if baseline is not None:
        lines += [
            f"Stream: {baseline['requests']} deletion requests ({baseline['deleted']} samples) on the scenario's "
            f"{_shape(study)} ensemble (initial test accuracy {baseline['initial_accuracy']:.2f}%). Pure retraining (PRS): "
            f"{baseline['requests_per_hour']:,.0f} requests/hour, final accuracy {baseline['final_accuracy']:.2f}%. "
            f"Accuracy floor: a final accuracy at most {floor:g} pp below PRS's.",
            "",
        ]
    lines += [
        f"{len(front)} of {len(rows)} trials are on the front: no other trial is at least as good on both requests per hour "
        "and accuracy gap and better on one (gap = PRS's final accuracy − the trial's, in pp; negative: more accurate than PRS).",
        "",
        markdown_table(_display(front), ["trial", "requests_per_hour", "gain", "accuracy_gap", "final_accuracy", "feasible",
                               "restore_seconds", "retrains", "updates", *params]),
        "",
        "## Recommendation",
        "",
        _recommendation(study, rows, front, baseline),
        "",
    ]
    return "\n".join(lines)


def _display(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for a Markdown table: decision counts as integers."""
    return [{**r, **{k: int(r[k]) for k in ("retrains", "updates") if math.isfinite(r.get(k, math.nan))}} for r in rows]


def _shape(study: HybridStudySpec) -> str:
    sharding = study.spec().sharding
    return f"{sharding.num_shards} x {sharding.num_slices}"


def _recommendation(study: HybridStudySpec, rows: list[dict[str, Any]], front: list[dict[str, Any]], baseline: dict[str, Any] | None) -> str:
    floor = study.objective.accuracy_floor
    if not front:
        return "No trial has reported yet."
    chosen = recommend(rows, study.objective)
    prs = f"PRS's {baseline['requests_per_hour']:,.0f}" if baseline is not None else "PRS"
    if chosen is None:
        closest = min(front, key=lambda r: r["accuracy_gap"])
        return (
            f"No trial kept its final accuracy within {floor:g} pp of pure retraining's. The closest, "
            f"{_params_text(closest)} (trial {closest['trial']}), ended {closest['accuracy_gap']:.2f} pp below at "
            f"{closest['requests_per_hour']:,.0f} requests/hour. Search closer to retraining (a larger rho, tighter debt "
            "bounds, OHS fine-tuning) or relax the floor."
        )
    text = (
        f"Within the floor of {floor:g} pp, the highest throughput is {_params_text(chosen)} (trial {chosen['trial']}): "
        f"{chosen['requests_per_hour']:,.0f} requests/hour, {chosen['gain']:.2f}x {prs}, with a final served accuracy of "
        f"{chosen['final_accuracy']:.2f}% ({_gap_words(chosen['accuracy_gap'])}). Its {chosen['updates']:.0f} approximate "
        f"shard updates (and {chosen['retrains']:.0f} retrains) leave {chosen['restore_seconds']:.1f}s of retraining to "
        "restore exactness after the stream, off the requesters' path."
    )
    safest = min(front, key=lambda r: (r["accuracy_gap"], -r["requests_per_hour"]))
    if safest is not chosen:
        text += (
            f" The front's most accurate point, {_params_text(safest)} (trial {safest['trial']}), trades throughput for "
            f"accuracy: {safest['requests_per_hour']:,.0f} requests/hour ({safest['gain']:.2f}x) at "
            f"{_gap_words(safest['accuracy_gap'])}."
        )
    if baseline is not None and chosen["requests_per_hour"] < baseline["requests_per_hour"]:
        text += (
            f" PRS itself served more requests per hour ({baseline['requests_per_hour']:,.0f}) than every trial within the "
            "floor: on this stream, updating does not pay; keep pure retraining (policy prs) or search a larger rho."
        )
    text += (
        " Times are wall-clock on the sweep's machine (PRS was replayed once, when the study was prepared); rerun a "
        "chosen configuration with bench/hybrid.py before relying on the gain."
    )
    return text


def _gap_words(gap: float) -> str:
    if gap > 0:
        return f"{gap:.2f} pp below PRS"
    if gap < 0:
        return f"{-gap:.2f} pp above PRS"
    return "the same as PRS"


def _pareto_png(study: HybridStudySpec, rows: list[dict[str, Any]], baseline: dict[str, Any] | None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = study.objective.accuracy_floor
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    shown = [r for r in rows if math.isfinite(r["requests_per_hour"]) and math.isfinite(r["accuracy_gap"])]
    for feasible, colour, label in ((True, "C0", "trial within the floor"), (False, "C7", "trial over the floor")):
        points = [r for r in shown if r["feasible"] == feasible and not r["pareto"]]
        if points:
            ax.scatter([r["accuracy_gap"] for r in points], [r["requests_per_hour"] for r in points], color=colour, alpha=0.7, label=label)
    front = sorted((r for r in shown if r["pareto"]), key=lambda r: r["accuracy_gap"])
    if front:
        ax.plot([r["accuracy_gap"] for r in front], [r["requests_per_hour"] for r in front], color="C3", marker="o",
                markersize=8, lw=1.5, drawstyle="steps-post", label="Pareto front")
    chosen = recommend(shown, study.objective)
    if chosen is not None:
        ax.scatter([chosen["accuracy_gap"]], [chosen["requests_per_hour"]], s=220, facecolors="none", edgecolors="k", lw=1.5,
                   label="recommended", zorder=5)
    if baseline is not None:
        ax.scatter([0.0], [baseline["requests_per_hour"]], marker="*", s=220, color="C2", edgecolors="k", label="PRS (pure retraining)", zorder=6)
    ax.axvline(floor, color="C3", ls="--", lw=1, label=f"accuracy floor ({floor:g} pp)")
    ax.axvspan(floor, max([floor + 1.0, *[r["accuracy_gap"] + 0.5 for r in shown]]), color="C3", alpha=0.06)
    ax.set_xlabel("accuracy gap to PRS, pp (final accuracy; < 0: more accurate than PRS)")
    ax.set_ylabel("requests per hour")
    ax.set_title(f"{study.name}: throughput against accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return figure_png(fig)


def write_hybrid_report(study: HybridStudySpec, paths: SweepPaths) -> dict[str, Any]:
    """Write the report files of a hybrid study; returns its summary (``best.json``) and the file keys."""
    rows = hybrid_rows(study, paths)
    baseline = baseline_of(paths)
    files = paths.files
    params = sorted({k for r in rows for k in r if k.startswith("param.")})
    columns = [*COLUMNS, "pareto", *params, "error"]
    table = pa.table({c: [plain(r.get(c)) if c.startswith("param.") else r.get(c) for r in rows] for c in columns}) if rows \
        else pa.table({c: [] for c in COLUMNS})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    files.put_bytes("report/trials.parquet", buffer.getvalue())
    shown = [*SHOWN, *params]
    files.put_bytes("report/trials.md", (f"# {study.name}: all trials\n\n" + markdown_table(_display(rows), shown) + "\n").encode())
    best = _best(rows)
    chosen = recommend(rows, study.objective)
    front = [r for r in rows if r["pareto"]]

    def entry(row: dict[str, Any]) -> dict[str, Any]:
        return {"trial": row["trial"], "params": sampled_params(row), **{k: row[k] for k in HYBRID_REPORTED}, "feasible": row["feasible"]}

    summary: dict[str, Any] = {
        "study": study.name,
        "kind": "hybrid",
        "objective": study.objective.to_dict(),
        "baseline": baseline,
        "best": {HYBRID_EXPERIMENT: entry(best)} if best is not None else {},
        "recommendation": entry(chosen) if chosen is not None else None,
        "pareto": [entry(r) for r in sorted(front, key=lambda r: (-r["requests_per_hour"], r["accuracy_gap"]))],
        "trials": len(rows),
        "errors": sum(1 for r in rows if r["error"]),
    }
    files.put_json("report/best.json", summary)
    best_md = [f"# {study.name}: best trial (objective: requests per hour within {study.objective.accuracy_floor:g} pp of PRS)", ""]
    if baseline is not None:
        best_md += [f"PRS: {baseline['requests_per_hour']:,.0f} requests/hour, final accuracy {baseline['final_accuracy']:.2f}%.", ""]
    best_md += [markdown_table(_display([best] if best is not None else []), shown), ""]
    files.put_bytes("report/best.md", "\n".join(best_md).encode())
    files.put_bytes("report/pareto.md", pareto_markdown(study, rows, baseline).encode())
    files.put_bytes("report/pareto.png", _pareto_png(study, rows, baseline))
    summary["files"] = [f"report/{name}" for name in HYBRID_FILES]
    return summary
