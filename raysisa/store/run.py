"""A SISA run's layout on the object store, and the transactions that change its data.

::

    raysisa.json                                    run manifest: RunSpec, fingerprint, data info (written once)
    _log/commits/<version>.json                     committed states (RunState); the highest version is the run
    _log/journal/<version>.json                     the intent of the transaction that will commit <version>
    _log/lease/<token>.json                         the writer lease (see raysisa.store.lease)
    data/train/shard=<k>/slice=<r>/part-<v>.parquet the samples of one slice (id, label, image), as of version v
    data/train/shard=<k>/slice=<r>/part-<v>.pixels.safetensors   the same rows decoded (raysisa.data.pixels)
    data/test/part-<v>.parquet                      the test split (and part-<v>.pixels.safetensors, decoded)
    index/assignment-<v>.parquet                    id -> (shard, slice) of every live sample, in training order
    index/tombstones-<v>.parquet                    ids deleted (or excluded), never their contents
    checkpoints/...                                 see raysisa.store.checkpoints
    approx/shard=<k>/slice=<R>/<key>.*              a shard's approximately unlearned model (coordinator)

**Transactions.** The ingest and every deletion change the data in one atomic step:

1. the writer holds the store's lease (:mod:`raysisa.store.lease`) and has read and
   verified (sha256) every object the change reads;
2. it writes its intent to ``_log/journal/<v>.json`` (a conditional create): the ids to
   delete, or the recipe to ingest — enough to redo the change from the committed state;
3. it writes the new objects under new keys (``part-<v>``, ``assignment-<v>``...), never
   over a committed one;
4. it commits: after checking it still holds the lease, it creates
   ``_log/commits/<v>.json`` (a conditional create, so of two writers only one can commit
   version v). Before this step readers see version v-1 complete; after it, version v;
5. it sweeps: every data object the new state does not name (the old partitions holding
   the deleted samples, old index and tombstones, leftovers) and every checkpoint whose key
   the new state does not expect; then it deletes the journal.

**Recovery.** :meth:`RunStore.recover` runs before any writer does anything else, and
before readers read: an open journal means a transaction was interrupted. If its commit
exists, the sweep is finished; otherwise the change is redone from the journal (the same
ids deleted from the same committed state, or the same recipe ingested) and committed.
A deletion that reached its journal is therefore never lost, and a partial one is never
visible.

**Decoded pixels.** Every partition and the test split have a pixels object beside them
(:class:`~raysisa.data.pixels.Pixels`), written in the same transaction and named by the
same commit, so shards train from uint8 tensors and never decode images. A deletion derives
the new partition's pixels from the old ones by the same row mask, and its sweep deletes the
old pixels with the old partition (they hold the deleted samples too). A pixels object that
is missing, corrupt or not decoded from the partition the commit names is not used: readers
decode the Parquet instead, and the listing sweep writes a missing one again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysisa import telemetry
from raysisa.config import RunSpec, StoreConfig
from raysisa.crashpoints import crash_point
from raysisa.data.pixels import Pixels
from raysisa.data.samples import SAMPLE_SCHEMA, DatasetInfo, SourceData, drop_ids, take_ids
from raysisa.errors import ConfigError, ConflictError, DataError, InvalidIdsError, StoreError, StoreNotFoundError
from raysisa.store.checkpoints import CheckpointRef, CheckpointStore
from raysisa.store.keys import slice_keys
from raysisa.store.lease import LEASE_PREFIX, Lease
from raysisa.store.objects import ObjectStore
from raysisa.store.state import ObjectRef, RunState

__all__ = [
    "RunStore",
    "DeletePlan",
    "SweepReport",
    "MANIFEST",
    "FORMAT_VERSION",
    "TOMBSTONE_SCHEMA",
    "parquet_bytes",
    "parquet_table",
]

log = logging.getLogger(__name__)

MANIFEST = "raysisa.json"
FORMAT_VERSION = 2
COMMITS = "_log/commits"
JOURNAL = "_log/journal"
KEEP_COMMITS = 10  # older commits name only objects that are gone; keep a short history
TOMBSTONE_SCHEMA = pa.schema(
    [("id", pa.int64()), ("shard", pa.int64()), ("slice", pa.int64()), ("deleted_at", pa.string()), ("reason", pa.string())]
)
INDEX_SCHEMA = pa.schema([("id", pa.int64()), ("shard", pa.int64()), ("slice", pa.int64())])
_VERSION_RE = re.compile(r"/(\d{12})\.json$")


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


def _versioned(prefix: str, version: int) -> str:
    return f"{prefix}/{version:012d}.json"


def _versions(keys: list[str]) -> list[int]:
    return sorted(int(m[1]) for k in keys if (m := _VERSION_RE.search(k)))


def index_keys(fingerprint: str, index: pa.Table, shards: list[int], num_slices: int) -> dict[int, tuple[str, ...]]:
    """Checkpoint keys of ``shards`` from the index, whose order within a slice is the
    partition's training order (ingest writes both in plan order; deletions keep order)."""
    ids = index["id"].to_numpy()
    shard_col, slices = index["shard"].to_numpy(), index["slice"].to_numpy()
    keys = {}
    for k in shards:
        in_shard = shard_col == k
        keys[k] = tuple(slice_keys(fingerprint, k, [ids[in_shard & (slices == r)] for r in range(1, num_slices + 1)]))
    return keys


@dataclass
class DeletePlan:
    """A deletion read and verified, ready to commit (nothing written yet)."""

    ids: np.ndarray  # live ids to delete, sorted
    rows: pa.Table  # their index rows: id, shard, slice
    tables: dict[tuple[int, int], pa.Table]  # the affected partitions as committed (verified)
    tombstones: pa.Table  # the committed tombstones (verified)
    parent: int  # the state version it was planned against
    pixels: dict[tuple[int, int], Pixels | None] = field(default_factory=dict)  # their decoded rows, if stored


@dataclass
class SweepReport:
    data_objects: int = 0
    checkpoints: int = 0
    leftovers: int = 0
    finished: list[str] = field(default_factory=list)  # interrupted transactions completed
    pixels_rebuilt: int = 0  # pixels objects the state names that were missing and were written again


class RunStore:
    """The files of one SISA run under a store URI."""

    def __init__(self, config: StoreConfig | ObjectStore) -> None:
        self.objects = config if isinstance(config, ObjectStore) else ObjectStore(config)
        self.checkpoints = CheckpointStore(self.objects)
        # approximately unlearned shard models served until exactness is restored
        self.overlays = CheckpointStore(self.objects, prefix="approx")
        self._manifest: dict[str, Any] | None = None
        self._state: RunState | None = None
        self._tables: dict[str, pa.Table] = {}  # sha256 -> the index or tombstones it read

    def __reduce__(self):
        return (RunStore, (self.objects.config,))

    @property
    def uri(self) -> str:
        return self.objects.config.uri

    # -- run manifest ----------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether a run manifest is here (it may still be invalid: see :meth:`manifest`)."""
        return self.objects.exists(MANIFEST)

    def initialised(self) -> bool:
        """Whether a run is here, or an interrupted ingest that :meth:`recover` will finish."""
        return self.exists() or any(True for _ in self.objects.list(JOURNAL))

    def check_empty(self) -> None:
        """Raise unless the store holds nothing but (possibly) a lease: ingesting is safe.

        Raises:
            StoreError: the store holds objects but no run manifest (see :meth:`manifest`).
        """
        problem = self._not_a_run()
        if not isinstance(problem, StoreNotFoundError):
            raise problem

    def _not_a_run(self) -> StoreError:
        """The error for a store without a manifest: empty, or data without a manifest."""
        present = [k for k in self.objects.list("") if not k.startswith((LEASE_PREFIX, JOURNAL))]
        if not present:
            return StoreNotFoundError(f"no raysisa run at {self.uri} (missing {MANIFEST}); create one with `raysisa train`")
        return StoreError(
            f"store {self.uri} holds {len(present)} object(s) (e.g. {present[0]}) but no valid {MANIFEST}: it is not a "
            f"raysisa run, or its manifest was removed. raysisa refuses to use it or to ingest over it (that could bring "
            f"deleted samples back); restore {MANIFEST}, or use an empty store"
        )

    def manifest(self) -> dict[str, Any]:
        """The validated run manifest.

        Raises:
            StoreNotFoundError: the store is empty.
            StoreError: the manifest is missing while data is present, or is not a valid
                manifest of this raysisa's format.
        """
        if self._manifest is None:
            try:
                raw = self.objects.get_bytes(MANIFEST)
            except StoreNotFoundError:
                raise self._not_a_run() from None
            manifest = _check_manifest(raw, self.objects.uri(MANIFEST))
            try:
                RunSpec.from_dict(manifest["spec"])
                DatasetInfo.from_dict(manifest["info"])
            except (ConfigError, TypeError, ValueError) as exc:
                raise StoreError(f"{self.objects.uri(MANIFEST)} is not a valid run manifest: {exc}") from None
            self._manifest = manifest
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

    # -- committed state -------------------------------------------------------------------
    def forget_cache(self) -> None:
        """Drop the cached manifest and state: the next read sees the store as it is now."""
        self._manifest = None
        self._state = None

    def latest_version(self) -> int:
        """The highest committed version (0: nothing committed)."""
        versions = _versions(self.objects.list(COMMITS))
        return versions[-1] if versions else 0

    def read_state(self, version: int) -> RunState:
        key = _versioned(COMMITS, version)
        return RunState.from_dict(self.objects.get_json(key), self.objects.uri(key))

    def refresh(self) -> RunState:
        """Read the latest committed state (and the manifest) from the store."""
        self.manifest()
        version = self.latest_version()
        if version == 0:
            raise StoreError(
                f"the run at {self.uri} has a manifest but no committed data: its ingest was interrupted. "
                f"Finish it with `raysisa train --store {self.uri}`"
            )
        if self._state is None or self._state.version != version:
            self._state = self.read_state(version)
        return self._state

    def use_version(self, version: int) -> RunState:
        """Work with committed ``version`` (one read, none if it is the current one)."""
        if self._state is None or self._state.version != version:
            self.manifest()
            self._state = self.read_state(version)
        return self._state

    def state(self) -> RunState:
        """The committed state this object works with (read once; see :meth:`refresh`)."""
        return self._state if self._state is not None else self.refresh()

    # -- verified reads --------------------------------------------------------------------
    def _read(self, pick: Callable[[RunState], ObjectRef]) -> bytes:
        """Bytes of the object ``pick`` names in the current state, sha256-verified. If a
        newer commit swept it away meanwhile, the newer state's object is read instead."""
        ref = pick(self.state())
        try:
            data = self.objects.get_bytes(ref.key)
        except StoreNotFoundError:
            newer = pick(self.refresh())
            if newer == ref:
                raise StoreError(
                    f"{self.objects.uri(ref.key)} is missing, but commit {self.state().version} of the run needs it: "
                    "the store was modified by something other than raysisa"
                ) from None
            return self._read(pick)
        if len(data) != ref.size or _sha256(data) != ref.sha256:
            raise StoreError(
                f"{self.objects.uri(ref.key)} is corrupt: {len(data)} bytes whose sha256 does not match commit "
                f"{self.state().version} ({ref.size} bytes expected); nothing was changed"
            )
        return data

    def read_partition_bytes(self, shard: int, slice_: int) -> bytes:
        self._check_partition(shard, slice_)
        return self._read(lambda s: s.partitions[(shard, slice_)])

    def read_partition(self, shard: int, slice_: int, columns: list[str] | None = None) -> pa.Table:
        table = parquet_table(self.read_partition_bytes(shard, slice_), f"shard {shard} slice {slice_}")
        return table.select(columns) if columns else table

    def _check_partition(self, shard: int, slice_: int) -> None:
        if (shard, slice_) not in self.state().partitions:
            raise StoreError(f"the run at {self.uri} has no shard {shard} slice {slice_}")

    def slice_ids(self, shard: int) -> list[np.ndarray]:
        """The ids in each slice 1..R of ``shard``, in training order (read from the partitions)."""
        slices = self.spec.sharding.num_slices
        return [self.read_partition(shard, r, ["id"])["id"].to_numpy() for r in range(1, slices + 1)]

    def read_test(self) -> pa.Table:
        return parquet_table(self._read(lambda s: s.test), "the test split")

    def read_pixels(self, shard: int, slice_: int) -> Pixels:
        """The decoded rows of shard ``shard`` slice ``slice_``: its stored pixels object if
        that is present, intact and decoded from the committed partition, else the Parquet
        decoded now (and a warning)."""
        self._check_partition(shard, slice_)
        stored = self._partition_pixels(shard, slice_)
        if stored is not None:
            return stored
        return Pixels.decode(self.read_partition(shard, slice_), self.info, self.state().partitions[(shard, slice_)].sha256)

    def read_test_pixels(self) -> Pixels:
        """The decoded test split (as :meth:`read_pixels`)."""
        stored = self._stored_pixels(lambda s: s.test_pixels, lambda s: s.test)
        return stored if stored is not None else Pixels.decode(self.read_test(), self.info, self.state().test.sha256)

    def _partition_pixels(self, shard: int, slice_: int) -> Pixels | None:
        """The stored pixels object of shard ``shard`` slice ``slice_``, if it can be trusted."""
        at = (shard, slice_)
        return self._stored_pixels(lambda s: s.pixels.get(at), lambda s: s.partitions[at])

    def _stored_pixels(
        self, pick: Callable[[RunState], ObjectRef | None], source: Callable[[RunState], ObjectRef]
    ) -> Pixels | None:
        """The pixels object ``pick`` names, verified against the commit and against the
        partition ``source`` names; ``None`` (with a warning) if it cannot be trusted."""
        ref = pick(self.state())
        if ref is None:
            return None  # a run of state format 2: nothing was decoded at ingest
        try:
            pixels = Pixels.from_bytes(self._read(lambda s: pick(s) or ref), self.objects.uri(ref.key))
        except (StoreError, DataError) as exc:
            log.warning("not using pixels object %s (%s); decoding its Parquet instead", ref.key, exc)
            return None
        if pixels.source_sha256 != source(self.state()).sha256 or len(pixels) != source(self.state()).rows:
            log.warning("pixels object %s was decoded from another partition; decoding its Parquet instead", ref.key)
            return None
        return pixels

    def _read_table(self, pick: Callable[[RunState], ObjectRef], what: str) -> pa.Table:
        """A small table of the current state, read once per version (objects are immutable,
        so a table read under its sha256 never changes)."""
        digest = pick(self.state()).sha256
        if digest not in self._tables:
            table = parquet_table(self._read(pick), what)
            digest = pick(self.state()).sha256  # _read may have moved to a newer state
            current = {self.state().index.sha256, self.state().tombstones.sha256}
            self._tables = {d: t for d, t in self._tables.items() if d in current}
            self._tables[digest] = table
        return self._tables[digest]

    def read_index(self) -> pa.Table:
        return self._read_table(lambda s: s.index, "the index")

    def tombstones(self) -> pa.Table:
        return self._read_table(lambda s: s.tombstones, "the tombstones")

    def expected_refs(self) -> dict[int, list[CheckpointRef]]:
        """For every shard, the checkpoints (slices 0..R) its current data calls for."""
        return {k: [CheckpointRef(k, r, key) for r, key in enumerate(keys)] for k, keys in self.state().keys.items()}

    def data_keys(self) -> list[str]:
        """Every data object on the store, current or not (train partitions and test split)."""
        return self.objects.list("data")

    # -- transactions ----------------------------------------------------------------------
    def journals(self) -> list[dict[str, Any]]:
        """Intents of interrupted (or running) transactions, oldest first."""
        return [self.objects.get_json(_versioned(JOURNAL, v)) for v in _versions(self.objects.list(JOURNAL))]

    def _begin(self, txn: dict[str, Any], lease: Lease) -> None:
        lease.check(fresh=False)  # an early stop for a writer that lost its lease; the commit is the fence
        if not self.objects.create_json(_versioned(JOURNAL, txn["version"]), txn):
            existing = self.objects.get_json(_versioned(JOURNAL, txn["version"]))
            if existing.get("id") != txn["id"]:
                raise ConflictError(f"another transaction ({existing.get('kind')}) is already writing version {txn['version']} of {self.uri}")
        crash_point(f"{txn['kind']}.begin")

    def _put(self, txn: dict[str, Any], key: str, data: bytes, rows: int) -> ObjectRef:
        self.objects.put_bytes(key, data)
        crash_point(f"{txn['kind']}.object")
        return ObjectRef.of(key, data, rows)

    def _put_table(self, txn: dict[str, Any], key: str, table: pa.Table, pixels: Pixels) -> tuple[ObjectRef, ObjectRef]:
        """Write a sample table and, beside it, its decoded ``pixels`` (which must hold the
        same rows; they are tied to the table's sha256)."""
        if not pixels.matches(table):
            raise StoreError(f"the pixels for {key} do not hold its rows; nothing was committed")
        ref = self._put(txn, key, parquet_bytes(table), table.num_rows)
        pixels = Pixels(pixels.ids, pixels.labels, pixels.images, ref.sha256)
        return ref, self._put(txn, pixels_key(key), pixels.to_bytes(), len(pixels))

    def _commit(self, state: RunState, lease: Lease) -> None:
        """Publish ``state`` (the fence: lease check, then a conditional create)."""
        lease.check()
        key = _versioned(COMMITS, state.version)
        if not self.objects.create_json(key, state.to_dict()):
            winner = self.read_state(state.version)
            if winner.txn.get("id") != state.txn["id"]:
                raise ConflictError(
                    f"another writer committed version {state.version} of {self.uri} first ({winner.txn.get('kind')}); "
                    "nothing was committed: re-run the command"
                )
        elif self.latest_version() != state.version:
            # a writer that stalled past its lease recreated a version the sweep had pruned:
            # the store has moved on, this commit is shadowed and must not count
            self.objects.delete(key)
            raise ConflictError(f"the run at {self.uri} moved past version {state.version} meanwhile; nothing was committed")
        self._state = state
        crash_point(f"{state.txn['kind']}.committed")

    def _finish(self, txn: dict[str, Any], lease: Lease, before: RunState | None = None) -> SweepReport:
        """The sweep, then the journal goes. Right after a commit (``before``: the state it
        replaced) only the objects the change made stale are deleted, by key; otherwise
        (recovery) the store is listed."""
        report = self.sweep(lease, txn["kind"]) if before is None else self._sweep_change(before, txn["kind"])
        self.objects.delete(_versioned(JOURNAL, txn["version"]))
        crash_point(f"{txn['kind']}.done")
        return report

    def _txn(self, kind: str, version: int, lease: Lease, **intent: Any) -> dict[str, Any]:
        return {
            "id": uuid.uuid4().hex,
            "kind": kind,
            "version": version,
            "parent": version - 1,
            "lease_token": lease.token,
            "started_at": now(),
            **intent,
        }

    # ingest ---------------------------------------------------------------------------------
    def ingest(self, spec: RunSpec, data: SourceData, excluded: np.ndarray, lease: Lease) -> RunState:
        """Create the run: partitions, test split, index, tombstones of excluded ids, then the
        manifest and commit 1. The store must hold no run (and no data).

        Raises:
            InvalidIdsError: an excluded id is not a training sample (nothing written).
        """
        train_ids = data.train["id"].to_numpy()
        unknown = np.setdiff1d(excluded, train_ids)
        if len(unknown):
            raise InvalidIdsError(
                f"{len(unknown)} excluded id(s) are not training samples of {spec.data.source}, e.g. "
                f"{', '.join(map(str, unknown[:5].tolist()))}; nothing was written"
            )
        if self.objects.exists(MANIFEST) or self.latest_version():
            raise ConflictError(f"a run already exists at {self.uri}")
        txn = self._txn("ingest", 1, lease, spec=spec.to_dict(), exclude_ids=[int(i) for i in excluded])
        layout = _IngestLayout.of(spec, data, excluded)  # decodes every image: a bad one raises, nothing written
        self._begin(txn, lease)
        state = self._apply_ingest(txn, data, layout)
        self._commit(state, lease)
        self._finish(txn, lease)
        return state

    def _apply_ingest(self, txn: dict[str, Any], data: SourceData | None = None, layout: _IngestLayout | None = None) -> RunState:
        from raysisa.data.sources import load_source

        spec = RunSpec.from_dict(txn["spec"])
        data = data if data is not None else load_source(spec.data)
        excluded = np.asarray(txn["exclude_ids"], dtype=np.int64)
        layout = layout if layout is not None else _IngestLayout.of(spec, data, excluded)
        version, sharding, plan, live = txn["version"], spec.sharding, layout.plan, layout.live
        shard_col, slice_col = plan.shard[live], plan.slice[live]
        partitions, pixels = {}, {}
        for k in range(sharding.num_shards):
            for r in range(1, sharding.num_slices + 1):
                rows = (shard_col == k) & (slice_col == r)
                table, decoded = layout.ordered.filter(pa.array(rows)), layout.pixels.take(rows)
                partitions[(k, r)], pixels[(k, r)] = self._put_table(txn, partition_key(k, r, version), table, decoded)
        test_ref, test_pixels = self._put_table(txn, f"data/test/part-{version:06d}.parquet", layout.test, layout.test_pixels)
        index = pa.table({"id": plan.ids[live], "shard": shard_col, "slice": slice_col}, schema=INDEX_SCHEMA)
        index_ref = self._put(txn, f"index/assignment-{version:06d}.parquet", parquet_bytes(index), index.num_rows)
        gone = ~live
        tombstones = _tombstones(plan.ids[gone], plan.shard[gone], plan.slice[gone], txn["started_at"], "excluded at training")
        tomb_ref = self._put(txn, f"index/tombstones-{version:06d}.parquet", parquet_bytes(tombstones), tombstones.num_rows)
        manifest = {
            "format_version": FORMAT_VERSION,
            "spec": spec.to_dict(),
            "fingerprint": spec.fingerprint(),
            "info": data.info.to_dict(),
            "created_at": txn["started_at"],
            "num_train": int(data.train.num_rows),
            "num_test": int(data.test.num_rows),
        }
        if not self.objects.create_json(MANIFEST, manifest):
            existing = _check_manifest(self.objects.get_bytes(MANIFEST), self.objects.uri(MANIFEST))
            if existing["fingerprint"] != manifest["fingerprint"]:
                raise ConflictError(f"another run was created at {self.uri} meanwhile")
        self._manifest = None
        crash_point("ingest.manifest")
        return RunState(
            version=version,
            partitions=partitions,
            test=test_ref,
            index=index_ref,
            tombstones=tomb_ref,
            keys=index_keys(spec.fingerprint(), index, list(range(sharding.num_shards)), sharding.num_slices),
            txn=_summary(txn, excluded=int(gone.sum())),
            pixels=pixels,
            test_pixels=test_pixels,
        )

    # deletion -------------------------------------------------------------------------------
    def plan_delete(self, ids: np.ndarray) -> DeletePlan:
        """Read and verify everything deleting the live ``ids`` will read (nothing written)."""
        state = self.state()
        rows = take_ids(self.read_index(), ids)
        affected = sorted(set(zip(rows["shard"].to_pylist(), rows["slice"].to_pylist(), strict=True)))
        tables = {(k, r): self.read_partition(k, r) for k, r in affected}
        pixels = {(k, r): self._partition_pixels(k, r) for k, r in affected}
        return DeletePlan(np.sort(rows["id"].to_numpy()), rows, tables, self.tombstones(), state.version, pixels)

    def commit_delete(self, plan: DeletePlan, reason: str, lease: Lease) -> SweepReport:
        """Delete the planned ids in one transaction (see the module docstring); returns
        what its sweep deleted."""
        state = self.state()
        if state.version != plan.parent:
            raise ConflictError(f"the run at {self.uri} changed since the deletion was planned; plan it again")
        txn = self._txn("delete", state.version + 1, lease, ids=[int(i) for i in plan.ids], reason=reason)
        self._begin(txn, lease)
        self._commit(self._apply_delete(txn, plan.tables, plan.tombstones, plan.pixels), lease)
        telemetry.samples_deleted(telemetry.run_label(self.uri), len(plan.ids))
        return self._finish(txn, lease, before=state)

    def _apply_delete(
        self,
        txn: dict[str, Any],
        tables: dict[tuple[int, int], pa.Table] | None = None,
        tombstones: pa.Table | None = None,
        old_pixels: dict[tuple[int, int], Pixels | None] | None = None,
    ) -> RunState:
        state, version = self.state(), txn["version"]
        ids = np.asarray(txn["ids"], dtype=np.int64)
        index = self.read_index()
        rows = take_ids(index, ids)
        partitions, pixels = dict(state.partitions), dict(state.pixels)
        for k, r in sorted(set(zip(rows["shard"].to_pylist(), rows["slice"].to_pylist(), strict=True))):
            table = tables[(k, r)] if tables and (k, r) in tables else self.read_partition(k, r)
            kept = drop_ids(table, ids)
            if old_pixels is not None and (k, r) in old_pixels:
                old = old_pixels[(k, r)]
            else:
                old = self._partition_pixels(k, r)
            # the same row mask as the Parquet: no image is decoded again
            derived = old.drop(ids, "") if old is not None and old.matches(table) else Pixels.decode(kept, self.info, "")
            partitions[(k, r)], pixels[(k, r)] = self._put_table(txn, partition_key(k, r, version), kept, derived)
        remaining = drop_ids(index, ids)
        index_ref = self._put(txn, f"index/assignment-{version:06d}.parquet", parquet_bytes(remaining), remaining.num_rows)
        new_rows = _tombstones(rows["id"].to_numpy(), rows["shard"].to_numpy(), rows["slice"].to_numpy(), txn["started_at"], txn["reason"])
        tombstones = pa.concat_tables([tombstones if tombstones is not None else self.tombstones(), new_rows])
        tomb_ref = self._put(txn, f"index/tombstones-{version:06d}.parquet", parquet_bytes(tombstones), tombstones.num_rows)
        affected = sorted(set(rows["shard"].to_pylist()))
        keys = {**state.keys, **index_keys(self.fingerprint, remaining, affected, self.spec.sharding.num_slices)}
        summary = _summary(txn, deleted=rows.num_rows)
        return RunState(version, partitions, state.test, index_ref, tomb_ref, keys, summary, pixels, state.test_pixels)

    # recovery and sweeping --------------------------------------------------------------------
    def recover(self, lease: Lease) -> list[str]:
        """Finish every interrupted transaction (see the module docstring); returns what was done."""
        done = []
        for txn in self.journals():
            latest, note = self.latest_version(), ""
            if self._committed(txn, latest):
                what = "finished the sweep of"
            elif txn["kind"] == "delete":
                if txn["parent"] != latest:  # planned against an older state: redo it on the latest
                    self.objects.delete(_versioned(JOURNAL, txn["version"]))
                    txn = {**txn, "version": latest + 1, "parent": latest, "lease_token": lease.token}
                    self._begin(txn, lease)
                self.refresh()
                if len(take_ids(self.read_index(), np.asarray(txn["ids"], dtype=np.int64))):
                    self._commit(self._apply_delete(txn), lease)
                    what = "completed"
                else:
                    what, note = "closed", ": its ids were already deleted"
            elif txn["kind"] == "ingest" and latest == 0:
                self._commit(self._apply_ingest(txn), lease)
                what = "completed"
            else:  # an ingest into a store that meanwhile has a run: obsolete
                what = "discarded"
            self._finish(txn, lease)
            message = f"{what} an interrupted {txn['kind']} (version {txn['version']}, started {txn['started_at']}){note}"
            log.warning("%s at %s", message, self.uri)
            done.append(message)
        return done

    def _committed(self, txn: dict[str, Any], latest: int) -> bool:
        """Whether ``txn``'s own commit exists (not another transaction's of that version)."""
        if txn["version"] > latest:
            return False
        try:
            return self.read_state(txn["version"]).txn.get("id") == txn["id"]
        except StoreNotFoundError:  # pruned: then it is not this journal's (it would have been swept)
            return False

    def _sweep_change(self, before: RunState, kind: str) -> SweepReport:
        """Delete what the commit that replaced ``before`` made stale, without listing: the
        data objects ``before`` named and the current state does not (first: the deleted
        samples' bytes), the commit that falls out of the kept history, then the
        checkpoints whose keys changed."""
        state = self.state()
        stale = sorted(before.referenced() - state.referenced())
        self.objects.delete([*stale, _versioned(COMMITS, state.version - KEEP_COMMITS)] if state.version > KEEP_COMMITS else stale)
        crash_point(f"{kind}.swept")
        current = {ref for refs in self.expected_refs().values() for ref in refs}
        old = [CheckpointRef(k, r, key) for k, keys in before.keys.items() for r, key in enumerate(keys) if keys != state.keys.get(k)]
        doomed = [ref for ref in old if ref not in current]
        self.checkpoints.delete(doomed)
        if stale or doomed:
            log.info("swept %d old data object(s) and %d stale checkpoint key(s) at %s", len(stale), len(doomed), self.uri)
        return SweepReport(len(stale), len(doomed), 0)

    def sweep(self, lease: Lease, kind: str = "sweep") -> SweepReport:
        """Delete what the committed state does not name: old data objects first (the
        deleted samples' bytes), then stale checkpoints, leftovers of interrupted writes and
        old commits. One listing per prefix."""
        lease.check()
        state = self.refresh()
        keep = state.referenced()
        present = self.objects.find("data") + self.objects.find("index")
        stale = [k for k in present if k not in keep]
        self.objects.delete(stale)
        crash_point(f"{kind}.swept")
        rebuilt = self._rebuild_pixels(set(present))
        checkpoints, orphans = self.checkpoints.sweep({ref for refs in self.expected_refs().values() for ref in refs})
        # only local writes use temporary files; the checkpoint sweep above found its own
        leftovers = [k for prefix in ("data", "index", "_log") for k in self.objects.list_temporary(prefix)] if self.objects.local else []
        self.objects.delete(leftovers)
        commits = _versions(self.objects.list(COMMITS))
        self.objects.delete([_versioned(COMMITS, v) for v in commits[:-KEEP_COMMITS]])
        if stale or checkpoints:
            log.info("swept %d old data object(s) and %d stale checkpoint(s) at %s", len(stale), checkpoints, self.uri)
        return SweepReport(len(stale), checkpoints, orphans + len(leftovers), pixels_rebuilt=rebuilt)

    def _rebuild_pixels(self, present: set[str]) -> int:
        """Write again the pixels objects the current state names that are not in
        ``present`` (a listing), decoded from their verified partitions. Decoding is
        deterministic, so the bytes must match the commit's sha256; if this machine's image
        decoder gives other bytes, the object stays missing and readers decode the Parquet."""
        state, rebuilt = self.state(), 0
        wanted = [(ref, lambda at=at: self.read_partition(*at), state.partitions[at]) for at, ref in state.pixels.items()]
        if state.test_pixels is not None:
            wanted.append((state.test_pixels, self.read_test, state.test))
        for ref, table, source in wanted:
            if ref.key in present:
                continue
            data = Pixels.decode(table(), self.info, source.sha256).to_bytes()
            if _sha256(data) != ref.sha256:
                log.warning("could not rebuild %s: decoding gives other bytes than commit %d recorded", ref.key, state.version)
                continue
            self.objects.put_bytes(ref.key, data)
            rebuilt += 1
        if rebuilt:
            log.warning("wrote %d missing pixels object(s) again at %s", rebuilt, self.uri)
        return rebuilt

    # -- listing ---------------------------------------------------------------------------
    def listing(self) -> dict[str, str]:
        """sha256 of every object on the store, by key (for audits and tests)."""
        return {key: _sha256(self.objects.get_bytes(key)) for key in self.objects.list("")}


def partition_key(shard: int, slice_: int, version: int) -> str:
    return f"data/train/shard={shard}/slice={slice_}/part-{version:06d}.parquet"


def pixels_key(table_key: str) -> str:
    """Where the decoded pixels of the sample table at ``table_key`` go (beside it)."""
    return table_key.removesuffix(".parquet") + ".pixels.safetensors"


@dataclass(frozen=True)
class _IngestLayout:
    """What an ingest writes, worked out (and every image decoded) before it writes anything."""

    plan: Any  # raysisa.data.partition.Partition
    live: np.ndarray  # plan rows that are not excluded
    ordered: pa.Table  # the live training rows in plan order
    pixels: Pixels  # ``ordered`` decoded
    test: pa.Table
    test_pixels: Pixels

    @classmethod
    def of(cls, spec: RunSpec, data: SourceData, excluded: np.ndarray) -> _IngestLayout:
        from raysisa.data.partition import plan_partition

        sharding, train_ids = spec.sharding, data.train["id"].to_numpy()
        plan = plan_partition(train_ids, sharding.num_shards, sharding.num_slices, sharding.seed)
        live = ~np.isin(plan.ids, excluded)
        by_id = np.argsort(train_ids)  # rows of the source table in plan order, minus excluded ids
        ordered = data.train.take(pa.array(by_id[np.searchsorted(train_ids[by_id], plan.ids[live])])).cast(SAMPLE_SCHEMA)
        test = data.test.cast(SAMPLE_SCHEMA)
        return cls(plan, live, ordered, Pixels.decode(ordered, data.info, ""), test, Pixels.decode(test, data.info, ""))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tombstones(ids: np.ndarray, shards: np.ndarray, slices: np.ndarray, stamp: str, reason: str) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "shard": pa.array(shards, pa.int64()),
            "slice": pa.array(slices, pa.int64()),
            "deleted_at": pa.array([stamp] * len(ids), pa.string()),
            "reason": pa.array([reason] * len(ids), pa.string()),
        },
        schema=TOMBSTONE_SCHEMA,
    )


def _summary(txn: dict[str, Any], **counts: int) -> dict[str, Any]:
    """What a commit says about its transaction (no ids: those are in the tombstones)."""
    keep = ("id", "kind", "reason", "started_at", "lease_token")
    return {**{k: txn[k] for k in keep if k in txn}, "committed_at": now(), **counts}


def _check_manifest(raw: bytes, where: str) -> dict[str, Any]:
    """Parse and validate ``raysisa.json``."""
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise StoreError(f"{where} is not a valid run manifest (not JSON); the run cannot be opened") from None
    if not isinstance(manifest, dict):
        raise StoreError(f"{where} is not a valid run manifest (a JSON {type(manifest).__name__}, not an object)")
    version = manifest.get("format_version")
    if version == 1:
        raise StoreError(
            f"{where} was written by raysisa 0.1 (store format 1, deletions without transactions); this raysisa "
            f"reads format {FORMAT_VERSION}: train the run again into a new store"
        )
    missing = [k for k in ("spec", "fingerprint", "info") if k not in manifest]
    if version != FORMAT_VERSION or missing:
        problem = f"format_version {version!r}" if version != FORMAT_VERSION else f"missing {', '.join(missing)}"
        raise StoreError(f"{where} is not a valid run manifest ({problem}); the run cannot be opened")
    if not isinstance(manifest["spec"], dict) or not isinstance(manifest["info"], dict) or not isinstance(manifest["fingerprint"], str):
        raise StoreError(f"{where} is not a valid run manifest (spec, info or fingerprint has the wrong type)")
    return manifest
