"""A batch's plan as a frozen, versioned value, and the pure planner that builds it.

:func:`plan_batch` turns a batch of requests into a :class:`BatchPlan`: it screens the
requests (:func:`~raysisa.coordinator.policy.screen`), finds where their live ids lie
(the index rows the caller looked up), estimates each affected shard's work
(:class:`~raysisa.coordinator.policy.ShardWork`) and asks the policy for one decision per
shard. It does no I/O: everything it needs of the store comes in as :class:`IndexRows` and
:class:`ShardFacts`, so planning 10,000 requests is a unit test. Its cost is
O(K log K) in the K ids of the batch (sorts and binary searches, no scans of the
requests per shard) plus O(S·R) for the S affected shards of R slices.

The plan is logged (``ledger/batches/<batch_id>.json`` holds :meth:`BatchPlan.to_dict`)
before anything executes; :meth:`BatchPlan.from_dict` reads it back, checking every field.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from raysisa.config import CoordinatorConfig
from raysisa.coordinator.codec import ints, obj, req, strs
from raysisa.coordinator.policy import Decision, Defer, Reject, ShardWork, decide, decision_from_dict, ohs_slices, screen
from raysisa.coordinator.records import OverlayMeta, Request
from raysisa.errors import StoreError
from raysisa.sisa.cost import retrain_cost

__all__ = ["PLAN_FORMAT", "ShardPlan", "BatchPlan", "IndexRows", "ShardFacts", "Placement", "plan_batch", "locate", "new_batch_id", "flat_ids"]

PLAN_FORMAT = 1


@dataclass(frozen=True)
class ShardPlan:
    """One affected shard of a batch: the batch's live ids in it, its work and its decision."""

    shard: int
    ids: tuple[int, ...]
    work: ShardWork
    decision: Decision

    def to_dict(self) -> dict[str, Any]:
        return {"ids": list(self.ids), "work": self.work.to_dict(), "decision": self.decision.to_dict()}

    @classmethod
    def from_dict(cls, shard: int, data: Any, where: str) -> ShardPlan:
        obj(data, where)
        entry = cls(shard, ints(data, "ids", where), ShardWork.from_dict(req(data, "work", dict, where), f"{where} work"),
                    decision_from_dict(req(data, "decision", dict, where), f"{where} decision"))
        if entry.work.shard != shard or entry.decision.shard != shard:
            raise StoreError(f"{where} is malformed: its work or decision is for another shard")
        return entry


@dataclass(frozen=True)
class BatchPlan:
    """A batch: the requests it takes, those it refuses, and one entry per affected shard
    (in shard order). Executing it is idempotent, so a crashed batch is executed again."""

    batch_id: str
    created_at: str
    policy: str
    requests: tuple[str, ...]
    rejected: tuple[Reject, ...]
    shards: tuple[ShardPlan, ...]
    format_version: int = PLAN_FORMAT

    def shard(self, shard: int) -> ShardPlan | None:
        return next((s for s in self.shards if s.shard == shard), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "batch_id": self.batch_id,
            "created_at": self.created_at,
            "policy": self.policy,
            "requests": list(self.requests),
            "rejected": [r.to_dict() for r in self.rejected],
            "shards": {str(s.shard): s.to_dict() for s in self.shards},
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "batch plan") -> BatchPlan:
        """Parse a logged plan.

        Raises:
            StoreError: a malformed plan, or one of another format (naming ``where``).
        """
        obj(data, where)
        version = data.get("format_version")
        if version != PLAN_FORMAT:
            found = "no format_version (written by an earlier raysisa)" if version is None else f"format {version!r}"
            raise StoreError(f"{where} has {found}; this raysisa reads plan format {PLAN_FORMAT}")
        shards_data = req(data, "shards", dict, where)
        shards = []
        for key, entry in shards_data.items():
            if not (isinstance(key, str) and key.isdigit()):
                raise StoreError(f"{where} is malformed: shard key {key!r} is not a shard number")
            shards.append(ShardPlan.from_dict(int(key), entry, f"{where} shard {key}"))
        return cls(
            batch_id=req(data, "batch_id", str, where),
            created_at=req(data, "created_at", str, where),
            policy=req(data, "policy", str, where),
            requests=strs(data, "requests", where),
            rejected=tuple(Reject.from_dict(r, f"{where} rejection") for r in req(data, "rejected", list, where)),
            shards=tuple(sorted(shards, key=lambda s: s.shard)),
        )


@dataclass(frozen=True)
class IndexRows:
    """(id, shard, slice) of live samples, as arrays of one length."""

    ids: np.ndarray
    shards: np.ndarray
    slices: np.ndarray

    @classmethod
    def of(cls, table: pa.Table) -> IndexRows:
        """The rows of an index table (columns id, shard, slice)."""
        return cls(table["id"].to_numpy().astype(np.int64), table["shard"].to_numpy().astype(np.int64),
                   table["slice"].to_numpy().astype(np.int64))


@dataclass(frozen=True)
class ShardFacts:
    """What the planner needs to know of the shards a batch may touch.

    Attributes:
        slice_sizes: per shard, the live samples of slices 1..R before the batch.
        epochs: training epochs (the slice epoch schedule derives from it).
        quantized: shard models are quantized (QAT).
        stale: per shard serving an overlay, the slices it misses checkpoints of.
        overlays: per shard serving an overlay, its metadata.
        throughput: per shard, measured sample-gradients per CPU-second (τ).
        ohs_budget: OHS's budget as a fraction of a full retrain.
        ohs_epochs: OHS's epochs per trailing slice.
    """

    slice_sizes: Mapping[int, Sequence[int]]
    epochs: int
    quantized: bool = False
    stale: Mapping[int, Sequence[int]] | None = None
    overlays: Mapping[int, OverlayMeta] | None = None
    throughput: Mapping[int, float | None] | None = None
    ohs_budget: float = 0.5
    ohs_epochs: int = 1


def new_batch_id(stamp: float | None = None) -> str:
    """A sortable, unique batch id: UTC time to the millisecond, then 8 random hex digits."""
    stamp = time.time() if stamp is None else stamp
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(stamp))}{int(stamp * 1000) % 1000:03d}-{uuid.uuid4().hex[:8]}"


def flat_ids(requests: Sequence[Request]) -> tuple[np.ndarray, np.ndarray]:
    """Every id of ``requests`` and the position of its request, as two arrays."""
    lengths = np.fromiter((len(r.ids) for r in requests), np.int64, len(requests))
    ids = np.fromiter((i for r in requests for i in r.ids), np.int64, int(lengths.sum()))
    return ids, np.repeat(np.arange(len(requests), dtype=np.int64), lengths)


def _lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``keys`` in ``sorted_keys`` and whether each is there (binary search)."""
    if not len(sorted_keys):
        return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return pos, sorted_keys[pos] == keys


def plan_batch(
    requests: Sequence[Request],
    rows: IndexRows,
    facts: ShardFacts,
    config: CoordinatorConfig,
    *,
    batch_id: str,
    created_at: str,
    now: float,
) -> BatchPlan:
    """Plan a batch (pure: no I/O, no clock but ``now``).

    Args:
        requests: the batch's requests, oldest first.
        rows: the index rows of (at least) the requests' live ids; ids of rejected requests
            and rows of other ids are ignored, ids without a row were deleted before.
        facts: the affected shards' sizes, overlays, staleness and throughput.
        config: the policy and its bounds.
        batch_id, created_at: the plan's identity.
        now: the time the requests' ages are measured at (seconds since the epoch).

    Returns:
        The plan: accepted request ids in order, :class:`Reject` for the refused ones, and
        one :class:`ShardPlan` per shard holding a live id of an accepted request.
    """
    accepted, rejected = screen(requests, config)
    ids, owner = flat_ids(accepted)
    order = np.argsort(rows.ids, kind="stable")
    row_ids = rows.ids[order]
    pos, live = _lookup(row_ids, ids)
    # the live ids (each once) and where they lie
    hit = order[pos[live]]
    unique, first = np.unique(rows.ids[hit], return_index=True)
    at = hit[first]
    shards, slices = rows.shards[at], rows.slices[at]
    # when the oldest request touching each shard was submitted
    submitted = np.fromiter((dt.datetime.fromisoformat(r.submitted_at).timestamp() for r in accepted), np.float64, len(accepted))
    touched_shard, touched_time = rows.shards[hit], submitted[owner[live]]
    by_shard = np.lexsort((unique, shards))  # shard, then id
    shards, slices, unique = shards[by_shard], slices[by_shard], unique[by_shard]
    affected, starts = np.unique(shards, return_index=True)
    bounds = [*starts.tolist(), len(shards)]
    oldest = {int(k): float(t) for k, t in zip(*_group_min(touched_shard, touched_time), strict=True)}
    stale = facts.stale or {}
    overlays = facts.overlays or {}
    throughput = facts.throughput or {}
    works, ids_of = [], {}
    for n, shard in enumerate(affected.tolist()):
        lo, hi = bounds[n], bounds[n + 1]
        sizes = np.asarray(facts.slice_sizes[shard], np.int64)
        deleted = np.bincount(slices[lo:hi] - 1, minlength=len(sizes))[: len(sizes)]
        after = (sizes - deleted).tolist()
        first_slice = int(slices[lo:hi].min())
        if stale.get(shard):  # a shard serving an overlay misses checkpoints from some slice on
            first_slice = min(first_slice, max(1, int(stale[shard][0])))
        full = retrain_cost(after, facts.epochs, 1)
        meta = overlays.get(shard)
        ids_of[shard] = tuple(unique[lo:hi].tolist())
        works.append(
            ShardWork(
                shard=shard,
                first_slice=first_slice,
                ids=hi - lo,
                retrain_grads=retrain_cost(after, facts.epochs, first_slice),
                full_grads=full,
                throughput=throughput.get(shard),
                approximate=meta is not None,
                approx_updates=meta.updates if meta else 0,
                drift=meta.drift if meta else None,
                quantized=facts.quantized,
                ohs_slices=ohs_slices(after, full, facts.ohs_budget, facts.ohs_epochs),
                age_seconds=max(0.0, now - oldest[shard]),
            )
        )
    decisions = decide(works, config)
    return BatchPlan(
        batch_id=batch_id,
        created_at=created_at,
        policy=config.policy,
        requests=tuple(r.request_id for r in accepted),
        rejected=tuple(rejected),
        shards=tuple(ShardPlan(w.shard, ids_of[w.shard], w, d) for w, d in zip(works, decisions, strict=True)),
    )


def _group_min(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``keys`` and the least value of each (by sorting)."""
    if not len(keys):
        return keys, values
    order = np.lexsort((values, keys))
    keys, values = keys[order], values[order]
    distinct, first = np.unique(keys, return_index=True)
    return distinct, values[first]


@dataclass(frozen=True)
class Placement:
    """Where a request's ids are in a plan.

    Attributes:
        shards: the plan's shards holding its live ids.
        deferred: some of them are in a deferred shard (the request waits for a later batch).
        elsewhere: its ids the plan does not hold (deleted by an earlier batch).
    """

    shards: tuple[int, ...]
    deferred: bool
    elsewhere: tuple[int, ...]


def locate(plan: BatchPlan, requests: Sequence[Request]) -> dict[str, Placement]:
    """Each request's :class:`Placement` in ``plan`` (sorts and binary searches, O(K log K))."""
    counts = [len(s.ids) for s in plan.shards]
    plan_ids = np.fromiter((i for s in plan.shards for i in s.ids), np.int64, sum(counts))
    plan_shards = np.repeat(np.asarray([s.shard for s in plan.shards], np.int64), counts)
    order = np.argsort(plan_ids, kind="stable")
    plan_ids, plan_shards = plan_ids[order], plan_shards[order]
    deferred_shards = {s.shard for s in plan.shards if isinstance(s.decision, Defer)}
    ids, owner = flat_ids(requests)
    pos, found = _lookup(plan_ids, ids)
    # distinct (request, shard) pairs, grouped by request: one sort of request x shards + shard
    width = int(plan_shards.max()) + 1 if len(plan_shards) else 1
    pairs = np.unique(owner[found] * width + plan_shards[pos[found]])
    everyone = np.arange(len(requests) + 1)
    pair_bounds = np.searchsorted(pairs // width, everyone).tolist()
    pair_shard = (pairs % width).tolist()
    miss_bounds = np.searchsorted(owner[~found], everyone).tolist()  # owner is sorted
    miss_ids = ids[~found].tolist()
    out = {}
    for n, request in enumerate(requests):  # plain lists from here: slicing them is cheap
        shards = tuple(pair_shard[pair_bounds[n] : pair_bounds[n + 1]])
        out[request.request_id] = Placement(
            shards=shards,
            deferred=bool(deferred_shards) and not deferred_shards.isdisjoint(shards),
            elsewhere=tuple(miss_ids[miss_bounds[n] : miss_bounds[n + 1]]),
        )
    return out
