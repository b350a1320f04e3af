"""Comparison reports: a Markdown table, the full JSON, and a bar chart of the gaps to
retraining (PNG), written to ``reports/<name>/`` on the store."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from raysisa.evaluation.metrics import GAP_METRICS
from raysisa.evaluation.results import CompareReport
from raysisa.store import ObjectStore

__all__ = ["markdown_table", "gap_chart_png", "figure_png", "write_report"]

COLUMNS = [
    ("UA", "UA"),
    ("RA", "RA"),
    ("TA", "TA"),
    ("MIA", "MIA-Eff."),
    ("ASR", "ASR"),
    ("avg_gap", "Avg Gap"),
    ("rte_seconds", "RTE s"),
    ("setup_seconds", "of which setup s"),
    ("eval_seconds", "eval s"),
]


def _cell(stats: dict[str, Any] | None, digits: int = 2) -> str:
    if not stats:
        return "–"
    if stats["std"]:
        return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"
    return f"{stats['mean']:.{digits}f}"


def markdown_table(report: CompareReport) -> str:
    """Rows: original, retrain, methods; mean ± std over seeds. Gaps are to retrain."""
    summary = report.summary()
    columns = [(k, title) for k, title in COLUMNS if any(k in s for s in summary.values())]
    lines = [
        "| method | " + " | ".join(title for _, title in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for method in report.methods():
        stats = summary[method]
        lines.append(f"| {method} | " + " | ".join(_cell(stats.get(k)) for k, _ in columns) + " |")
    return "\n".join(lines)


def gap_chart_png(report: CompareReport) -> bytes:
    """Grouped bars: |metric − retrain| per metric, one bar per method, std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = report.summary()
    methods = [m for m in report.methods() if m not in ("retrain",)]
    labels = ["UA" if m == "FA" else m for m in GAP_METRICS] + ["Avg Gap"]
    keys = [f"gap_{m}" for m in GAP_METRICS] + ["avg_gap"]
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(labels) + 0.3 * len(methods)), 4))
    x = np.arange(len(labels))
    for i, method in enumerate(methods):
        means = [summary[method].get(k, {}).get("mean", 0.0) for k in keys]
        stds = [summary[method].get(k, {}).get("std", 0.0) for k in keys]
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=method)
    ax.set_xticks(x, labels)
    ax.set_ylabel("|metric − retrain| (percentage points)")
    ax.set_title(f"{report.name}: gap to retraining (lower is better)")
    ax.legend(fontsize=8, ncol=2)
    return figure_png(fig, dpi=120)


def figure_png(fig, dpi: int = 110) -> bytes:
    """A matplotlib figure as PNG bytes (laid out tight); the figure is closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def write_report(report: CompareReport, store: ObjectStore) -> dict[str, str]:
    """Write report.md, report.json and gaps.png under ``reports/<name>/``; returns their URIs."""
    base = f"reports/{report.name}"
    job = report.job
    scenario = job["compare"]["scenario"]
    header = [
        f"# {report.name}",
        "",
        f"Scenario: `{json.dumps(scenario)}`; seeds {sorted(report.forget_sets)}; "
        f"data `{job['data']['source']}`, model `{job['model']['name']}`, "
        f"{job['sharding']['num_shards']} shard(s) x {job['sharding']['num_slices']} slice(s).",
        f"Evaluation sets: {report.evaluation_sets}. Forget sets: "
        + ", ".join(f"seed {s}: `{v['key']}` ({v['count']} ids)" for s, v in report.forget_sets.items())
        + ".",
        "All values in %, except seconds; Avg Gap = mean |Δ| to retrain over UA, RA, TA, MIA-Efficacy. "
        "RTE = run time of the unlearning (setup included; for retrain: the SISA retraining); eval = scoring.",
        "",
    ]
    text = "\n".join(header) + markdown_table(report) + "\n"
    files = {
        "report.md": text.encode(),
        "report.json": json.dumps(report.to_dict(), indent=1, default=float).encode(),
        "gaps.png": gap_chart_png(report),
    }
    for name, data in files.items():
        store.put_bytes(f"{base}/{name}", data)
    return {name: store.uri(f"{base}/{name}") for name in files}
