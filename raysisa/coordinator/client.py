"""Client side of deletion requests: submit, status, wait. Store access only, no Ray."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from raysisa.config import StoreConfig
from raysisa.coordinator.ledger import STATES, Ack, Ledger, check_request_id
from raysisa.errors import ConfigError, InvalidIdsError
from raysisa.sisa.run import SisaRun

__all__ = ["submit", "status", "wait", "requests", "register_subjects"]


def _ledger(store: StoreConfig | str) -> tuple[SisaRun, Ledger]:
    run = SisaRun.open(store if isinstance(store, StoreConfig) else StoreConfig(uri=str(store)))
    run.store.manifest()  # a clear error when there is no run
    return run, Ledger(run.store.objects)


def submit(store: StoreConfig | str, ids: Iterable[Any] | None = None, *, subject: str | None = None, key: str | None = None) -> Ack:
    """Log a deletion request (before acknowledging it) and return the acknowledgement.

    Args:
        store: the run.
        ids: sample ids to delete; or
        subject: a data-subject key registered with :func:`register_subjects`.
        key: idempotency key; re-submitting it is a no-op (default: a fresh one).

    Raises:
        InvalidIdsError: no ids, malformed or unknown ids, an unknown subject, or a key
            already used for other ids. Nothing is logged then.
    """
    run, ledger = _ledger(store)
    if (ids is None) == (subject is None):
        raise InvalidIdsError("give either sample ids or a data-subject key")
    if subject is not None:
        wanted = ledger.subject_ids(subject)
        if not len(wanted):
            raise InvalidIdsError("unknown data subject (no ids registered for this key); nothing was logged")
    wanted, _, _ = run.check_ids(wanted if subject is not None else ids)
    return ledger.submit(wanted, key, subject)


def status(store: StoreConfig | str, request_id: str) -> dict[str, Any]:
    """A request, its current state, its transitions and its receipt (the request's own
    objects: a few reads, whatever the ledger's history).

    Raises:
        InvalidIdsError: ``request_id`` is not a request id.
        StoreNotFoundError: no such request.
    """
    check_request_id(request_id)
    _, ledger = _ledger(store)
    request = ledger.request(request_id)
    return {
        "request": request.to_dict(),
        "state": ledger.state(request_id),
        "events": ledger.events(request_id),
        "receipt": ledger.receipt(request_id),
    }


def wait(store: StoreConfig | str, request_id: str, until: str = "applied", timeout: float = 600.0, poll: float = 0.2) -> str:
    """Block until the request is applied (``until="applied"``) or exact; returns its state.

    Raises:
        TimeoutError: not reached in time (the request stays logged and will be applied).
    """
    if until not in ("applied", "exact"):
        raise ConfigError(f"until must be 'applied' or 'exact', not {until!r}")
    check_request_id(request_id)
    _, ledger = _ledger(store)
    goal = STATES["applied_approximate"] if until == "applied" else STATES["exact"]
    deadline = time.time() + timeout
    while True:
        state = ledger.state(request_id)
        if STATES[state] >= goal:
            return state
        if time.time() >= deadline:
            raise TimeoutError(f"request {request_id} is still {state} after {timeout}s")
        time.sleep(poll)


def requests(store: StoreConfig | str) -> list[dict[str, Any]]:
    """Every logged request with its state, oldest first (from the ledger's snapshot and the
    requests logged after it: no listing of history)."""
    _, ledger = _ledger(store)
    entries = ledger.view().in_state(*STATES)
    return [{"request_id": e.request_id, "state": e.state, "ids": e.ids, "submitted_at": e.submitted_at} for e in entries]


def register_subjects(store: StoreConfig | str, mapping: dict[str, list[int]]) -> int:
    """Register data-subject keys (stored hashed) and the sample ids each one owns."""
    if not isinstance(mapping, dict) or not mapping:
        raise InvalidIdsError("subjects are a non-empty mapping {subject key: [sample ids]}")
    bad = [k for k, v in mapping.items() if not isinstance(k, str) or not k or not isinstance(v, list)]
    if bad:
        raise InvalidIdsError(f"subject {bad[0]!r}: keys are non-empty strings and values lists of sample ids; nothing was registered")
    run, ledger = _ledger(store)
    checked = {subject: run.check_ids(ids)[0].tolist() for subject, ids in mapping.items()}  # all valid before any is written
    return ledger.register_subjects(checked)
