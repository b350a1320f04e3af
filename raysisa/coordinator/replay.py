"""A recorded stream of deletion requests, replayed through the coordinator.

Used by ``bench/hybrid.py`` (the policies side by side) and by the hybrid sweep study
(:mod:`raysisa.tune.hybrid`, which tunes the coordinator's policy on such a stream):

- :func:`deletion_stream` draws the stream from a trained run: single random ids, with
  class-wise bursts (a share of one class at once, which touches every shard) spread
  through it;
- :func:`replay` submits the requests one by one to a :class:`Coordinator` on the run, lets
  it process each as its own batch (window 0, no idle restoration: only the policy and its
  debt bounds decide), times the apply (the time inside :meth:`Coordinator.step`, what a
  requester waits), measures the served ensemble's test accuracy after each request, and at
  the end restores exactness (the deferred cost every policy but PRS owes).

The replay changes the run at ``store``: give it a copy.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from raysisa.config import CoordinatorConfig, StoreConfig
from raysisa.coordinator.client import submit
from raysisa.coordinator.service import Coordinator
from raysisa.evaluation.scenarios import train_labels
from raysisa.sisa.pool import ShardPool
from raysisa.sisa.run import SisaRun

__all__ = ["deletion_stream", "replay"]


def deletion_stream(run: SisaRun, singles: int, bursts: int, share: float, seed: int) -> list[list[int]]:
    """The requests of a stream on ``run``, in order: ``singles`` requests of one random id
    each, with ``bursts`` class-wise requests (``share`` of one class's samples each, distinct
    classes) inserted at even intervals. The same (run, arguments) give the same stream.

    Raises:
        ValueError: more bursts than classes, or more singles than samples outside the bursts.
    """
    ids, labels = train_labels(run)
    rng = np.random.default_rng(seed)
    classes = rng.choice(np.unique(labels), size=bursts, replace=False)
    burst_sets = [rng.choice(ids[labels == c], size=max(1, round(share * (labels == c).sum())), replace=False) for c in classes]
    taken = set(np.concatenate(burst_sets).tolist()) if burst_sets else set()
    pool = np.array([i for i in ids if i not in taken])
    out = [[int(i)] for i in rng.choice(pool, size=singles, replace=False)]
    for k, burst in enumerate(burst_sets):
        out.insert((k + 1) * len(out) // (bursts + 1), sorted(int(i) for i in burst))
    return out


def replay(store: StoreConfig, config: CoordinatorConfig, requests: list[list[int]], pool: ShardPool) -> dict[str, Any]:
    """Apply ``requests`` to the run at ``store`` under ``config``, one batch per request.

    Returns:
        ``apply_seconds`` (time inside ``Coordinator.step``, summed), ``requests_per_hour``,
        ``restore_seconds`` (restoring exactness at the end), ``min_accuracy`` and
        ``final_accuracy`` (served test accuracy over the stream, %), ``exact_accuracy``
        (after restoring exactness), ``shard_decisions`` (``{"retrain": n, "update": m}``
        over every batch's shards) and ``timeline`` (per request: ``request``, ``ids``,
        ``applied_seconds`` so far, ``accuracy``).
    """
    config = config.model_copy(update={"window_seconds": 0.0, "idle_seconds": None})
    coordinator = Coordinator(store, config, pool)
    run = SisaRun(store)
    timeline: list[dict[str, Any]] = []
    applied = 0.0
    kinds = {"retrain": 0, "update": 0}
    for ids in requests:
        submit(store, ids)
        known = set(coordinator.ledger.batches())
        started = time.perf_counter()
        coordinator.step()
        applied += time.perf_counter() - started
        for batch in set(coordinator.ledger.batches()) - known:
            plan = coordinator.ledger.objects.get_json(f"ledger/batches/{batch}.json")
            for shard in plan["shards"].values():
                kinds[shard["decision"]["kind"]] = kinds.get(shard["decision"]["kind"], 0) + 1
        timeline.append({"request": len(timeline), "ids": len(ids), "applied_seconds": applied, "accuracy": run.evaluate(pool=pool).accuracy})
    started = time.perf_counter()
    coordinator.restore_exactness()
    restore = time.perf_counter() - started
    return {
        "apply_seconds": applied,
        "requests_per_hour": 3600 * len(requests) / applied,
        "restore_seconds": restore,
        "min_accuracy": min(t["accuracy"] for t in timeline),
        "final_accuracy": timeline[-1]["accuracy"],
        "exact_accuracy": run.evaluate(pool=pool).accuracy,
        "shard_decisions": kinds,
        "timeline": timeline,
    }
