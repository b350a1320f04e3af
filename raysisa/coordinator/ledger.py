"""The durable deletion ledger: requests, their state transitions, batch plans, receipts.

Everything is an immutable (or idempotently rewritten) object on the run's store::

    ledger/requests/<request_id>.json          the request: ids, hashed keys, submitted_at
    ledger/events/<request_id>/<n>-<state>.json one object per transition (n orders states)
    ledger/batches/<batch_id>.json             a batch's plan, written before it executes
    ledger/batches/<batch_id>.done.json        written when it has executed
    receipts/<request_id>.json                 the request's receipt (ids only, no contents)
    subjects/<sha256(subject)>/<sha256>.json   one registration: sample ids of a data subject

A request is written before it is acknowledged, with a conditional create: its id derives
from the idempotency key, so of two submissions with one key exactly one creates the
request, and the other is told it is a duplicate (same ids) or refused (other ids). States
only move forward: pending -> applied_approximate -> exact, pending -> applied_exact ->
exact, or pending -> rejected; each transition is created once and never rewritten. Each
subject registration is its own object, so concurrent registrations never overwrite one
another. Subject keys and idempotency keys are stored as sha256 digests only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from raysisa.errors import InvalidIdsError, StoreError, StoreNotFoundError
from raysisa.store import ObjectStore

__all__ = ["Request", "Ack", "Ledger", "STATES", "now", "check_request_id"]

STATES = {"pending": 0, "applied_approximate": 1, "applied_exact": 2, "exact": 3, "rejected": 3}
SUBJECTS = "subjects"
_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")


def check_request_id(request_id: Any) -> str:
    """A request id as given by a user: 32 lowercase hex digits (never used as a path otherwise).

    Raises:
        InvalidIdsError: anything else.
    """
    if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
        raise InvalidIdsError(f"{request_id!r} is not a request id (32 hex digits, as printed by `raysisa forget`)")
    return request_id


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def parse_time(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp).timestamp()


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Request:
    """A deletion request as logged."""

    request_id: str
    ids: list[int]
    submitted_at: str
    key_sha256: str
    subject_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Ack:
    """The acknowledgement of a submission: the request is durably logged."""

    request_id: str
    state: str
    duplicate: bool
    ids: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Ledger:
    """Reads and appends the ledger of one run's store."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    # -- requests -------------------------------------------------------------------------
    @staticmethod
    def request_id_for(key: str) -> str:
        return digest(f"raysisa-request:{key}")[:32]

    def submit(self, ids: np.ndarray, key: str | None = None, subject: str | None = None) -> Ack:
        """Log a request for (validated) ``ids``; a known ``key`` with the same ids is a no-op.

        Raises:
            InvalidIdsError: ``key`` was already used for other ids.
        """
        key = key if key is not None else uuid.uuid4().hex
        request_id = self.request_id_for(key)
        ids_list = sorted(int(i) for i in ids)
        request = Request(request_id, ids_list, now(), digest(key), digest(subject) if subject else None)
        if self.objects.create_json(f"ledger/requests/{request_id}.json", request.to_dict()):
            return Ack(request_id, "pending", False, len(ids_list))
        existing = self.request(request_id)  # the key was used before (or at this same instant)
        if existing.ids != ids_list:
            raise InvalidIdsError(
                f"idempotency key already used for request {request_id} with other ids "
                f"({len(existing.ids)} ids); use a new key. Nothing was logged"
            )
        return Ack(request_id, self.state(request_id), True, len(ids_list))

    def request(self, request_id: str) -> Request:
        check_request_id(request_id)
        try:
            data = self.objects.get_json(f"ledger/requests/{request_id}.json")
        except StoreNotFoundError:
            raise StoreNotFoundError(f"no request {request_id} in the ledger") from None
        try:
            return Request(**data)
        except TypeError:
            raise StoreError(f"request {request_id} in the ledger is malformed") from None

    def request_ids(self) -> list[str]:
        return [k.rsplit("/", 1)[1][: -len(".json")] for k in self.objects.list("ledger/requests")]

    # -- states ---------------------------------------------------------------------------
    def record(self, request_id: str, state: str, detail: dict[str, Any] | None = None) -> None:
        """Append a transition (rewriting the same state is a no-op)."""
        order = STATES[state]
        self.objects.create_json(f"ledger/events/{request_id}/{order}-{state}.json", {"state": state, "at": now(), **(detail or {})})

    def events(self, request_id: str) -> list[dict[str, Any]]:
        check_request_id(request_id)
        keys = self.objects.list(f"ledger/events/{request_id}")
        return sorted((self.objects.get_json(k) for k in keys), key=lambda e: STATES[e["state"]])

    def state(self, request_id: str) -> str:
        check_request_id(request_id)
        keys = self.objects.list(f"ledger/events/{request_id}")
        states = [k.rsplit("/", 1)[1].split("-", 1)[1][: -len(".json")] for k in keys]
        return max(states, key=lambda s: STATES[s]) if states else "pending"

    def states(self) -> dict[str, str]:
        """The current state of every request (one listing of the ledger)."""
        out = {rid: "pending" for rid in self.request_ids()}
        for key in self.objects.list("ledger/events"):
            _, _, rid, name = key.split("/", 3)
            state = name.split("-", 1)[1][: -len(".json")]
            if rid in out and STATES[state] >= STATES[out[rid]]:
                out[rid] = state
        return out

    # -- batches --------------------------------------------------------------------------
    def write_plan(self, plan: dict[str, Any]) -> None:
        if not self.objects.create_json(f"ledger/batches/{plan['batch_id']}.json", plan):
            raise StoreError(f"batch {plan['batch_id']} is already planned")

    def finish_plan(self, batch_id: str) -> None:
        self.objects.put_json(f"ledger/batches/{batch_id}.done.json", {"done_at": now()})

    def unfinished_plans(self) -> list[dict[str, Any]]:
        keys = self.objects.list("ledger/batches")
        done = {k[: -len(".done.json")] for k in keys if k.endswith(".done.json")}
        plans = [k[: -len(".json")] for k in keys if k.endswith(".json") and not k.endswith(".done.json")]
        return [self.objects.get_json(f"{p}.json") for p in sorted(plans) if p not in done]

    def batches(self) -> list[str]:
        return sorted(k.rsplit("/", 1)[1][: -len(".json")] for k in self.objects.list("ledger/batches") if not k.endswith(".done.json"))

    # -- receipts -------------------------------------------------------------------------
    def write_receipt(self, request_id: str, receipt: dict[str, Any]) -> None:
        self.objects.put_json(f"receipts/{request_id}.json", receipt)

    def receipt(self, request_id: str) -> dict[str, Any] | None:
        try:
            return self.objects.get_json(f"receipts/{request_id}.json")
        except StoreNotFoundError:
            return None

    # -- data subjects --------------------------------------------------------------------
    def register_subjects(self, mapping: dict[str, list[int]]) -> int:
        """Add ``subject key -> sample ids`` entries (keys stored hashed); returns the ids
        registered. Each (subject, ids) registration is its own object, created once."""
        count = 0
        for subject, ids in mapping.items():
            entry = sorted({int(i) for i in ids})
            name = digest(f"{digest(subject)}|{entry}")
            self.objects.create_json(f"{SUBJECTS}/{digest(subject)}/{name}.json", {"ids": entry})
            count += len(entry)
        return count

    def subject_ids(self, subject: str) -> np.ndarray:
        ids: set[int] = set()
        for key in self.objects.list(f"{SUBJECTS}/{digest(subject)}"):
            ids.update(int(i) for i in self.objects.get_json(key)["ids"])
        return np.asarray(sorted(ids), dtype=np.int64)

    def forget_subject(self, subject_sha256: str) -> None:
        """Drop a subject's mapping once its request is exact (the mapping is personal data)."""
        self.objects.delete(self.objects.list(f"{SUBJECTS}/{subject_sha256}"))
