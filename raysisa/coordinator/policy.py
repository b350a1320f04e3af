"""Retrain-or-update policies: pure functions from estimated work to decisions.

A policy sees one :class:`ShardWork` per shard a batch of deletion requests touches and
returns one decision per shard — no Ray, no I/O — so it is tested as a table.

Decisions:

- :class:`RetrainFromSlice` — exact: roll the shard back to the checkpoint before slice
  ``slice`` and retrain (PRS, partial retraining).
- :class:`ApplyMethod` — approximate: update the shard's parameters with a registered
  method (DPUS), then, if ``ohs_slices`` > 0, fine-tune on the retained data of its last
  ``ohs_slices`` slices (OHS). Exactness is restored later.
- :class:`Defer` — leave the shard's deletions pending for now (to batch more).
- :class:`Reject` — refuse the work (e.g. a request over the size limit).

The hybrid rule (HS, SPEC 2.2, our design): retrain when the retraining work
W_k ≤ ρ·C_k (C_k: retraining the shard from scratch) or its estimated time W_k/τ_k fits
the time budget; otherwise update. A shard already carrying ``max_approx_updates``
approximate updates, or whose accuracy drifted more than ``max_drift_points``, is
retrained regardless (the debt bound).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raysisa.config import CoordinatorConfig
from raysisa.registry import POLICIES

__all__ = [
    "ShardWork",
    "RetrainFromSlice",
    "ApplyMethod",
    "Defer",
    "Reject",
    "Decision",
    "POLICIES",
    "decide",
    "ohs_slices",
]


@dataclass(frozen=True)
class ShardWork:
    """What deleting a batch's ids from one shard would cost, and the shard's state.

    Attributes:
        shard: the shard.
        first_slice: r*, the earliest slice holding a deleted id.
        ids: deleted ids in this shard.
        retrain_grads: W, sample-gradients to retrain slices r*..R without the ids.
        full_grads: C, sample-gradients to retrain the shard from scratch.
        throughput: τ, measured sample-gradients per second (``None``: not yet measured).
        approximate: the shard currently serves an approximate model.
        approx_updates: approximate updates since its last exact state.
        drift: test-accuracy points lost since its last exact state (``None``: unknown).
        quantized: the shard model is quantized (QAT).
        ohs_slices: trailing slices OHS may fine-tune on within the budget.
        age_seconds: how long the oldest request touching the shard has waited.
    """

    shard: int
    first_slice: int
    ids: int
    retrain_grads: int
    full_grads: int
    throughput: float | None = None
    approximate: bool = False
    approx_updates: int = 0
    drift: float | None = None
    quantized: bool = False
    ohs_slices: int = 0
    age_seconds: float = 0.0

    @property
    def seconds(self) -> float | None:
        """Estimated retraining time W/τ."""
        return self.retrain_grads / self.throughput if self.throughput else None


@dataclass(frozen=True)
class RetrainFromSlice:
    shard: int
    slice: int
    reason: str
    kind: str = "retrain"


@dataclass(frozen=True)
class ApplyMethod:
    shard: int
    method: str
    args: dict[str, Any]
    ohs_slices: int
    reason: str
    kind: str = "update"


@dataclass(frozen=True)
class Defer:
    shard: int
    reason: str
    kind: str = "defer"


@dataclass(frozen=True)
class Reject:
    shard: int
    reason: str
    kind: str = "reject"


Decision = RetrainFromSlice | ApplyMethod | Defer | Reject
Policy = Callable[[ShardWork, CoordinatorConfig], Decision]
# POLICIES (name -> Policy) lives in raysisa.registry, below config, which validates coordinator.policy.


def ohs_slices(slice_sizes_after: list[int], full_grads: int, rho: float, epochs: int) -> int:
    """m: the most trailing slices whose fine-tuning (``epochs`` passes over their
    retained samples) stays within rho x a full retrain."""
    budget, cost, m = rho * full_grads, 0, 0
    for size in reversed(slice_sizes_after):
        cost += epochs * size
        if cost > budget:
            break
        m += 1
    return m


def _retrain(work: ShardWork, reason: str) -> RetrainFromSlice:
    return RetrainFromSlice(work.shard, work.first_slice, reason)


def _update(work: ShardWork, config: CoordinatorConfig, ohs: bool, reason: str) -> ApplyMethod:
    dpus = config.dpus
    method, args = (dpus.quantized_method, dpus.quantized_args) if work.quantized else (dpus.method, dpus.args)
    return ApplyMethod(work.shard, method, dict(args), work.ohs_slices if ohs else 0, reason)


def debt_reason(approx_updates: int, drift: float | None, config: CoordinatorConfig) -> str | None:
    """Why a shard must be retrained now (a debt bound it reached), or ``None``."""
    if approx_updates >= config.max_approx_updates:
        return f"debt bound: {approx_updates} approximate updates (max {config.max_approx_updates})"
    if drift is not None and drift > config.max_drift_points:
        return f"debt bound: accuracy drifted {drift:.2f} points (max {config.max_drift_points})"
    return None


def _hybrid(work: ShardWork, config: CoordinatorConfig, ohs: bool) -> Decision:
    debt = debt_reason(work.approx_updates, work.drift, config)
    if debt:
        return _retrain(work, debt)
    ratio = work.retrain_grads / max(work.full_grads, 1)
    if ratio <= config.rho:
        return _retrain(work, f"light: W/C = {ratio:.2f} <= rho {config.rho}")
    seconds = work.seconds
    if config.time_budget_seconds is not None and seconds is not None and seconds <= config.time_budget_seconds:
        return _retrain(work, f"within budget: ~{seconds:.1f}s <= {config.time_budget_seconds}s")
    if config.defer_seconds and work.age_seconds < config.defer_seconds:
        return Defer(work.shard, f"heavy (W/C = {ratio:.2f}); waiting up to {config.defer_seconds}s to batch more")
    return _update(work, config, ohs, f"heavy: W/C = {ratio:.2f} > rho {config.rho}")


@POLICIES.register("hs")
def hybrid(work: ShardWork, config: CoordinatorConfig) -> Decision:
    """HS: retrain light work exactly, update heavy work directly."""
    return _hybrid(work, config, ohs=False)


@POLICIES.register("ohs")
def optimised_hybrid(work: ShardWork, config: CoordinatorConfig) -> Decision:
    """OHS: HS, with OHS fine-tuning after every direct update."""
    return _hybrid(work, config, ohs=True)


@POLICIES.register("prs")
def partial_retraining(work: ShardWork, config: CoordinatorConfig) -> Decision:
    """PRS only: pure SISA, always exact."""
    return _retrain(work, "policy prs: always retrain")


@POLICIES.register("dpus")
def direct_update(work: ShardWork, config: CoordinatorConfig) -> Decision:
    """DPUS only: always update directly (exactness restored by the background job)."""
    debt = debt_reason(work.approx_updates, work.drift, config)
    return _retrain(work, debt) if debt else _update(work, config, False, "policy dpus: always update")


def decide(works: list[ShardWork], config: CoordinatorConfig) -> list[Decision]:
    """One decision per shard under ``config.policy``."""
    policy = POLICIES.get(config.policy)
    return [policy(work, config) for work in works]
