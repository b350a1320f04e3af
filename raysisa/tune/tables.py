"""Helpers the sweep reports share: reading a Tune experiment's trials, and plain tables."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["experiment_trials", "number", "markdown_table", "plain"]


def experiment_trials(path: str) -> list[Any]:
    """The trials of the Tune experiment at ``path`` (none when it has not started yet)."""
    from ray.tune import ExperimentAnalysis

    try:
        return list(ExperimentAnalysis(path, default_metric="objective", default_mode="min").trials)
    except (ValueError, FileNotFoundError, OSError):
        return []  # not started yet


def number(value: Any) -> float:
    """``value`` as a float; NaN when it is no number (missing, text, a bool)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A Markdown table of ``columns`` of ``rows`` (floats rounded, NaN left empty)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return ""
            return f"{value:.3g}" if 0 < abs(value) < 0.1 else f"{value:.2f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def plain(value: Any) -> Any:
    """Sampled values as Parquet-friendly scalars (a choice may mix types: keep them as JSON)."""
    if value is None or isinstance(value, bool | int | float | str):
        return json.dumps(value) if isinstance(value, bool) else value
    return json.dumps(value)


def sampled_params(row: dict[str, Any]) -> dict[str, Any]:
    """A trial row's sampled hyperparameters (its ``param.*`` columns) as sampled: JSON's
    own types (a bool stays a bool; only the Parquet table encodes it, see :func:`plain`)."""
    return {k[len("param."):]: v for k, v in row.items() if k.startswith("param.")}
