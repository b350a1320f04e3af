"""What one request costs the object store, counted in the client (raysisa.store.traffic):
S3 HTTP requests against moto, and store operations on a local folder.

The bounds are the ones the engine promises at cluster scale: an exact unlearn costs about
30 requests plus a few per retrained slice and per rewritten partition, the same at 10 and
at 100 shards; it reads the id index and the affected shard's data, each object once, never
the other shards'.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from raysisa import LocalPool, StoreConfig, parse_config, train
from raysisa.sisa.run import SisaRun
from raysisa.store import ObjectStore, RunStore
from raysisa.store.traffic import count_traffic
from tests.conftest import make_bucket
from tests.sisa_checks import copy_objects

pytestmark = pytest.mark.slow

SLICES = 2
FIXED = 30  # lease, recovery check, manifest, commit log, index, journal, commit, sweep, release
PER_SLICE = 4  # read the previous checkpoint (manifest + tensors), write the new one
PER_REWRITE = 2  # a rewritten partition's pixels: read the old object, write the new one


def _recipe(shards: int) -> list[str]:
    return [
        f"data.limit={8 * shards}",  # 8 samples per shard, 4 per slice: the store's size grows with S
        f"sharding.num_shards={shards}",
        f"sharding.num_slices={SLICES}",
        "train.epochs=2",
        "train.batch_size=4",
        "model.width=4",
    ]


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory) -> dict[int, StoreConfig]:
    """Trained runs of 10 and 100 shards on local folders."""
    runs = {}
    for shards in (10, 100):
        store = StoreConfig(uri=str(tmp_path_factory.mktemp(f"s{shards}") / "run"))
        train(parse_config({}, _recipe(shards)), store, pool=LocalPool())
        runs[shards] = store
    return runs


def _copy(source: StoreConfig, target: StoreConfig) -> StoreConfig:
    copy_objects(ObjectStore(source), ObjectStore(target))
    return target


def _last_slice_id(store: StoreConfig, shard: int = 0) -> int:
    return int(RunStore(store).read_partition(shard, SLICES, ["id"])["id"].to_numpy()[0])


def _unlearn_counted(store: StoreConfig, ids: list[int]):
    """One exact unlearn as the CLI runs it: a fresh run object and fresh (cold) workers."""
    with count_traffic() as traffic:
        report = SisaRun(store).unlearn(ids, LocalPool())
    return report, traffic


def _assert_bounds(store: StoreConfig, before, report, traffic) -> None:
    assert report.shards_affected == [0] and report.slices_retrained == 1
    # about 30 requests, plus the retrained slices and the rewritten partition, plus the
    # shard's pixels objects (a cold worker)
    assert traffic.total <= FIXED + PER_SLICE * report.slices_retrained + PER_REWRITE + SLICES, traffic.to_dict()
    reads = Counter(traffic.reads)
    data_reads = {key: n for key, n in reads.items() if key.startswith("data/")}
    assert all(n == 1 for n in data_reads.values()), data_reads  # each partition read once
    after = RunStore(store).refresh()
    shard0 = {ref.key for state in (before, after) for objects in (state.partitions, state.pixels) for (k, _), ref in objects.items() if k == 0}
    assert set(data_reads) <= shard0, set(data_reads) - shard0  # nothing of another shard, not the test split
    # bytes: the affected shard's data (its partitions, and the one rewritten), the id
    # index and tombstones once each, and no checkpoint of another shard
    by_prefix = Counter()
    for key, size in traffic.read_bytes.items():
        by_prefix[key.split("/", 1)[0]] += size
    shard_bytes = sum(ref.size for objects in (before.partitions, before.pixels) for (k, _), ref in objects.items() if k == 0)
    assert by_prefix["data"] <= 2 * shard_bytes, (by_prefix, shard_bytes)
    assert by_prefix["index"] == before.index.size + before.tombstones.size, by_prefix
    assert all(key.startswith("checkpoints/shard=0/") for key in reads if key.startswith("checkpoints/")), reads


@pytest.mark.s3
def test_unlearn_costs_the_same_requests_at_10_and_100_shards_on_s3(local_runs, s3_endpoint):
    totals = {}
    for shards, source in local_runs.items():
        store = _copy(source, StoreConfig(uri=f"{make_bucket(s3_endpoint)}/run", endpoint_url=s3_endpoint))
        before = RunStore(store).refresh()
        report, traffic = _unlearn_counted(store, [_last_slice_id(store)])
        _assert_bounds(store, before, report, traffic)
        totals[shards] = traffic.total
        # the HTTP requests the client sent: no HEAD before each GET or DELETE, one batched
        # DeleteObjects per sweep step, listings of the few prefixes that matter
        assert traffic.requests["HEAD"] <= report.slices_retrained, traffic.to_dict()
        assert traffic.requests["LIST"] <= 9, traffic.to_dict()
    assert totals[10] == totals[100], totals


def test_unlearn_costs_the_same_operations_at_10_and_100_shards_locally(local_runs, tmp_path):
    totals = {}
    for shards, source in local_runs.items():
        store = _copy(source, StoreConfig(uri=str(tmp_path / f"s{shards}")))
        before = RunStore(store).refresh()
        report, traffic = _unlearn_counted(store, [_last_slice_id(store)])
        _assert_bounds(store, before, report, traffic)
        totals[shards] = traffic.total
    assert totals[10] == totals[100], totals


def test_a_warm_worker_reads_only_the_rewritten_partition(local_runs, tmp_path):
    """The second deletion through the same workers reads no unchanged partition again."""
    store = _copy(local_runs[10], StoreConfig(uri=str(tmp_path / "warm")))
    pool = LocalPool()
    run = SisaRun(store)
    ids = RunStore(store).read_partition(0, SLICES, ["id"])["id"].to_numpy()
    run.unlearn([int(ids[0])], pool)
    with count_traffic() as traffic:
        report = run.unlearn([int(ids[1])], pool)
    assert report.slices_retrained == 1
    data_reads = [key for key in traffic.reads if key.startswith("data/")]
    version = RunStore(store).refresh().version
    # the driver reads the partition it rewrites and its pixels; the worker reads only the new pixels
    old, new = f"data/train/shard=0/slice={SLICES}/part-{version - 1:06d}", f"data/train/shard=0/slice={SLICES}/part-{version:06d}"
    assert sorted(data_reads) == sorted([f"{old}.parquet", f"{old}.pixels.safetensors", f"{new}.pixels.safetensors"]), data_reads
    assert np.isin(ids[:2], RunStore(store).read_index()["id"].to_numpy()).sum() == 0


@pytest.mark.s3
def test_a_coordinator_batch_of_ten_requests_over_ten_shards_stays_under_400_requests(local_runs, s3_endpoint):
    from raysisa.config import CoordinatorConfig
    from raysisa.coordinator import client
    from raysisa.coordinator.service import Coordinator

    store = _copy(local_runs[100], StoreConfig(uri=f"{make_bucket(s3_endpoint)}/run", endpoint_url=s3_endpoint))
    ids = [_last_slice_id(store, shard) for shard in range(10)]
    acks = [client.submit(store, [i], key=f"scale-{i}") for i in ids]
    coordinator = Coordinator(store, CoordinatorConfig(policy="prs", window_seconds=0, idle_seconds=None), LocalPool())
    with count_traffic() as traffic:
        assert coordinator.step() == "batch"
    assert traffic.total <= 400, traffic.to_dict()
    assert {client.status(store, a.request_id)["state"] for a in acks} == {"exact"}
    assert not np.isin(ids, RunStore(store).read_index()["id"].to_numpy()).any()
    # each data object read once: the deletion reads the partitions it rewrites and their
    # pixels, each shard's worker its pixels as committed (the rewritten ones under new keys)
    data_reads = Counter(key for key in traffic.reads if key.startswith("data/"))
    assert set(data_reads.values()) == {1} and len(data_reads) == 10 * SLICES + 20, data_reads
