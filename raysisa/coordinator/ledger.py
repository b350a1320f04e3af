"""The durable deletion ledger: requests, their state transitions, batch plans, receipts.

Everything is an immutable (or idempotently rewritten) object on the run's store::

    ledger/requests/<request_id>.json          the request: ids, hashed keys, submitted_at
    ledger/events/<request_id>/<n>-<state>.json one object per transition (n orders states)
    ledger/batches/<batch_id>.json             a batch's plan, written before it executes
    ledger/batches/<batch_id>.done.json        written when it has executed
    receipts/<request_id>.json                 the request's receipt (ids only, no contents)
    index/subjects.parquet                     sha256(subject key) -> sample ids

A request is written before it is acknowledged. Its id derives from the idempotency key,
so re-submitting a key is a no-op. States only move forward:
pending -> applied_approximate -> exact, pending -> applied_exact -> exact, or
pending -> rejected; writing a state twice rewrites the same object. Subject keys and
idempotency keys are stored as sha256 digests only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysisa.errors import InvalidIdsError, StoreNotFoundError
from raysisa.store import ObjectStore

__all__ = ["Request", "Ack", "Ledger", "STATES", "now"]

STATES = {"pending": 0, "applied_approximate": 1, "applied_exact": 2, "exact": 3, "rejected": 3}
SUBJECTS = "index/subjects.parquet"


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
        path = f"ledger/requests/{request_id}.json"
        if self.objects.exists(path):
            existing = self.request(request_id)
            if existing.ids != ids_list:
                raise InvalidIdsError(
                    f"idempotency key already used for request {request_id} with other ids "
                    f"({len(existing.ids)} ids); use a new key"
                )
            return Ack(request_id, self.state(request_id), True, len(ids_list))
        request = Request(request_id, ids_list, now(), digest(key), digest(subject) if subject else None)
        self.objects.put_json(path, request.to_dict())
        return Ack(request_id, "pending", False, len(ids_list))

    def request(self, request_id: str) -> Request:
        try:
            return Request(**self.objects.get_json(f"ledger/requests/{request_id}.json"))
        except StoreNotFoundError:
            raise StoreNotFoundError(f"no request {request_id} in the ledger") from None

    def request_ids(self) -> list[str]:
        return [k.rsplit("/", 1)[1][: -len(".json")] for k in self.objects.list("ledger/requests")]

    # -- states ---------------------------------------------------------------------------
    def record(self, request_id: str, state: str, detail: dict[str, Any] | None = None) -> None:
        """Append a transition (rewriting the same state is a no-op)."""
        order = STATES[state]
        key = f"ledger/events/{request_id}/{order}-{state}.json"
        if not self.objects.exists(key):
            self.objects.put_json(key, {"state": state, "at": now(), **(detail or {})})

    def events(self, request_id: str) -> list[dict[str, Any]]:
        keys = self.objects.list(f"ledger/events/{request_id}")
        return sorted((self.objects.get_json(k) for k in keys), key=lambda e: STATES[e["state"]])

    def state(self, request_id: str) -> str:
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
        self.objects.put_json(f"ledger/batches/{plan['batch_id']}.json", plan)

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
        """Add ``subject key -> sample ids`` entries (keys stored hashed)."""
        table = self._subjects()
        rows = [(digest(subject), int(i)) for subject, ids in mapping.items() for i in ids]
        new = pa.table({"subject": [r[0] for r in rows], "id": pa.array([r[1] for r in rows], pa.int64())})
        merged = pa.concat_tables([table, new]) if table.num_rows else new
        buffer = io.BytesIO()
        pq.write_table(merged, buffer)
        self.objects.put_bytes(SUBJECTS, buffer.getvalue())
        return len(rows)

    def subject_ids(self, subject: str) -> np.ndarray:
        table = self._subjects()
        if not table.num_rows:
            return np.zeros(0, np.int64)
        mask = np.asarray(table["subject"].to_pylist()) == digest(subject)
        return np.unique(table["id"].to_numpy()[mask])

    def forget_subject(self, subject_sha256: str) -> None:
        """Drop a subject's mapping once its request is exact (the mapping is personal data)."""
        table = self._subjects()
        if table.num_rows:
            keep = np.asarray(table["subject"].to_pylist()) != subject_sha256
            buffer = io.BytesIO()
            pq.write_table(table.filter(pa.array(keep)), buffer)
            self.objects.put_bytes(SUBJECTS, buffer.getvalue())

    def _subjects(self) -> pa.Table:
        if not self.objects.exists(SUBJECTS):
            return pa.table({"subject": pa.array([], pa.string()), "id": pa.array([], pa.int64())})
        return pq.read_table(io.BytesIO(self.objects.get_bytes(SUBJECTS)))
