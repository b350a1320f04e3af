"""The durable deletion ledger: requests, their state transitions, batch plans, receipts.

Everything is an object on the run's store, created once or rewritten atomically::

    ledger/requests/<request_id>.json          the request: ids, hashed keys, submitted_at
    ledger/inbox/<request_id>.json             announces a request not yet in the snapshot
    ledger/events/<request_id>/<n>-<state>.json one object per transition (n orders states)
    ledger/snapshot.json                       every request's state, as of the last bulk of transitions
    ledger/batches/<batch_id>.json             a batch's plan, written before it executes
    ledger/batches/<batch_id>.done.json        written when it has executed
    ledger/open/<batch_id>.json                marks a plan not yet done (so finding one lists no history)
    receipts/<request_id>.json                 the request's receipt (ids only, no contents)
    subjects/<sha256(subject)>/<sha256>.json   one registration: sample ids of a data subject

A request is written before it is acknowledged, with a conditional create: its id derives
from the idempotency key, so of two submissions with one key exactly one creates the
request, and the other is told it is a duplicate (same ids) or refused (other ids). States
only move forward: pending -> applied_approximate -> exact, pending -> applied_exact ->
exact, or pending -> rejected; each transition is created once and never rewritten. Each
subject registration is its own object, so concurrent registrations never overwrite one
another. Subject keys and idempotency keys are stored as sha256 digests only.

Reading every request's state does not list history. The coordinator (the only writer of
transitions, under the store's writer lease) records transitions in bulk — a batch's, or a
settling's — and then rewrites the snapshot (one compact object: request id -> state,
submitted_at, number of ids). A submission first writes its inbox entry, then creates the
request; the next snapshot takes the request in and its inbox entry goes. So the states are
the snapshot plus the few requests in the inbox (:meth:`Ledger.view`): two reads and a
short listing, whatever the history. Readers list the inbox *before* reading the snapshot:
an entry is removed only after a snapshot holding its request is written, so no request
falls between the two. Transitions newer than the snapshot exist only while a bulk is being
recorded, or after a crash interrupted one; the coordinator repeats that bulk (a batch plan
is executed again, settling runs again), which creates nothing twice and rewrites the
snapshot. One request's own state and transitions (:meth:`Ledger.state`,
:meth:`Ledger.events`) come from its event objects, always current.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from raysisa import telemetry
from raysisa.coordinator.plan import BatchPlan
from raysisa.coordinator.records import Receipt, Request
from raysisa.errors import InvalidIdsError, StoreError, StoreNotFoundError
from raysisa.store import ObjectStore

__all__ = ["Request", "RequestState", "Ack", "Ledger", "LedgerView", "Recorded", "STATES", "SNAPSHOT_FORMAT", "now", "check_request_id"]

STATES = {"pending": 0, "applied_approximate": 1, "applied_exact": 2, "exact": 3, "rejected": 3}
SUBJECTS = "subjects"
REQUESTS = "ledger/requests"
INBOX = "ledger/inbox"
EVENTS = "ledger/events"
SNAPSHOT = "ledger/snapshot.json"
BATCHES = "ledger/batches"
OPEN = "ledger/open"
SNAPSHOT_FORMAT = 1
INBOX_EXPIRY_SECONDS = 86_400.0  # an inbox entry whose request was never created (a crashed submission) goes after this
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
class RequestState:
    """A request's current state, with what listing requests shows of it."""

    request_id: str
    state: str
    submitted_at: str
    ids: int


@dataclass(frozen=True)
class Ack:
    """The acknowledgement of a submission: the request is durably logged."""

    request_id: str
    state: str
    duplicate: bool
    ids: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Recorded:
    """A transition as stored: ``new`` when this call created it, else a replay found it."""

    event: dict[str, Any]
    new: bool

    @property
    def state(self) -> str:
        return self.event["state"]

    @property
    def at(self) -> str:
        return self.event["at"]


@dataclass
class LedgerView:
    """Every request's state: the snapshot plus the requests in the inbox.

    A working copy: :meth:`Ledger.append` moves its states forward as it records
    transitions, and :meth:`Ledger.commit` writes it as the new snapshot.
    """

    entries: dict[str, RequestState]
    sequence: int = 0  # of the snapshot it started from
    inbox: list[str] = field(default_factory=list)  # inbox keys of the requests it holds
    expired: list[str] = field(default_factory=list)  # inbox keys of submissions that never created their request
    changed: bool = False  # it holds something the snapshot does not

    def states(self) -> dict[str, str]:
        return {rid: entry.state for rid, entry in self.entries.items()}

    def in_state(self, *states: str) -> list[RequestState]:
        """Requests in one of ``states``, oldest first."""
        return sorted((e for e in self.entries.values() if e.state in states), key=lambda e: (e.submitted_at, e.request_id))


def _snapshot_entry(rid: Any, row: Any, where: str) -> RequestState:
    if not (isinstance(rid, str) and _REQUEST_ID.match(rid)) or not isinstance(row, list) or len(row) != 3:
        raise StoreError(f"{where} is malformed: entry {rid!r} is not [state, submitted_at, ids]")
    state, submitted_at, ids = row
    if state not in STATES or not isinstance(submitted_at, str) or not isinstance(ids, int) or isinstance(ids, bool):
        raise StoreError(f"{where} is malformed: entry {rid!r} is not [state, submitted_at, ids]: {row!r:.80}")
    return RequestState(rid, state, submitted_at, ids)


class Ledger:
    """Reads and appends the ledger of one run's store."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects
        self._requests: dict[str, Request] = {}  # requests are immutable: each is read once
        self.run = telemetry.run_label(objects.config.uri)  # the metrics' run label

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
        try:
            existing = self.request(request_id)  # the key was used before: nothing is written
        except StoreNotFoundError:
            # announced before it exists, so no logged request is ever missing from the inbox or the snapshot
            self.objects.create_json(f"{INBOX}/{request_id}.json", {"request_id": request_id, "at": request.submitted_at})
            if self.objects.create_json(f"{REQUESTS}/{request_id}.json", request.to_dict()):
                telemetry.request_received(self.run)
                return Ack(request_id, "pending", False, len(ids_list))
            existing = self.request(request_id)  # created by another submission at this same instant
        if existing.ids != ids_list:
            raise InvalidIdsError(
                f"idempotency key already used for request {request_id} with other ids "
                f"({len(existing.ids)} ids); use a new key. Nothing was logged"
            )
        return Ack(request_id, self.state(request_id), True, len(ids_list))

    def request(self, request_id: str) -> Request:
        check_request_id(request_id)
        if request_id in self._requests:
            return self._requests[request_id]
        try:
            data = self.objects.get_json(f"{REQUESTS}/{request_id}.json")
        except StoreNotFoundError:
            raise StoreNotFoundError(f"no request {request_id} in the ledger") from None
        try:
            request = Request(**data)
        except TypeError:
            raise StoreError(f"request {request_id} in the ledger is malformed") from None
        self._requests[request_id] = request
        return request

    def request_ids(self) -> list[str]:
        """Every logged request (a listing of all requests: for checks, not for polling)."""
        return [k.rsplit("/", 1)[1][: -len(".json")] for k in self.objects.list(REQUESTS)]

    # -- states ---------------------------------------------------------------------------
    def _snapshot(self) -> tuple[int, dict[str, RequestState]]:
        try:
            raw = self.objects.get_bytes(SNAPSHOT)
        except StoreNotFoundError:
            return 0, {}
        where = f"ledger snapshot {self.objects.uri(SNAPSHOT)}"
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise StoreError(f"{where} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format_version") != SNAPSHOT_FORMAT:
            version = data.get("format_version") if isinstance(data, dict) else None
            raise StoreError(f"{where} has format {version!r}; this raysisa reads snapshot format {SNAPSHOT_FORMAT}")
        sequence, rows = data.get("sequence"), data.get("requests")
        if not isinstance(sequence, int) or not isinstance(rows, dict):
            raise StoreError(f"{where} is malformed: it needs an integer 'sequence' and a 'requests' object")
        return sequence, {rid: _snapshot_entry(rid, row, where) for rid, row in rows.items()}

    def _expired(self, key: str) -> bool:
        try:
            stamp = self.objects.get_json(key).get("at")
            return isinstance(stamp, str) and dt.datetime.now(dt.UTC).timestamp() - parse_time(stamp) > INBOX_EXPIRY_SECONDS
        except (StoreNotFoundError, ValueError, AttributeError):
            return False

    def view(self) -> LedgerView:
        """Every request's state: the snapshot plus the requests logged after it."""
        inbox = self.objects.list(INBOX)  # first: an entry goes only once a snapshot holds its request
        sequence, entries = self._snapshot()
        view = LedgerView(entries, sequence)
        for key in inbox:
            rid = key.rsplit("/", 1)[1][: -len(".json")]
            if rid not in entries:
                try:
                    request = self.request(rid)
                except (StoreNotFoundError, InvalidIdsError):  # being submitted now, or a submission that crashed
                    if self._expired(key):
                        view.expired.append(key)
                    continue
                entries[rid] = RequestState(rid, "pending", request.submitted_at, len(request.ids))
                view.changed = True
            view.inbox.append(key)
        return view

    def states(self) -> dict[str, str]:
        """The current state of every request (the snapshot and the inbox; no history)."""
        return self.view().states()

    def append(self, view: LedgerView, transitions: Iterable[tuple[str, str, dict[str, Any] | None]]) -> list[Recorded | None]:
        """Create the event of each ``(request_id, state, detail)`` transition, and move
        ``view`` forward with it; nothing is written for a state the request already has
        or has passed. Returns each transition as stored (``None`` when the request has
        passed that state): created now, or, for a replayed transition, created the first
        time. :meth:`commit` makes them visible to :meth:`states`.
        """
        out: list[Recorded | None] = []
        for rid, state, detail in transitions:
            rank = STATES[state]
            key = f"{EVENTS}/{rid}/{rank}-{state}.json"
            entry = view.entries.get(rid)
            if entry is None:
                request = self.request(rid)
                entry = RequestState(rid, "pending", request.submitted_at, len(request.ids))
                view.entries[rid] = entry
                view.changed = True
            if STATES[entry.state] >= rank:  # replayed, or moved past: states only move forward
                event = self._event(key) if entry.state == state else None
                out.append(Recorded(event, False) if event is not None else None)
                continue
            event = {"state": state, "at": now(), **(detail or {})}
            new = self.objects.create_json(key, event)
            if not new:  # created before a crash interrupted the bulk
                event = self.objects.get_json(key)
            view.entries[rid] = replace(entry, state=state)
            view.changed = True
            if new:  # counted once, when the event is created (a replay finds it)
                telemetry.request_transition(self.run, entry.state, state, parse_time(event["at"]) - parse_time(entry.submitted_at))
            out.append(Recorded(event, new))
        return out

    def _event(self, key: str) -> dict[str, Any] | None:
        try:
            return self.objects.get_json(key)
        except StoreNotFoundError:
            return None

    def commit(self, view: LedgerView) -> None:
        """Write ``view`` as the snapshot (when it holds anything new), then drop the inbox
        entries of the requests it holds."""
        if view.changed:
            body = {
                "format_version": SNAPSHOT_FORMAT,
                "sequence": view.sequence + 1,
                "written_at": now(),
                "requests": {rid: [e.state, e.submitted_at, e.ids] for rid, e in sorted(view.entries.items())},
            }
            self.objects.put_bytes(SNAPSHOT, json.dumps(body, separators=(",", ":")).encode())
            view.sequence += 1
            view.changed = False
        self.objects.delete(view.inbox + view.expired)
        view.inbox, view.expired = [], []

    def record(self, request_id: str, state: str, detail: dict[str, Any] | None = None) -> Recorded | None:
        """Append one transition and write the snapshot (rewriting the same state is a no-op).
        The coordinator records in bulk instead: :meth:`append` then :meth:`commit`."""
        view = self.view()
        [event] = self.append(view, [(request_id, state, detail)])
        self.commit(view)
        return event

    def events(self, request_id: str) -> list[dict[str, Any]]:
        """The request's transitions, in order (its own event objects)."""
        check_request_id(request_id)
        keys = self.objects.list(f"{EVENTS}/{request_id}")
        return sorted((self.objects.get_json(k) for k in keys), key=lambda e: STATES[e["state"]])

    def state(self, request_id: str) -> str:
        """The request's current state, from its own event objects (one short listing)."""
        check_request_id(request_id)
        keys = self.objects.list(f"{EVENTS}/{request_id}")
        states = [k.rsplit("/", 1)[1].split("-", 1)[1][: -len(".json")] for k in keys]
        return max(states, key=lambda s: STATES[s]) if states else "pending"

    # -- batches --------------------------------------------------------------------------
    def write_plan(self, plan: BatchPlan) -> None:
        """Log a plan before it executes: its open marker, then the plan (created once)."""
        for key in self.objects.list(OPEN):  # markers a crash left behind (we hold the writer lease)
            batch_id = key.rsplit("/", 1)[1][: -len(".json")]
            if not self.objects.exists(f"{BATCHES}/{batch_id}.json") or self.objects.exists(f"{BATCHES}/{batch_id}.done.json"):
                self.objects.delete(key)
        self.objects.put_json(f"{OPEN}/{plan.batch_id}.json", {"batch_id": plan.batch_id})
        if not self.objects.create_json(f"{BATCHES}/{plan.batch_id}.json", plan.to_dict()):
            raise StoreError(f"batch {plan.batch_id} is already planned")

    def finish_plan(self, batch_id: str) -> None:
        self.objects.put_json(f"{BATCHES}/{batch_id}.done.json", {"done_at": now()})
        self.objects.delete(f"{OPEN}/{batch_id}.json")

    def plan(self, batch_id: str) -> BatchPlan:
        key = f"{BATCHES}/{batch_id}.json"
        return BatchPlan.from_dict(self.objects.get_json(key), f"batch plan {self.objects.uri(key)}")

    def unfinished_plans(self) -> list[BatchPlan]:
        """Plans logged but not marked done, oldest first (from the open markers only)."""
        plans = []
        for key in self.objects.list(OPEN):
            batch_id = key.rsplit("/", 1)[1][: -len(".json")]
            try:
                plan = self.plan(batch_id)
            except StoreNotFoundError:  # the marker of a plan a crash kept from being written
                continue
            if not self.objects.exists(f"{BATCHES}/{batch_id}.done.json"):
                plans.append(plan)
        return sorted(plans, key=lambda p: p.batch_id)

    def batches(self) -> list[str]:
        """Every batch ever planned (a listing of all plans: for reports, not for polling)."""
        return sorted(k.rsplit("/", 1)[1][: -len(".json")] for k in self.objects.list(BATCHES) if not k.endswith(".done.json"))

    # -- receipts -------------------------------------------------------------------------
    def write_receipt(self, receipt: Receipt) -> None:
        self.objects.put_json(f"receipts/{receipt.request_id}.json", receipt.to_dict())

    def receipt(self, request_id: str) -> dict[str, Any] | None:
        try:
            return self.objects.get_json(f"receipts/{request_id}.json")
        except StoreNotFoundError:
            return None

    def read_receipt(self, request_id: str) -> Receipt | None:
        """The receipt as a :class:`Receipt` (``None`` if there is none yet)."""
        data = self.receipt(request_id)
        return None if data is None else Receipt.from_dict(data, f"receipt {self.objects.uri(f'receipts/{request_id}.json')}")

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
