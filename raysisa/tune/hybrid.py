"""The hybrid study (``kind: hybrid``): the coordinator's retrain-or-update policy tuned on a
recorded stream of deletion requests.

- :func:`prepare_hybrid` trains the scenario's SISA ensemble once, records the stream once
  and replays pure retraining (PRS) on it once: the baseline every trial is compared with;
- :func:`run_hybrid_trial` replays the same stream with one sampled coordinator config on
  a private copy of the ensemble and reports once (requests per hour, the accuracy gap to
  PRS, ...);
- :func:`pareto_front` and :func:`recommend` read the trials: the configurations no other
  beats on both throughput and accuracy, and the fastest one within the accuracy floor.

Layout under the models store (keys depend only on what determines their content)::

    hybrid/<fp>/base/                        the ensemble (<fp>: the run spec's fingerprint)
    hybrid/<fp>/streams/<settings>.json      the recorded stream (<settings>: hash of
                                             scenario.stream)
    hybrid/<fp>/baselines/<stream>-prs.json  PRS replayed on it (<stream>: hash of the
                                             requests); written last, so its presence
                                             means the baseline is complete

A second study over the same scenario finds all three and writes nothing. Everything here
is Ray-free: trials replay in-process (:class:`~raysisa.sisa.pool.LocalPool`, shards one
after another), never starting Ray actors inside a Tune trial.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from raysisa.config import CoordinatorConfig, StoreConfig
from raysisa.coordinator.replay import deletion_stream, replay
from raysisa.sisa.pool import LocalPool
from raysisa.store import ObjectStore
from raysisa.training import configure_torch
from raysisa.tune.artifacts import substore, trained_run
from raysisa.tune.spec import HybridObjective, HybridStudySpec, coordinator_config

__all__ = [
    "HYBRID_REPORTED",
    "SCRATCH_PREFIX",
    "HybridPrepared",
    "HybridSetup",
    "warm_up",
    "prepare_hybrid",
    "run_hybrid_trial",
    "trial_summary",
    "pareto_front",
    "recommend",
]

log = logging.getLogger(__name__)

# What a hybrid trial reports (once, after the stream).
HYBRID_REPORTED = (
    "objective",
    "feasible",
    "requests_per_hour",
    "gain",
    "apply_seconds",
    "accuracy_gap",
    "final_accuracy",
    "min_accuracy",
    "exact_accuracy",
    "restore_seconds",
    "retrains",
    "updates",
    "prs_requests_per_hour",
    "prs_final_accuracy",
)
SCRATCH_PREFIX = "raysisa-tune-hybrid-"  # a trial's private copy of the ensemble, removed when it ends


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class HybridPrepared:
    """The scenario of a hybrid study, ready: where the ensemble and the stream are, and
    what PRS did on the stream (``baseline``: the replay's summary, timeline excluded)."""

    base: StoreConfig
    stream_key: str  # on the models store
    baseline_key: str  # on the models store
    requests: int
    deleted: int
    initial_accuracy: float
    baseline: dict[str, Any]
    slices_trained: int = 0  # by this call
    replayed: bool = False  # whether this call replayed PRS (False: read from the store)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "base": self.base.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HybridPrepared:
        return cls(**{**data, "base": StoreConfig.from_dict(data["base"])})


def warm_up() -> None:
    """Pay this process's one-time costs before a replay's clock starts: torch's optimisers
    import ``torch._dynamo`` on their first step (1-2 s, once per process), which would
    otherwise land in the first request's apply time of a fresh trial process."""
    import torch

    param = torch.nn.Parameter(torch.zeros(1))
    param.grad = torch.zeros(1)
    torch.optim.SGD([param], lr=0.1, momentum=0.9).step()


def _replay_copy(base: StoreConfig, config: CoordinatorConfig, requests: list[list[int]], device: str) -> dict[str, Any]:
    """Replay ``requests`` under ``config`` on a private copy of ``base`` in a temporary folder
    (removed afterwards, whatever happens); ``base`` is only read."""
    warm_up()
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX) as scratch:
        store = StoreConfig(uri=os.path.join(scratch, "run"))
        ObjectStore(base).copy_to(ObjectStore(store))
        pool = LocalPool(device)
        try:
            return replay(store, config, requests, pool)
        finally:
            pool.close()


def prepare_hybrid(study: HybridStudySpec, models: StoreConfig, threads: int = 1, device: str = "cpu") -> HybridPrepared:
    """Train (or find) the scenario's ensemble on ``models``, record (or read) its stream,
    and replay (or read) the PRS baseline. Idempotent; a complete scenario is only read.

    Raises:
        ValueError: the stream does not fit the data (more bursts than classes, more singles
            than samples).
    """
    configure_torch(threads)
    spec = study.spec()
    fp = spec.fingerprint()[:16]
    root = ObjectStore(models)
    run, trained = trained_run(spec, substore(models, f"hybrid/{fp}/base"))
    settings = study.scenario.stream.to_dict()
    stream_key = f"hybrid/{fp}/streams/{_digest(settings)}.json"
    if root.exists(stream_key):
        requests = root.get_json(stream_key)["requests"]
    else:
        requests = deletion_stream(run, settings["singles"], settings["bursts"], settings["burst_share"], settings["seed"])
        root.put_json(stream_key, {"fingerprint": fp, "stream": settings, "requests": requests})
    baseline_key = f"hybrid/{fp}/baselines/{_digest(requests)}-prs.json"
    replayed = not root.exists(baseline_key)
    if replayed:
        pool = LocalPool(device)
        try:
            initial = run.evaluate(pool=pool).accuracy
        finally:
            pool.close()
        started = time.time()
        result = _replay_copy(run.config, CoordinatorConfig(policy="prs"), requests, device)
        root.put_json(baseline_key, {
            "policy": "prs", "initial_accuracy": initial, **result,
            "notes": {"threads": threads, "device": device, "replayed_at": started, "stream_key": stream_key},
        })
        log.info("hybrid %s: PRS replayed on %d requests (%.1fs apply)", fp, len(requests), result["apply_seconds"])
    saved = root.get_json(baseline_key)
    return HybridPrepared(
        base=run.config,
        stream_key=stream_key,
        baseline_key=baseline_key,
        requests=len(requests),
        deleted=sum(len(r) for r in requests),
        initial_accuracy=saved["initial_accuracy"],
        baseline={k: v for k, v in saved.items() if k not in ("timeline", "notes")},
        slices_trained=trained,
        replayed=replayed,
    )


@dataclass(frozen=True)
class HybridSetup:
    """What every trial of a hybrid study shares (plain data: it travels to Tune's trial actors)."""

    fixed: dict[str, Any]
    objective: dict[str, Any]
    models: dict[str, Any]  # the models store (StoreConfig)
    prepared: dict[str, Any]  # HybridPrepared
    threads: int = 1
    device: str = "cpu"

    @classmethod
    def of(cls, study: HybridStudySpec, models: StoreConfig, prepared: HybridPrepared) -> HybridSetup:
        return cls(
            fixed=dict(study.fixed),
            objective=study.objective.to_dict(),
            models=models.to_dict(),
            prepared=prepared.to_dict(),
            threads=study.resources.threads,
            device=study.resources.device,
        )


def trial_summary(result: dict[str, Any], baseline: dict[str, Any], objective: HybridObjective) -> dict[str, Any]:
    """What a trial reports, from its replay ``result`` and the PRS ``baseline`` (both as
    :func:`~raysisa.coordinator.replay.replay` returns them).

    ``accuracy_gap`` is PRS's final accuracy minus the trial's (points; negative: the trial
    serves a more accurate model than pure retraining), ``gain`` is PRS's apply time over the
    trial's, and ``objective`` is :meth:`HybridObjective.score` (Tune minimises it)."""
    gap = float(baseline["final_accuracy"]) - float(result["final_accuracy"])
    rph = float(result["requests_per_hour"])
    decisions = result["shard_decisions"]
    return {
        "objective": objective.score(rph, gap),
        "feasible": 1.0 if objective.feasible(gap) else 0.0,
        "requests_per_hour": rph,
        "gain": float(baseline["apply_seconds"]) / result["apply_seconds"] if result["apply_seconds"] > 0 else math.nan,
        "apply_seconds": float(result["apply_seconds"]),
        "accuracy_gap": gap,
        "final_accuracy": float(result["final_accuracy"]),
        "min_accuracy": float(result["min_accuracy"]),
        "exact_accuracy": float(result["exact_accuracy"]),
        "restore_seconds": float(result["restore_seconds"]),
        "retrains": int(decisions.get("retrain", 0)),
        "updates": int(decisions.get("update", 0)),
        "prs_requests_per_hour": float(baseline["requests_per_hour"]),
        "prs_final_accuracy": float(baseline["final_accuracy"]),
    }


def run_hybrid_trial(config: dict[str, Any], setup: HybridSetup, report: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Replay the recorded stream with the coordinator config of sampled ``config`` (the
    study's ``fixed`` settings, then ``config``, both by dotted name) on a private copy of
    the ensemble; call ``report`` once with :func:`trial_summary`'s metrics and return them."""
    configure_torch(setup.threads)
    prepared = HybridPrepared.from_dict(setup.prepared)
    coordinator = coordinator_config(setup.fixed, config)
    requests = ObjectStore(StoreConfig.from_dict(setup.models)).get_json(prepared.stream_key)["requests"]
    result = _replay_copy(prepared.base, coordinator, requests, setup.device)
    summary = trial_summary(result, prepared.baseline, HybridObjective.from_dict(setup.objective))
    report(summary)
    return summary


def _point(row: dict[str, Any]) -> tuple[float, float] | None:
    rph, gap = row.get("requests_per_hour"), row.get("accuracy_gap")
    if not isinstance(rph, int | float) or not isinstance(gap, int | float) or not (math.isfinite(rph) and math.isfinite(gap)):
        return None
    return float(rph), float(gap)


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows no other row dominates on (more ``requests_per_hour``, smaller
    ``accuracy_gap``): a row is dominated when another is at least as good on both and
    strictly better on one. Rows without both values finite are left out; equal points are
    all kept. Sorted by requests per hour, highest first."""
    points = [(row, p) for row in rows if (p := _point(row)) is not None]
    front = [
        row for row, (rph, gap) in points
        if not any(r2 >= rph and g2 <= gap and (r2 > rph or g2 < gap) for _, (r2, g2) in points)
    ]
    return sorted(front, key=lambda r: (-r["requests_per_hour"], r["accuracy_gap"]))


def recommend(rows: list[dict[str, Any]], objective: HybridObjective) -> dict[str, Any] | None:
    """The highest-throughput row within the accuracy floor (ties: the smaller gap), or
    ``None`` when no row is within it. It is always on the Pareto front."""
    feasible = [row for row in rows if (p := _point(row)) is not None and objective.feasible(p[1])]
    if not feasible:
        return None
    return min(feasible, key=lambda r: (-r["requests_per_hour"], r["accuracy_gap"]))
