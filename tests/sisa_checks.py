"""Assertions shared by the in-process and the Ray SISA tests."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq

from raysisa.config import StoreConfig
from raysisa.sisa.run import SisaRun
from raysisa.store import RunStore


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
    """No data object holds a deleted id; no checkpoint's lineage includes one."""
    run = RunStore(store)
    deleted_set = set(deleted)
    for key in run.data_keys():
        table = pq.read_table(io.BytesIO(run.objects.get_bytes(key)))
        assert not deleted_set & set(table["id"].to_pylist()), f"{key} still holds deleted ids"
    for ref in run.checkpoints.list():
        lineage = set(run.checkpoints.manifest(ref)["lineage"]["ids"])
        assert not deleted_set & lineage, f"checkpoint {ref.short()} was trained on deleted ids"
    assert not run.objects.list_temporary("")
    assert not run.checkpoints.orphans()
    assert set(run.read_index()["id"].to_pylist()).isdisjoint(deleted_set)
    assert deleted_set <= set(run.tombstones()["id"].to_pylist())
