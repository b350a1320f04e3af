"""What a comparison produces: one :class:`MethodResult` per method and seed, and the
:class:`CompareReport` that gathers them (``report.json``). :mod:`raysisa.evaluation.compare`
fills it; :mod:`raysisa.evaluation.report` renders it."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from raysisa.evaluation.metrics import GAP_METRICS

__all__ = ["REPORTED", "MethodResult", "CompareReport"]

REPORTED = ("UA", "FA", "RA", "TA", "MIA", "ASR", "avg_gap", "rte_seconds", "setup_seconds", "unlearn_seconds", "eval_seconds")


@dataclass
class MethodResult:
    """One method (or ``original`` / ``retrain``) under one seed."""

    method: str
    seed: int
    args: dict[str, Any]
    metrics: dict[str, float | None]
    gaps: dict[str, float]
    avg_gap: float
    setup_seconds: float = 0.0
    unlearn_seconds: float = 0.0
    eval_seconds: float = 0.0
    wall_seconds: float = 0.0
    shards_updated: list[int] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def rte_seconds(self) -> float:
        """Run-time of the unlearning: setup (localisation, relabelling, a Newton step) + loop."""
        return self.setup_seconds + self.unlearn_seconds

    def value(self, key: str) -> float | None:
        if key in self.metrics:
            return self.metrics[key]
        return getattr(self, key)


@dataclass
class CompareReport:
    name: str
    store: str
    job: dict[str, Any]
    forget_sets: dict[int, dict[str, Any]]
    results: list[MethodResult]
    evaluation_sets: dict[str, int]

    def methods(self) -> list[str]:
        return list(dict.fromkeys(r.method for r in self.results))

    def summary(self) -> dict[str, dict[str, dict[str, float | None]]]:
        """Per method and quantity: mean and std over seeds (std 0 with one seed)."""
        out: dict[str, dict[str, dict[str, float | None]]] = {}
        for method in self.methods():
            rows = [r for r in self.results if r.method == method]
            stats = {}
            for key in (*REPORTED, *(f"gap_{m}" for m in GAP_METRICS)):
                values = [r.gaps[key[4:]] if key.startswith("gap_") else r.value(key) for r in rows]
                values = [v for v in values if v is not None and not np.isnan(v)]
                if values:
                    std = statistics.stdev(values) if len(values) > 1 else 0.0
                    stats[key] = {"mean": statistics.fmean(values), "std": std}
            out[method] = stats
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "store": self.store,
            "job": self.job,
            "forget_sets": {str(k): v for k, v in self.forget_sets.items()},
            "evaluation_sets": self.evaluation_sets,
            "results": [{**asdict(r), "rte_seconds": r.rte_seconds} for r in self.results],
            "summary": self.summary(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompareReport:
        """Read back what :meth:`to_dict` wrote (``report.json``); derived fields are recomputed."""
        names = {f.name for f in fields(MethodResult)}
        return cls(
            name=data["name"],
            store=data["store"],
            job=data["job"],
            forget_sets={int(k): v for k, v in data["forget_sets"].items()},
            results=[MethodResult(**{k: v for k, v in r.items() if k in names}) for r in data["results"]],
            evaluation_sets=data["evaluation_sets"],
        )
