"""What the coordinator logs and writes besides plans, as frozen values: requests, overlay
metadata and receipts.

The store keeps them as JSON (requests in the ledger, overlay manifests through
``CheckpointStore.put``, receipts at ``receipts/<request_id>.json``); these classes are the
typed edge: ``to_dict`` writes the stored fields, ``from_dict`` checks them and raises
StoreError naming the object.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from raysisa.coordinator.codec import ints, obj, opt, req, strs
from raysisa.coordinator.policy import Decision, decision_from_dict

__all__ = ["Request", "OverlayMeta", "Transition", "ShardReceipt", "Receipt"]


@dataclass(frozen=True)
class Request:
    """A deletion request as logged (``ledger/requests/<request_id>.json``)."""

    request_id: str
    ids: list[int]
    submitted_at: str
    key_sha256: str
    subject_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class OverlayMeta:
    """The manifest fields of a shard's approximate overlay (what it carries, how it scores).

    ``raysisa.sisa.run.inspect`` reads ``updates``, ``ids``, ``request_ids``, ``method``,
    ``accuracy``, ``exact_accuracy`` and ``model_sha256`` of the stored manifest.

    Attributes:
        batch_ids: the batches whose updates it holds, oldest first.
        request_ids: the requests it carries (exact once the shard is retrained).
        ids: the sample ids deleted from the shard since its last exact model.
        updates: approximate updates since the last exact model.
        method, args: the last update's method.
        ohs_slices, ohs_epochs: the last update's OHS fine-tuning.
        base: key of the model the last update started from.
        model_sha256: sha256 of the overlay's tensors.
        exact_accuracy: test accuracy of the last exact model (drift is measured from it).
        accuracy: test accuracy of the overlay.
        created_at: when it was written.
    """

    batch_ids: tuple[str, ...]
    request_ids: tuple[str, ...]
    ids: tuple[int, ...]
    updates: int
    method: str
    args: dict[str, Any]
    ohs_slices: int
    ohs_epochs: int
    base: str
    model_sha256: str
    exact_accuracy: float
    accuracy: float
    created_at: str

    @property
    def drift(self) -> float:
        """Test-accuracy points lost since the last exact model."""
        return self.exact_accuracy - self.accuracy

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_ids": list(self.batch_ids),
            "request_ids": list(self.request_ids),
            "ids": list(self.ids),
            "updates": self.updates,
            "method": self.method,
            "args": dict(self.args),
            "ohs_slices": self.ohs_slices,
            "ohs_epochs": self.ohs_epochs,
            "base": self.base,
            "model_sha256": self.model_sha256,
            "exact_accuracy": self.exact_accuracy,
            "accuracy": self.accuracy,
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "overlay manifest") -> OverlayMeta:
        """Parse an overlay manifest (the checkpoint store's own fields are ignored)."""
        obj(data, where)
        return cls(
            batch_ids=strs(data, "batch_ids", where),
            request_ids=strs(data, "request_ids", where),
            ids=ints(data, "ids", where),
            updates=req(data, "updates", int, where),
            method=req(data, "method", str, where),
            args=dict(req(data, "args", dict, where)),
            ohs_slices=req(data, "ohs_slices", int, where),
            ohs_epochs=req(data, "ohs_epochs", int, where),
            base=req(data, "base", str, where),
            model_sha256=req(data, "model_sha256", str, where),
            exact_accuracy=req(data, "exact_accuracy", float, where),
            accuracy=req(data, "accuracy", float, where),
            created_at=req(data, "created_at", str, where),
        )


@dataclass(frozen=True)
class Transition:
    """One logged state change of a request."""

    state: str
    at: str

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "at": self.at}

    @classmethod
    def from_dict(cls, data: Any, where: str = "transition") -> Transition:
        return cls(req(data, "state", str, where), req(data, "at", str, where))


@dataclass(frozen=True)
class ShardReceipt:
    """What a batch did to one shard a request had samples in."""

    decision: Decision
    first_slice: int
    estimated_sample_grads: int
    model_before: dict[str, Any] | None
    model_after: dict[str, Any] | None
    seconds: float

    @property
    def shard(self) -> int:
        return self.decision.shard

    def to_dict(self) -> dict[str, Any]:
        # the decision's fields flattened in (kind, reason, slice or method/args/ohs_slices)
        return {
            "shard": self.shard,
            **{k: v for k, v in self.decision.to_dict().items() if k != "shard"},
            "first_slice": self.first_slice,
            "estimated_sample_grads": self.estimated_sample_grads,
            "model_before": self.model_before,
            "model_after": self.model_after,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "receipt shard") -> ShardReceipt:
        return cls(
            decision=decision_from_dict(data, where),
            first_slice=req(data, "first_slice", int, where),
            estimated_sample_grads=req(data, "estimated_sample_grads", int, where),
            model_before=opt(data, "model_before", dict, where),
            model_after=opt(data, "model_after", dict, where),
            seconds=opt(data, "seconds", float, where, 0.0),
        )


@dataclass(frozen=True)
class Receipt:
    """A request's receipt: what was deleted (ids, never contents), how, and when.

    ``decision`` is ``"rejected"`` for a refused request (with ``reason``); an applied one
    has ``policy``, ``shards``, ``batch_seconds`` and ``applied_at``; ``exact_at`` comes
    once no shard holds anything of it. Fields that do not apply are left out of the JSON.
    """

    request_id: str
    ids: tuple[int, ...]
    idempotency_key_sha256: str
    subject_sha256: str | None
    submitted_at: str
    state: str
    history: tuple[Transition, ...] = ()
    batch_id: str | None = None
    decision: str | None = None
    reason: str | None = None
    policy: str | None = None
    shards: tuple[ShardReceipt, ...] = ()
    batch_seconds: float | None = None
    applied_at: str | None = None
    exact_at: str | None = None

    def with_transition(self, transition: Transition, **fields: Any) -> Receipt:
        """This receipt after ``transition`` (a replayed one replaces its earlier record)."""
        history = tuple(h for h in self.history if h.state != transition.state) + (transition,)
        return replace(self, state=transition.state, history=history, **fields)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "ids": list(self.ids),
            "idempotency_key_sha256": self.idempotency_key_sha256,
            "subject_sha256": self.subject_sha256,
            "submitted_at": self.submitted_at,
            "state": self.state,
            "history": [h.to_dict() for h in self.history],
        }
        optional = {
            "batch_id": self.batch_id,
            "decision": self.decision,
            "reason": self.reason,
            "policy": self.policy,
            "shards": [s.to_dict() for s in self.shards] if self.shards or self.policy else None,
            "batch_seconds": self.batch_seconds,
            "applied_at": self.applied_at,
            "exact_at": self.exact_at,
        }
        return out | {k: v for k, v in optional.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Any, where: str = "receipt") -> Receipt:
        obj(data, where)
        return cls(
            request_id=req(data, "request_id", str, where),
            ids=ints(data, "ids", where),
            idempotency_key_sha256=req(data, "idempotency_key_sha256", str, where),
            subject_sha256=opt(data, "subject_sha256", str, where),
            submitted_at=req(data, "submitted_at", str, where),
            state=req(data, "state", str, where),
            history=tuple(Transition.from_dict(h, f"{where} history") for h in opt(data, "history", list, where, [])),
            batch_id=opt(data, "batch_id", str, where),
            decision=opt(data, "decision", str, where),
            reason=opt(data, "reason", str, where),
            policy=opt(data, "policy", str, where),
            shards=tuple(ShardReceipt.from_dict(s, f"{where} shard") for s in opt(data, "shards", list, where, [])),
            batch_seconds=opt(data, "batch_seconds", float, where),
            applied_at=opt(data, "applied_at", str, where),
            exact_at=opt(data, "exact_at", str, where),
        )
