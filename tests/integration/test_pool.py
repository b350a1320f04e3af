"""The Ray shard pool: a cluster with fewer CPUs than the shards ask for, the actors'
names, and shard actors' log records in the command's log (text and JSON)."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ray
from raysisa import ClusterConfig, LocalPool, StoreConfig, parse_config, train, unlearn
from raysisa.sisa.actors import RayPool
from raysisa.telemetry import run_label
from tests.conftest import TINY
from tests.sisa_checks import assert_no_residue, model_shas, pick

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.ray
def test_fewer_cpus_than_shards_ask_for_trains_and_unlearns_exactly(tmp_path, tiny_job, ray_cluster):
    """3 shards x 2 CPUs on the session's 4-CPU cluster: at most 2 shard actors fit, so the
    pool must train the shards a few at a time on those (the old one-actor-per-shard pool
    waited for all three and deadlocked), and the result is still bit-exact."""
    store, reference = StoreConfig(uri=str(tmp_path / "sisa")), StoreConfig(uri=str(tmp_path / "reference"))
    pool = RayPool(ClusterConfig(cpus_per_shard=2), num_shards=3)
    try:
        train(tiny_job, store, pool=pool)
        ids = pick(store, [(0, 2, 1), (1, 1, 0), (2, 3, 4)])
        report = unlearn(store, ids, pool=pool)
        assert report.first_slice == {0: 2, 1: 1, 2: 3} and report.slices_retrained == 2 + 3 + 1
        # one actor requested per shard (the demand an autoscaler sees), not all of them placed
        assert len(pool.slots) == 3 and any(slot.up is not None for slot in pool.slots)
        names = [n for n in ray.util.list_named_actors() if n.startswith(f"raysisa {run_label(store.uri)} slot ")]
        assert len(names) == 3, ray.util.list_named_actors()
        assert set(pool.shard_pids()) == {0, 1, 2}
    finally:
        pool.close()
    train(tiny_job, reference, exclude_ids=ids, pool=LocalPool())
    assert model_shas(store) == model_shas(reference)
    assert_no_residue(store, ids)


def test_more_torch_threads_than_reserved_cpus_warns(caplog):
    pool = RayPool(ClusterConfig(cpus_per_shard=1, max_concurrent=3), num_shards=5)
    with caplog.at_level(logging.WARNING, logger="raysisa.sisa.actors"):
        assert pool.concurrency(1) == 3 and not caplog.records
        assert pool.concurrency(4) == 3
    assert "set cluster.cpus_per_shard=4" in caplog.text
    assert RayPool(ClusterConfig(), num_shards=5).concurrency(1) == 5  # default: an actor per shard
    assert RayPool(ClusterConfig(), num_shards=5).cpus == 1  # the default threads; not the free CPUs spread over the shards


def _cli(log: Path, *argv: str) -> subprocess.Popen:
    """``raysisa ARGV`` started in a new process, on a private local Ray cluster it starts
    itself; its stderr goes to ``log`` (a file: two children never block on a full pipe)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    with open(log, "w") as err:
        return subprocess.Popen([sys.executable, "-m", "raysisa.cli", *argv], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=err, text=True)


def _finish(process: subprocess.Popen, log: Path) -> tuple[int, str]:
    try:
        process.wait(timeout=600)
    finally:
        process.kill()  # a no-op once it has exited
    return process.returncode, log.read_text()


@pytest.mark.ray
def test_shard_actor_logs_reach_the_command_log_as_text_and_json(tmp_path):
    sets = [arg for item in [*TINY, "sharding.num_slices=2", "train.epochs=4"] for arg in ("--set", item)]
    # the two commands run at the same time, each with its own private cluster
    json_store, text_store = str(tmp_path / "logged"), str(tmp_path / "text")
    logs = tmp_path / "json.log", tmp_path / "text.log"
    as_json = _cli(logs[0], "-v", "--log-format", "json", "train", "--store", json_store, *sets, "--quiet")
    as_text = _cli(logs[1], "-v", "train", "--store", text_store, *sets, "--quiet")
    (code, err), (text_code, text_err) = _finish(as_json, logs[0]), _finish(as_text, logs[1])

    assert code == 0, err[-3000:]
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]  # every line is one JSON object
    shard_lines = [line for line in lines if line.get("logger") == "raysisa.sisa.shard"]
    assert shard_lines, err[-3000:]
    for line in shard_lines:  # emitted in a shard actor, with the CLI's keys, the run and the shard
        assert line["level"] == "INFO" and line["run"] == json_store and "trained" in line["message"]
        assert line["message"].startswith(f"shard {line['shard']} slice ")
        assert line["actor_name"].startswith(f"raysisa {json_store} slot ") and line["task_name"].startswith(f"{json_store} shard ")
        assert line["task_func_name"].endswith("ShardSlot.run") and line["job_id"]

    assert text_code == 0, text_err[-3000:]
    # text: Ray's prefix names the actor (its repr), the record names the run and the shard
    assert f"(ShardSlot(run={text_store}, slot=" in text_err, text_err[-3000:]
    assert f"raysisa.sisa.shard [run={text_store} shard=0]: shard 0 slice 1 trained" in text_err, text_err[-3000:]
    assert "\x1b[" not in text_err  # no colour codes in a log that is not a terminal


@pytest.mark.ray
def test_the_pool_made_for_a_run_reserves_the_recipe_threads(ray_cluster):
    """What `raysisa train/unlearn/compare/process` build: a pool whose shard actors reserve
    the run's `train.threads` CPUs (a two-thread recipe would otherwise run two threads on
    one reserved core), unless the cluster section says otherwise."""
    from raysisa.api import _pool

    spec = parse_config({}, ["train.threads=2"]).spec
    with _pool(None, None, spec) as pool:
        assert pool.cpus == 2 and not pool.slots
    with _pool(None, ClusterConfig(cpus_per_shard=0.25), spec) as pool:
        assert pool.cpus == 0.25
