"""Retrain-or-update policies: pure functions from estimated work to decisions.

A policy sees one :class:`ShardWork` per shard a batch of deletion requests touches and
returns one decision per shard — no Ray, no I/O — so it is tested as a table. Before that,
:func:`screen` decides which requests a batch takes at all.

Decisions for a shard (the :data:`Decision` union; the coordinator executes them by type):

- :class:`RetrainFromSlice` — exact: roll the shard back to the checkpoint before slice
  ``slice`` and retrain (PRS, partial retraining).
- :class:`ApplyMethod` — approximate: update the shard's parameters with a registered
  method (DPUS), then, if ``ohs_slices`` > 0, fine-tune on the retained data of its last
  ``ohs_slices`` slices (OHS). Exactness is restored later.
- :class:`Defer` — leave the shard's deletions pending for now (to batch more).

and for a request: :class:`Reject` — refuse it (a request over ``max_request_ids``).

Every decision is a frozen value with ``to_dict`` / :func:`decision_from_dict` (tagged by
``kind``), so a logged plan reads back as the same decisions.

The hybrid rule (HS, SPEC 2.2, our design): retrain when the retraining work
W_k ≤ ρ·C_k (C_k: retraining the shard from scratch) or its estimated time W_k/τ_k fits
the time budget; otherwise update. A shard already carrying ``max_approx_updates``
approximate updates, or whose accuracy drifted more than ``max_drift_points``, is
retrained regardless (the debt bound).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol, TypeVar

from raysisa.config import CoordinatorConfig
from raysisa.coordinator.codec import obj, opt, req
from raysisa.errors import StoreError
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
    "decision_from_dict",
    "screen",
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "shard work") -> ShardWork:
        """Parse :meth:`to_dict`'s output; malformed input raises StoreError naming ``where``."""
        obj(data, where)
        return cls(
            shard=req(data, "shard", int, where),
            first_slice=req(data, "first_slice", int, where),
            ids=req(data, "ids", int, where),
            retrain_grads=req(data, "retrain_grads", int, where),
            full_grads=req(data, "full_grads", int, where),
            throughput=opt(data, "throughput", float, where),
            approximate=opt(data, "approximate", bool, where, False),
            approx_updates=opt(data, "approx_updates", int, where, 0),
            drift=opt(data, "drift", float, where),
            quantized=opt(data, "quantized", bool, where, False),
            ohs_slices=opt(data, "ohs_slices", int, where, 0),
            age_seconds=opt(data, "age_seconds", float, where, 0.0),
        )


class _Tagged:
    """``to_dict`` of a decision: its fields and its ``kind`` tag."""

    kind: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}  # type: ignore[call-overload]


@dataclass(frozen=True)
class RetrainFromSlice(_Tagged):
    shard: int
    slice: int
    reason: str
    kind: ClassVar[str] = "retrain"

    @classmethod
    def from_dict(cls, data: Any, where: str = "decision") -> RetrainFromSlice:
        return cls(req(data, "shard", int, where), req(data, "slice", int, where), req(data, "reason", str, where))


@dataclass(frozen=True)
class ApplyMethod(_Tagged):
    shard: int
    method: str
    args: dict[str, Any]
    ohs_slices: int
    reason: str
    kind: ClassVar[str] = "update"

    @classmethod
    def from_dict(cls, data: Any, where: str = "decision") -> ApplyMethod:
        return cls(
            req(data, "shard", int, where),
            req(data, "method", str, where),
            dict(req(data, "args", dict, where)),
            req(data, "ohs_slices", int, where),
            req(data, "reason", str, where),
        )


@dataclass(frozen=True)
class Defer(_Tagged):
    shard: int
    reason: str
    kind: ClassVar[str] = "defer"

    @classmethod
    def from_dict(cls, data: Any, where: str = "decision") -> Defer:
        return cls(req(data, "shard", int, where), req(data, "reason", str, where))


@dataclass(frozen=True)
class Reject(_Tagged):
    """A request the batch refuses (it is logged as ``rejected``; its data stays)."""

    request_id: str
    reason: str
    kind: ClassVar[str] = "reject"

    @classmethod
    def from_dict(cls, data: Any, where: str = "rejection") -> Reject:
        if obj(data, where).get("kind", "reject") != "reject":
            raise StoreError(f"{where} is malformed: kind {data.get('kind')!r} is not 'reject'")
        return cls(req(data, "request_id", str, where), req(data, "reason", str, where))


Decision = RetrainFromSlice | ApplyMethod | Defer
Policy = Callable[[ShardWork, CoordinatorConfig], Decision]
# POLICIES (name -> Policy) lives in raysisa.registry, below config, which validates coordinator.policy.
_KINDS: Mapping[str, Any] = {cls.kind: cls for cls in (RetrainFromSlice, ApplyMethod, Defer)}


def decision_from_dict(data: Any, where: str = "decision") -> Decision:
    """The shard decision a ``to_dict`` wrote, by its ``kind`` tag.

    Raises:
        StoreError: not a decision (naming ``where``).
    """
    kind = req(data, "kind", str, where)
    if kind not in _KINDS:
        raise StoreError(f"{where} is malformed: unknown decision kind {kind!r} (known: {', '.join(sorted(_KINDS))})")
    return _KINDS[kind].from_dict(data, where)


class _Request(Protocol):
    @property
    def request_id(self) -> str: ...

    @property
    def ids(self) -> Sequence[int]: ...


R = TypeVar("R", bound=_Request)


def screen(requests: Sequence[R], config: CoordinatorConfig) -> tuple[list[R], list[Reject]]:
    """Split a batch's requests into those it takes (order kept) and those it refuses:
    requests of more than ``config.max_request_ids`` ids are rejected."""
    limit = config.max_request_ids
    accepted: list[R] = []
    rejected: list[Reject] = []
    for request in requests:
        if limit is not None and len(request.ids) > limit:
            rejected.append(Reject(request.request_id, f"{len(request.ids)} ids: more than max_request_ids ({limit})"))
        else:
            accepted.append(request)
    return accepted, rejected


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
