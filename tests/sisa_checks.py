"""Assertions shared by the in-process and the Ray SISA tests."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq

from raysisa.data.pixels import Pixels

from raysisa.config import StoreConfig
from raysisa.sisa.run import SisaRun
from raysisa.store import ObjectStore, RunStore


def copy_objects(source: ObjectStore, target: ObjectStore) -> None:
    """Copy every object of a store to another (concurrent PUTs on S3)."""
    if target.local:
        for key in source.list(""):
            target.put_bytes(key, source.get_bytes(key))
    else:
        target.fs.pipe({target.path(key): source.get_bytes(key) for key in source.list("")})


def model_shas(store: StoreConfig) -> list[str]:
    return [s["model_sha256"] for s in SisaRun(store).inspect()["shards"]]


def slice_ids(store: StoreConfig, shard: int, slice_: int) -> np.ndarray:
    return RunStore(store).read_partition(shard, slice_, ["id"])["id"].to_numpy()


def pick(store: StoreConfig, where: list[tuple[int, int, int]]) -> list[int]:
    """ids by (shard, slice, position within the slice)."""
    return [int(slice_ids(store, k, r)[i]) for k, r, i in where]


def checkpoint_bytes(store: StoreConfig, shard: int) -> dict[str, bytes]:
    objects = RunStore(store).objects
    return {k: objects.get_bytes(k) for k in objects.list(f"checkpoints/shard={shard}")}


def assert_no_residue(store: StoreConfig, deleted: list[int]) -> None:
    """Nothing on the store holds a deleted sample or a model trained on one.

    Every Parquet and pixels object (current or not, data or index; only the tombstones
    list deleted ids, by design) is free of the ids; the data and index objects are exactly those of the
    latest commit (no old versions); no checkpoint's lineage and no approximate overlay
    includes an id; no journal, temporary file or orphan is left; the index no longer
    lists them and the tombstones do.
    """
    run = RunStore(store)
    state = run.refresh()
    deleted_set = set(deleted)
    keys = run.objects.list("")
    for key in keys:
        if key.endswith(".parquet") and not key.startswith("index/tombstones"):
            table = pq.read_table(io.BytesIO(run.objects.get_bytes(key)))
            if "id" in table.column_names:
                assert not deleted_set & set(table["id"].to_pylist()), f"{key} still holds deleted ids"
        if key.endswith(".pixels.safetensors"):  # decoded images: their ids say whose pixels they are
            pixels = Pixels.from_bytes(run.objects.get_bytes(key), key)
            assert not deleted_set & set(pixels.ids.tolist()), f"{key} still holds deleted samples' pixels"
    current = state.referenced()
    stored = {k for k in keys if k.startswith(("data/", "index/"))}
    assert stored == current, f"objects of old versions remain: {sorted(stored - current)}"
    for ref in run.checkpoints.list():
        lineage = set(run.checkpoints.manifest(ref)["lineage"]["ids"])
        assert not deleted_set & lineage, f"checkpoint {ref.short()} was trained on deleted ids"
    for ref in run.overlays.list():
        assert not deleted_set & set(run.overlays.manifest(ref)["ids"]), f"overlay {ref.short()} still serves deleted ids"
    assert not run.objects.list("_log/journal"), "an interrupted transaction was not finished"
    assert not run.objects.list_temporary("")
    assert not run.checkpoints.orphans()
    assert set(run.read_index()["id"].to_pylist()).isdisjoint(deleted_set)
    assert deleted_set <= set(run.tombstones()["id"].to_pylist())
