"""Counting what the store costs: requests by kind, bytes read and written, keys read.

:class:`~raysisa.store.objects.ObjectStore` reports every operation here; nothing is
counted unless a :func:`count_traffic` block is active in this process, so the cost when
nobody counts is one empty-list check per operation.

- On S3, ``requests`` are the HTTP requests the client sends (botocore's ``before-send``
  event: retries, pagination and any HEAD a library adds are all counted), by kind:
  ``GET``, ``PUT``, ``HEAD``, ``LIST``, ``DELETE`` (one batched DeleteObjects), ``POST``.
- On a local folder, each :class:`ObjectStore` call is one request of its kind (a delete
  of several keys is one, like S3's batched DeleteObjects).

Bytes are the payloads of reads and writes; ``reads`` lists every key read, in order, and
``read_bytes`` the bytes read per key, so a test can check that no object was read twice
and what was read from where.

Example:
    >>> from raysisa.config import StoreConfig
    >>> from raysisa.store import ObjectStore
    >>> store = ObjectStore(StoreConfig(uri="memory://traffic-example"))
    >>> with count_traffic() as traffic:
    ...     store.put_bytes("a", b"12345")
    ...     _ = store.get_bytes("a")
    >>> traffic.total, traffic.bytes_read, traffic.bytes_written
    (2, 5, 5)
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["StoreTraffic", "count_traffic"]


@dataclass
class StoreTraffic:
    """Requests and bytes counted during one :func:`count_traffic` block."""

    requests: Counter = field(default_factory=Counter)
    bytes_read: int = 0
    bytes_written: int = 0
    reads: list[str] = field(default_factory=list)
    read_bytes: Counter = field(default_factory=Counter)  # key -> bytes read from it

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.total,
            "by_kind": dict(sorted(self.requests.items())),
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
        }


_ACTIVE: list[StoreTraffic] = []
_LOCK = threading.Lock()


@contextlib.contextmanager
def count_traffic() -> Iterator[StoreTraffic]:
    """Count this process's store traffic for the duration of the block."""
    traffic = StoreTraffic()
    with _LOCK:
        _ACTIVE.append(traffic)
    try:
        yield traffic
    finally:
        with _LOCK:
            _ACTIVE.remove(traffic)


def counting() -> bool:
    return bool(_ACTIVE)


def record(kind: str | None, *, read: str | None = None, bytes_read: int = 0, bytes_written: int = 0) -> None:
    """Report one operation: a request of ``kind`` (None: counted by the S3 hook instead),
    the key it read, and its payload bytes."""
    with _LOCK:
        for traffic in _ACTIVE:
            if kind is not None:
                traffic.requests[kind] += 1
            if read is not None:
                traffic.reads.append(read)
                traffic.read_bytes[read] += bytes_read
            traffic.bytes_read += bytes_read
            traffic.bytes_written += bytes_written


def _kind(method: str, url: str) -> str:
    query = url.partition("?")[2]
    if method == "GET" and "list-type=" in query:
        return "LIST"
    if method == "POST" and query.startswith("delete"):
        return "DELETE"
    return method


def _on_send(request: Any, **_: Any) -> None:
    if _ACTIVE:
        record(_kind(request.method, request.url))


def hook_s3_client(client: Any) -> None:
    """Count the HTTP requests of an S3 client (registered once per client)."""
    if getattr(client, "_raysisa_traffic", False):
        return
    client.meta.events.register("before-send.s3", _on_send)
    client._raysisa_traffic = True
