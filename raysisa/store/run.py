"""A SISA run's layout on the object store::

    raysisa.json                                  run manifest: RunSpec, fingerprint, data info
    data/train/shard=<k>/slice=<r>/part-0.parquet the samples of one slice (id, label, image)
    data/test/part-0.parquet                      the test split
    index/assignment.parquet                      id -> (shard, slice) of every live sample
    index/tombstones.parquet                      ids deleted (or excluded), never their contents
    checkpoints/...                               see :mod:`raysisa.store.checkpoints`
    approx/shard=<k>/slice=<R>/<key>.*            a shard's approximately unlearned model (coordinator)

A partition file is rewritten in place (atomically) when one of its samples is deleted, so
deleting a sample rewrites exactly one data object and leaves no copy of its bytes behind.
The partitions are the source of truth for what a shard trains on; the index is a lookup
table rewritten after them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysisa.config import RunSpec, StoreConfig
from raysisa.data.samples import SAMPLE_SCHEMA, DatasetInfo
from raysisa.errors import StoreError, StoreNotFoundError
from raysisa.store.checkpoints import CheckpointStore
from raysisa.store.objects import ObjectStore

__all__ = ["RunStore", "MANIFEST", "TEST_KEY", "TOMBSTONE_SCHEMA", "parquet_bytes", "parquet_table"]

MANIFEST = "raysisa.json"
FORMAT_VERSION = 1
INDEX = "index/assignment.parquet"
TOMBSTONES = "index/tombstones.parquet"
TEST_KEY = "data/test/part-0.parquet"
TOMBSTONE_SCHEMA = pa.schema(
    [("id", pa.int64()), ("shard", pa.int64()), ("slice", pa.int64()), ("deleted_at", pa.string()), ("reason", pa.string())]
)
INDEX_SCHEMA = pa.schema([("id", pa.int64()), ("shard", pa.int64()), ("slice", pa.int64())])


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def parquet_table(data: bytes, where: str) -> pa.Table:
    try:
        return pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise StoreError(f"{where} is not a readable Parquet file: {exc}") from None


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class RunStore:
    """The files of one SISA run under a store URI."""

    def __init__(self, config: StoreConfig | ObjectStore) -> None:
        self.objects = config if isinstance(config, ObjectStore) else ObjectStore(config)
        self.checkpoints = CheckpointStore(self.objects)
        # approximately unlearned shard models served until exactness is restored
        self.overlays = CheckpointStore(self.objects, prefix="approx")
        self._manifest: dict[str, Any] | None = None

    def __reduce__(self):
        return (RunStore, (self.objects.config,))

    @property
    def uri(self) -> str:
        return self.objects.config.uri

    # -- run manifest ----------------------------------------------------------------------
    def exists(self) -> bool:
        return self.objects.exists(MANIFEST)

    def write_manifest(self, spec: RunSpec, info: DatasetInfo, extra: dict[str, Any]) -> None:
        self._manifest = {
            "format_version": FORMAT_VERSION,
            "spec": spec.to_dict(),
            "fingerprint": spec.fingerprint(),
            "info": info.to_dict(),
            "created_at": now(),
            **extra,
        }
        self.objects.put_json(MANIFEST, self._manifest)

    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            try:
                self._manifest = self.objects.get_json(MANIFEST)
            except StoreNotFoundError:
                raise StoreNotFoundError(
                    f"no raysisa run at {self.uri} (missing {MANIFEST}); create one with `raysisa train`"
                ) from None
        return self._manifest

    @property
    def spec(self) -> RunSpec:
        return RunSpec.from_dict(self.manifest()["spec"])

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo.from_dict(self.manifest()["info"])

    @property
    def fingerprint(self) -> str:
        return self.manifest()["fingerprint"]

    # -- data partitions -------------------------------------------------------------------
    @staticmethod
    def partition_key(shard: int, slice_: int) -> str:
        return f"data/train/shard={shard}/slice={slice_}/part-0.parquet"

    def write_partition(self, shard: int, slice_: int, table: pa.Table) -> None:
        self.objects.put_bytes(self.partition_key(shard, slice_), parquet_bytes(table.cast(SAMPLE_SCHEMA)))

    def read_partition_bytes(self, shard: int, slice_: int) -> bytes:
        return self.objects.get_bytes(self.partition_key(shard, slice_))

    def read_partition(self, shard: int, slice_: int, columns: list[str] | None = None) -> pa.Table:
        key = self.partition_key(shard, slice_)
        table = parquet_table(self.objects.get_bytes(key), self.objects.uri(key))
        return table.select(columns) if columns else table

    def slice_ids(self, shard: int) -> list[np.ndarray]:
        """The ids in each slice 1..R of ``shard``, in training order (read from the partitions)."""
        slices = self.spec.sharding.num_slices
        return [self.read_partition(shard, r, ["id"])["id"].to_numpy() for r in range(1, slices + 1)]

    def write_test(self, table: pa.Table) -> None:
        self.objects.put_bytes(TEST_KEY, parquet_bytes(table.cast(SAMPLE_SCHEMA)))

    def read_test(self) -> pa.Table:
        return parquet_table(self.objects.get_bytes(TEST_KEY), self.objects.uri(TEST_KEY))

    def data_keys(self) -> list[str]:
        """Every data object (train partitions and test split)."""
        return self.objects.list("data")

    # -- index and tombstones --------------------------------------------------------------
    def write_index(self, table: pa.Table) -> None:
        self.objects.put_bytes(INDEX, parquet_bytes(table.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)))

    def read_index(self) -> pa.Table:
        return parquet_table(self.objects.get_bytes(INDEX), self.objects.uri(INDEX))

    def tombstones(self) -> pa.Table:
        if not self.objects.exists(TOMBSTONES):
            return TOMBSTONE_SCHEMA.empty_table()
        return parquet_table(self.objects.get_bytes(TOMBSTONES), self.objects.uri(TOMBSTONES))

    def add_tombstones(self, ids: np.ndarray, shards: np.ndarray, slices: np.ndarray, reason: str) -> None:
        stamp = now()
        new = pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "shard": pa.array(shards, pa.int64()),
                "slice": pa.array(slices, pa.int64()),
                "deleted_at": pa.array([stamp] * len(ids), pa.string()),
                "reason": pa.array([reason] * len(ids), pa.string()),
            }
        )
        self.objects.put_bytes(TOMBSTONES, parquet_bytes(pa.concat_tables([self.tombstones(), new])))

    # -- listing ---------------------------------------------------------------------------
    def listing(self) -> dict[str, str]:
        """sha256 of every object on the store, by key (for audits and tests)."""
        return {key: hashlib.sha256(self.objects.get_bytes(key)).hexdigest() for key in self.objects.list("")}
