"""The coordinator as a detached Ray actor: end to end, crashes, and load."""

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import ray

from raysisa import ClusterConfig, LocalPool, StoreConfig, parse_config, train
from raysisa.config import CoordinatorConfig
from raysisa.coordinator import requests, status, submit, wait
from raysisa.coordinator.actor import get_coordinator, start_coordinator, stop_coordinator
from raysisa.coordinator.ledger import Ledger
from raysisa.store import RunStore
from tests.conftest import TINY
from tests.sisa_checks import assert_no_residue, model_shas, pick

pytestmark = pytest.mark.ray
CLUSTER = ClusterConfig(cpus_per_shard=0.25, max_concurrent=2)


@pytest.fixture
def coordinated(tmp_path, ray_cluster):
    """Start a run's coordinator actor; stop it afterwards whatever happens."""
    stores = []

    def start(store, config):
        stores.append(store)
        return start_coordinator(store, config, CLUSTER)

    yield start
    for store in stores:
        stop_coordinator(store)


def _train(tmp_path, name, overrides=TINY, exclude=None):
    job = parse_config({}, overrides)
    store = StoreConfig(uri=str(tmp_path / name))
    train(job, store, exclude_ids=exclude, pool=LocalPool())
    return job, store


def test_requests_flow_through_the_detached_actor(tmp_path, coordinated):
    job, store = _train(tmp_path, "flow")
    handle = coordinated(store, CoordinatorConfig(policy="ohs", window_seconds=0.2, idle_seconds=0.5, poll_seconds=0.1))
    assert get_coordinator(store) is not None
    light, heavy = pick(store, [(0, 3, 1)]), pick(store, [(1, 1, 0), (2, 1, 3)])
    acks = [submit(store, light, key="light"), submit(store, heavy, key="heavy")]
    assert {wait(store, a.request_id, "applied", timeout=120) for a in acks} <= {"applied_exact", "applied_approximate", "exact"}
    assert [wait(store, a.request_id, "exact", timeout=120) for a in acks] == ["exact", "exact"]
    summary = ray.get(handle.summary.remote())
    assert summary["requests"] == {"exact": 2} and summary["approximate_shards"] == [] and not summary["errors"]
    _, reference = _train(tmp_path, "reference", exclude=light + heavy)
    assert model_shas(store) == model_shas(reference)
    assert_no_residue(store, light + heavy)


SLOW = ["sharding.num_shards=2", "sharding.num_slices=2", "train.epochs=30", "model.width=32", "data.limit=900"]


def _wait_for_plan(store, timeout=120):
    ledger = Ledger(RunStore(store).objects)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ledger.unfinished_plans():
            return
        time.sleep(0.02)
    raise AssertionError("no batch started")


def _assert_applied_once(store, acks, everything, reference):
    ledger = Ledger(RunStore(store).objects)
    for ack in acks:
        assert wait(store, ack.request_id, "exact", timeout=300) == "exact"
        assert len([e for e in ledger.events(ack.request_id) if e["state"].startswith("applied")]) == 1
    assert not ledger.unfinished_plans()
    assert sorted(RunStore(store).tombstones()["id"].to_pylist()) == sorted(everything)
    assert model_shas(store) == model_shas(reference)
    assert_no_residue(store, everything)


def test_killing_the_coordinator_mid_batch_loses_nothing(tmp_path, coordinated):
    job, store = _train(tmp_path, "killed", SLOW)
    handle = coordinated(store, CoordinatorConfig(policy="prs", window_seconds=0.1, poll_seconds=0.1, idle_seconds=None))
    pid = ray.get(handle.pid.remote())
    ids = [pick(store, [(0, 1, 0)]), pick(store, [(1, 1, 2), (1, 2, 0)])]
    acks = [submit(store, i) for i in ids]
    _wait_for_plan(store)
    os.kill(pid, signal.SIGKILL)  # mid-batch: the plan is logged, the retraining under way
    everything = [i for group in ids for i in group]
    _, reference = _train(tmp_path, "reference", SLOW, exclude=everything)
    _assert_applied_once(store, acks, everything, reference)
    assert ray.get(get_coordinator(store).pid.remote()) != pid  # Ray restarted it


def test_killing_a_shard_actor_mid_batch_loses_nothing(tmp_path, coordinated):
    job, store = _train(tmp_path, "shard-killed", SLOW)
    handle = coordinated(store, CoordinatorConfig(policy="prs", window_seconds=0.1, poll_seconds=0.1, idle_seconds=None))
    warm = submit(store, pick(store, [(0, 2, 5), (1, 2, 5)]))  # starts both shard actors
    wait(store, warm.request_id, "exact", timeout=300)
    pids = ray.get(handle.shard_pids.remote())
    ids = [pick(store, [(0, 1, 3)]), pick(store, [(1, 1, 4)])]
    acks = [submit(store, i) for i in ids]
    _wait_for_plan(store)
    time.sleep(0.3)
    os.kill(pids[0], signal.SIGKILL)
    everything = Ledger(RunStore(store).objects).request(warm.request_id).ids + [i for g in ids for i in g]
    _, reference = _train(tmp_path, "reference", SLOW, exclude=everything)
    _assert_applied_once(store, acks, everything, reference)
    assert ray.get(handle.shard_pids.remote())[0] != pids[0]


def test_a_thousand_concurrent_requests_are_acknowledged_and_batched(tmp_path, coordinated):
    job, store = _train(tmp_path, "load", ["sharding.num_shards=3", "sharding.num_slices=2", "train.epochs=4", "model.width=8"])
    live = RunStore(store).read_index()["id"].to_numpy()[:1000].tolist()
    coordinated(store, CoordinatorConfig(policy="hs", window_seconds=1.0, poll_seconds=0.2, idle_seconds=0.5))
    with ThreadPoolExecutor(max_workers=16) as pool:
        acks = list(pool.map(lambda i: submit(store, [i], key=f"load-{i}"), live))
    assert len({a.request_id for a in acks}) == 1000 and all(a.state == "pending" for a in acks)
    deadline = time.time() + 600
    while time.time() < deadline:
        done = [r for r in requests(store) if r["state"] == "exact"]
        if len(done) == 1000:
            break
        time.sleep(1)
    assert len(done) == 1000
    batches = Ledger(RunStore(store).objects).batches()
    assert 1 <= len(batches) <= 50, len(batches)  # batched, not one by one
    receipt = status(store, acks[0].request_id)["receipt"]
    assert receipt["ids"] == [live[0]] and receipt["batch_id"] in batches
