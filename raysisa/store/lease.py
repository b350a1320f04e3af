"""The store's writer lease: one writer at a time, a clear error naming the holder, and
a crashed holder that does not block the store for long.

A lease is an object ``_log/lease/<token>.json`` created with a conditional create
(:meth:`~raysisa.store.ObjectStore.create_bytes`: an exclusive hard link locally,
``If-None-Match: *`` on S3), so of two processes taking the same token exactly one wins.
The holder is the creator of the highest token. It records who holds it (purpose, host,
process id and start time) and until when; a heartbeat thread renews it every third of
its time to live. The lease is free when that object is gone (released), expired, or its
process is dead on this same machine (checked at once, so a killed writer's lease does not
have to time out locally). Taking a free lease creates the next token.

The lease is a *fence*, not only a lock: :meth:`Lease.check` runs right before every
commit and fails if another process took the lease since (``LeaseLostError``), and commits
themselves are conditional creates of the next version, so even a writer that lost its
lease without noticing cannot overwrite anyone's state.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Any

from raysisa.errors import LeaseLostError, StoreBusyError, StoreError
from raysisa.store.objects import ObjectStore

__all__ = ["Holder", "Lease", "acquire_lease", "current_holder", "LEASE_PREFIX"]

log = logging.getLogger(__name__)

LEASE_PREFIX = "_log/lease"
_KEY_RE = re.compile(r"^_log/lease/(\d{12})\.json$")


def _lease_key(token: int) -> str:
    return f"{LEASE_PREFIX}/{token:012d}.json"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:  # not Linux: the host name alone identifies the machine
        return ""


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, Linux), or None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _process_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    current = _process_start(pid)
    return started is None or current is None or current == started  # a reused pid is another process


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lease, as written in its object."""

    token: int
    owner: str
    purpose: str
    host: str
    boot_id: str
    pid: int
    pid_started: str | None
    acquired_at: str
    expires_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, token: int) -> Holder:
        try:
            return cls(**{**data, "token": token})
        except TypeError:
            # an unreadable lease object (written by a foreign tool?) counts as expired
            return cls(token, "unknown", "unknown", "unknown", "", -1, None, "unknown", 0.0)

    def local(self) -> bool:
        return self.host == socket.gethostname() and self.boot_id == _boot_id()

    def free(self, now: float | None = None) -> bool:
        """Expired, or held by a process of this machine that no longer exists."""
        now = time.time() if now is None else now
        if now >= self.expires_at:
            return True
        return self.local() and not _process_alive(self.pid, self.pid_started)

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        return (
            f"{self.purpose} (pid {self.pid} on {self.host}, lease token {self.token}, since {self.acquired_at}, "
            f"expires in {max(0.0, self.expires_at - now):.0f}s unless renewed)"
        )


def current_holder(objects: ObjectStore) -> Holder | None:
    """The latest lease written on the store (possibly free), or None."""
    tokens = sorted(int(m[1]) for k in objects.list(LEASE_PREFIX) if (m := _KEY_RE.match(k)))
    while tokens:
        token = tokens.pop()
        try:
            return Holder.from_dict(objects.get_json(_lease_key(token)), token)
        except StoreError:  # released (deleted) between the listing and the read
            continue
    return None


class Lease:
    """A lease this process holds. Use :func:`acquire_lease`; release it when done."""

    def __init__(self, objects: ObjectStore, holder: Holder, ttl: float) -> None:
        self.objects = objects
        self.holder = holder
        self.ttl = ttl
        self.lost: str | None = None
        self.confirmed_at = time.time()  # when the store last showed this lease as ours
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def token(self) -> int:
        return self.holder.token

    def __repr__(self) -> str:
        return f"Lease({self.objects.config.uri!r}, token={self.token}, {self.holder.purpose!r})"

    def _lose(self, why: str) -> LeaseLostError:
        self.lost = self.lost or why
        return LeaseLostError(
            f"lost the writer lease of {self.objects.config.uri} ({self.lost}); nothing more was committed. "
            "Re-run the command: it finishes any interrupted transaction first"
        )

    def check(self, fresh: bool = True) -> None:
        """Raise :class:`LeaseLostError` unless this process still holds the lease.

        ``fresh=False`` trusts a confirmation less than a third of the time to live old:
        nobody may take a lease over before it expires, so no read is needed to know it is
        still ours (the commit, the fence, always reads fresh)."""
        if self.lost:
            raise self._lose(self.lost)
        now = time.time()
        if now >= self.holder.expires_at:
            raise self._lose(f"it expired {now - self.holder.expires_at:.1f}s ago without renewal")
        if not fresh and now - self.confirmed_at < self.ttl / 3:
            return
        # the owner, not only the token: tokens restart once every lease object is gone
        current = current_holder(self.objects)
        if current is None or current.owner != self.holder.owner:
            taker = current.describe() if current else "nobody (the lease object is gone)"
            raise self._lose(f"it is now held by {taker}")
        self.confirmed_at = now

    def renew(self) -> None:
        """Extend the lease by its time to live (the heartbeat does this)."""
        self.check()
        renewed = replace(self.holder, expires_at=time.time() + self.ttl)
        self.objects.put_json(_lease_key(self.token), renewed.to_dict())
        self.holder = renewed

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"raysisa-lease-{self.token}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except StoreError as exc:  # lost, or the store is unreachable: commits will fail
                log.error("cannot renew the writer lease of %s: %s", self.objects.config.uri, exc)
                if isinstance(exc, LeaseLostError):
                    return

    def release(self) -> None:
        """Stop renewing and delete the lease object (if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(StoreError):
            current = current_holder(self.objects)
            if current is not None and current.owner == self.holder.owner:
                self.objects.delete(_lease_key(self.token))


def acquire_lease(objects: ObjectStore, purpose: str, ttl: float = 30.0, wait: float = 60.0, poll: float = 0.25) -> Lease:
    """Take the store's writer lease, waiting up to ``wait`` seconds for a holder to finish.

    Raises:
        StoreBusyError: another live process still holds it after ``wait`` seconds; the
            message names it.
    """
    deadline = time.time() + wait
    announced = False
    while True:
        current = current_holder(objects)
        now = time.time()
        if current is None or current.free(now):
            token = current.token + 1 if current else 1
            holder = Holder(
                token=token,
                owner=uuid.uuid4().hex,
                purpose=purpose,
                host=socket.gethostname(),
                boot_id=_boot_id(),
                pid=os.getpid(),
                pid_started=_process_start(os.getpid()),
                acquired_at=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                expires_at=now + ttl,
            )
            if objects.create_json(_lease_key(token), holder.to_dict()):
                if current is not None:
                    log.warning("took over the writer lease of %s from %s, which is gone", objects.config.uri, current.describe(now))
                    objects.delete([k for k in objects.list(LEASE_PREFIX) if (m := _KEY_RE.match(k)) and int(m[1]) < token])
                lease = Lease(objects, holder, ttl)
                lease.start_heartbeat()
                return lease
            continue  # another process took this token first: look again
        if now >= deadline:
            raise StoreBusyError(
                f"store {objects.config.uri} is being written by another process: {current.describe(now)}. "
                "Wait for it to finish (or give --lease-wait SECONDS); a crashed holder's lease expires by itself"
            )
        if not announced:
            log.warning("waiting up to %.0fs for the writer lease of %s, held by %s", deadline - now, objects.config.uri, current.describe(now))
            announced = True
        time.sleep(min(poll, max(0.0, deadline - now)))
