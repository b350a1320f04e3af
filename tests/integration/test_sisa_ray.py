"""SISA on a real local Ray cluster, with a local store and with S3 (moto on 127.0.0.1)."""

import os
import signal
import threading
import time

import pytest

import ray
from raysisa import ClusterConfig, LocalPool, StoreConfig, parse_config, train, unlearn
from raysisa.errors import InvalidIdsError
from raysisa.sisa.actors import RayPool
from raysisa.store import RunStore
from tests.conftest import TINY
from tests.sisa_checks import assert_no_residue, checkpoint_bytes, model_shas, pick

pytestmark = pytest.mark.ray


def _stores(kind, tmp_path, s3_endpoint, s3_bucket):
    if kind == "local":
        return StoreConfig(uri=str(tmp_path / "sisa")), StoreConfig(uri=str(tmp_path / "reference"))
    return (
        StoreConfig(uri=f"{s3_bucket}/runs/sisa", endpoint_url=s3_endpoint),
        StoreConfig(uri=f"{s3_bucket}/runs/reference", endpoint_url=s3_endpoint),
    )


@pytest.mark.parametrize("kind", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_exact_unlearning_in_ray_actors(tmp_path, tiny_job, ray_pool, s3_endpoint, kind, request):
    s3_bucket = request.getfixturevalue("s3_bucket") if kind == "s3" else None
    store, reference = _stores(kind, tmp_path, s3_endpoint, s3_bucket)
    train(tiny_job, store, pool=ray_pool)
    ids = pick(store, [(0, 2, 1), (0, 3, 0), (2, 1, 4)])  # across slices and across shards
    untouched = checkpoint_bytes(store, 1)
    report = unlearn(store, ids, pool=ray_pool)
    assert report.first_slice == {0: 2, 2: 1} and report.slices_retrained == 2 + 3
    assert checkpoint_bytes(store, 1) == untouched

    # the reference trains in this process: bit-identical across process boundaries too
    train(tiny_job, reference, exclude_ids=ids, pool=LocalPool())
    assert model_shas(store) == model_shas(reference)
    assert_no_residue(store, ids)


@pytest.mark.s3
def test_every_deletion_shape_on_s3(tiny_job, ray_pool, s3_endpoint, s3_bucket):
    """Inside one slice, across slices, across shards: one request after another on S3,
    each compared with a from-scratch run that excludes everything deleted so far."""
    from tests.unit.test_sisa_local import CASES

    store = StoreConfig(uri=f"{s3_bucket}/shapes/sisa", endpoint_url=s3_endpoint)
    train(tiny_job, store, pool=ray_pool)
    deleted = []
    for n, case in enumerate(sorted(CASES)):
        ids = [i for i in pick(store, [(k, r, p + 1) for k, r, p in CASES[case]]) if i not in deleted]
        unlearn(store, ids, pool=ray_pool)
        deleted += ids
        reference = StoreConfig(uri=f"{s3_bucket}/shapes/reference-{n}", endpoint_url=s3_endpoint)
        train(tiny_job, reference, exclude_ids=deleted, pool=LocalPool())
        assert model_shas(store) == model_shas(reference), case
    assert_no_residue(store, deleted)


@pytest.mark.s3
def test_parquet_source_read_from_s3(tmp_path, s3_endpoint, s3_bucket):
    import s3fs

    from raysisa.config import DataConfig
    from raysisa.data import load_source
    from tests import fakes

    fakes.write_cifar_like_parquet(tmp_path)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.put(str(tmp_path / "train.parquet"), f"{s3_bucket}/cifar/train.parquet")
    fs.put(str(tmp_path / "test.parquet"), f"{s3_bucket}/cifar/test.parquet")
    config = DataConfig(
        source="parquet", uri=f"{s3_bucket}/cifar", storage_options={"client_kwargs": {"endpoint_url": s3_endpoint}}
    )
    data = load_source(config)
    assert (data.train.num_rows, data.test.num_rows) == (60, 20) and data.info.num_classes == 4


@pytest.mark.s3
def test_bad_input_leaves_an_s3_store_unchanged(tiny_job, ray_pool, s3_endpoint, s3_bucket):
    store = StoreConfig(uri=f"{s3_bucket}/bad-input", endpoint_url=s3_endpoint)
    train(tiny_job, store, pool=ray_pool)
    listing = RunStore(store).listing()
    for ids in ([], [-1], ["x1"], [123_456_789]):
        with pytest.raises(InvalidIdsError):
            unlearn(store, ids, pool=ray_pool)
    assert RunStore(store).listing() == listing
    assert all(k.startswith(("raysisa.json", "_log/commits/", "data/", "index/", "checkpoints/")) for k in listing)


def test_a_killed_shard_actor_resumes_from_its_last_checkpoint(tmp_path, ray_cluster):
    slow = parse_config({}, [*TINY, "data.limit=600", "train.epochs=40", "sharding.num_slices=4", "sharding.num_shards=2"])
    reference = StoreConfig(uri=str(tmp_path / "reference"))
    train(slow, reference, pool=LocalPool())

    store = StoreConfig(uri=str(tmp_path / "killed"))
    pool = RayPool(ClusterConfig(cpus_per_shard=0.25, max_concurrent=2, max_restarts=2), num_shards=2)
    outcome = {}

    def run():
        try:
            outcome["report"] = train(slow, store, pool=pool)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    run_store = RunStore(store)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until shard 0 has finished slice 1, then kill its actor
        if run_store.exists() and any(r.slice == 1 for r in run_store.checkpoints.list(shard=0)):
            break
        time.sleep(0.02)
    done_before_kill = {r.slice for r in run_store.checkpoints.list(shard=0)}
    slot = pool.home[0]  # shard 0 continues on the actor that trained slice 1
    pid_before = ray.get(slot.handle.pid.remote())  # answered while it trains
    os.kill(pid_before, signal.SIGKILL)
    thread.join(timeout=300)
    pid_after = ray.get(slot.handle.pid.remote())
    slots = list(pool.slots)
    pool.close()

    assert "error" not in outcome, outcome.get("error")
    assert done_before_kill >= {0, 1} and 4 not in done_before_kill, "the kill must land mid-training"
    assert pid_after != pid_before and slot in slots and len(slots) == 2  # Ray restarted the actor, not replaced
    # one report per slice; a call retried after the kill reports trained=False only if the
    # dead actor had already written that checkpoint
    assert sorted(s.slice for s in outcome["report"].slices if s.shard == 0) == [0, 1, 2, 3, 4]
    assert model_shas(store) == model_shas(reference)


def test_evaluation_in_the_shard_actors_matches_the_driver(tmp_path, tiny_job, ray_pool):
    from raysisa import evaluate

    store = StoreConfig(uri=str(tmp_path / "eval"))
    train(tiny_job, store, pool=ray_pool)
    local, remote = evaluate(store), evaluate(store, pool=ray_pool)
    assert remote.accuracy == local.accuracy and remote.shard_accuracy == local.shard_accuracy
