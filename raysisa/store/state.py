"""A run's committed state: which objects make up its data, as of one version.

Every change to a run's data (the ingest, each deletion) writes its new objects under new
keys and then commits a :class:`RunState` as ``_log/commits/<version>.json`` with a
conditional create. The commit with the highest version *is* the run's data; objects it
does not name are leftovers that the sweep deletes. A state also carries the checkpoint key
of every slice of every shard (:func:`raysisa.store.keys.slice_keys` of its data), so what
a shard must train is known from one small object.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from raysisa.errors import StoreError

__all__ = ["ObjectRef", "RunState", "STATE_FORMAT"]

STATE_FORMAT = 3
READABLE_FORMATS = (2, 3)  # format 2: before pixels objects (its runs decode their Parquet)


@dataclass(frozen=True)
class ObjectRef:
    """One immutable data object: its key, sha256, size in bytes and row count."""

    key: str
    sha256: str
    size: int
    rows: int

    @classmethod
    def of(cls, key: str, data: bytes, rows: int) -> ObjectRef:
        return cls(key, hashlib.sha256(data).hexdigest(), len(data), rows)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "sha256": self.sha256, "size": self.size, "rows": self.rows}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ObjectRef:
        return cls(str(data["key"]), str(data["sha256"]), int(data["size"]), int(data["rows"]))


@dataclass(frozen=True)
class RunState:
    """The run's data as of ``version``.

    Attributes:
        version: 1 for the ingest, +1 per committed deletion.
        partitions: the samples of slice r of shard k, by ``(k, r)`` (slices 1..R).
        test: the test split.
        index: id -> (shard, slice) of every live sample, in training order.
        tombstones: ids deleted so far (ids only).
        keys: per shard, the checkpoint keys of slices 0..R for this data.
        txn: the transaction that committed this state (id, kind, reason, time...).
        pixels: the decoded images of each partition, by ``(k, r)``
            (:class:`~raysisa.data.pixels.Pixels`; none in runs of state format 2).
        test_pixels: the decoded test split.
    """

    version: int
    partitions: dict[tuple[int, int], ObjectRef]
    test: ObjectRef
    index: ObjectRef
    tombstones: ObjectRef
    keys: dict[int, tuple[str, ...]]
    txn: dict[str, Any] = field(default_factory=dict)
    pixels: dict[tuple[int, int], ObjectRef] = field(default_factory=dict)
    test_pixels: ObjectRef | None = None

    @property
    def num_shards(self) -> int:
        return len(self.keys)

    def slice_sizes(self, shard: int) -> list[int]:
        """Samples in slices 1..R of ``shard``."""
        return [self.partitions[(shard, r)].rows for r in range(1, len(self.keys[shard]))]

    def referenced(self) -> set[str]:
        """Every data object key this state needs."""
        pixels = {ref.key for ref in self.pixels.values()} | ({self.test_pixels.key} if self.test_pixels else set())
        return {ref.key for ref in self.partitions.values()} | {self.test.key, self.index.key, self.tombstones.key} | pixels

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": STATE_FORMAT,
            "version": self.version,
            "partitions": [{"shard": k, "slice": r, **ref.to_dict()} for (k, r), ref in sorted(self.partitions.items())],
            "test": self.test.to_dict(),
            "index": self.index.to_dict(),
            "tombstones": self.tombstones.to_dict(),
            "keys": {str(k): list(v) for k, v in sorted(self.keys.items())},
            "txn": self.txn,
            "pixels": [{"shard": k, "slice": r, **ref.to_dict()} for (k, r), ref in sorted(self.pixels.items())],
            "test_pixels": self.test_pixels.to_dict() if self.test_pixels else None,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> RunState:
        """Parse a commit object; a malformed one raises StoreError naming ``where``."""
        try:
            if data["format_version"] not in READABLE_FORMATS:
                raise StoreError(
                    f"{where} has state format {data['format_version']}, this raysisa reads {' and '.join(map(str, READABLE_FORMATS))}"
                )
            return cls(
                version=int(data["version"]),
                partitions={(int(p["shard"]), int(p["slice"])): ObjectRef.from_dict(p) for p in data["partitions"]},
                test=ObjectRef.from_dict(data["test"]),
                index=ObjectRef.from_dict(data["index"]),
                tombstones=ObjectRef.from_dict(data["tombstones"]),
                keys={int(k): tuple(str(x) for x in v) for k, v in data["keys"].items()},
                txn=dict(data.get("txn", {})),
                pixels={(int(p["shard"]), int(p["slice"])): ObjectRef.from_dict(p) for p in data.get("pixels") or []},
                test_pixels=ObjectRef.from_dict(data["test_pixels"]) if data.get("test_pixels") else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StoreError(f"{where} is not a valid commit of a raysisa run ({type(exc).__name__}: {exc})") from None
