"""A real Prometheus scrapes raysisa, and its series say what the ledger says.

Two deployments, each end to end:

- **On Ray**: shard actors train a run, the coordinator runs as a detached actor; their
  metrics leave through the Ray node's metrics port (``RAY_METRICS_PORT``, exported every
  second in tests), the submitting process serves its own on ``telemetry.serve``.
- **CLI batch jobs**: ``raysisa train`` and ``raysisa forget --wait exact`` in child
  processes, each pushing to a real Pushgateway when it ends; Prometheus scrapes the
  gateway (``honor_labels``, as the Pushgateway docs require).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections import Counter

import pytest

from raysisa import ClusterConfig, StoreConfig, parse_config, telemetry, train
from raysisa.config import CoordinatorConfig
from raysisa.coordinator import submit, wait
from raysisa.coordinator.actor import start_coordinator, stop_coordinator
from raysisa.coordinator.ledger import Ledger
from raysisa.store import RunStore
from tests.conftest import RAY_METRICS_PORT, TINY
from tests.prometheus import prometheus, pushgateway
from tests.sisa_checks import pick

pytestmark = pytest.mark.ray


def _ledger_counts(store: StoreConfig) -> tuple[Counter, Counter, Counter]:
    """From the ledger: requests applied by decision, made exact (yes/no), shard decisions."""
    ledger = Ledger(RunStore(store).objects)
    applied, exact = Counter(), Counter()
    for rid in ledger.request_ids():
        states = [e["state"] for e in ledger.events(rid)]
        applied.update(telemetry.STATE_OF[s] for s in states if s in telemetry.STATE_OF)
        if "exact" in states:
            exact["yes" if "applied_approximate" in states else "no"] += 1
    decisions = Counter(entry.decision.kind for batch in ledger.batches() for entry in ledger.plan(batch).shards)
    return applied, exact, decisions


def test_prometheus_scrapes_shard_actors_and_the_coordinator_actor(tmp_path, ray_cluster, ray_pool):
    job = parse_config({}, TINY)
    store = StoreConfig(uri=str(tmp_path / "run"))
    report = train(job, store, pool=ray_pool)  # shard actors: training throughput
    run = telemetry.run_label(store.uri)
    server, port = telemetry.serve("127.0.0.1:0")  # this process submits: requests received
    start_coordinator(store, CoordinatorConfig(policy="ohs", rho=0.6, window_seconds=0.2, idle_seconds=0.5, poll_seconds=0.1),
                      ClusterConfig(cpus_per_shard=0.25, max_concurrent=2))
    try:
        light, heavy = pick(store, [(0, 3, 1)]), pick(store, [(1, 1, 0), (2, 1, 3)])
        acks = [submit(store, light, key="light")]
        wait(store, acks[0].request_id, "applied", timeout=180)  # two batches: the light one retrains
        acks.append(submit(store, heavy, key="heavy"))
        assert [wait(store, a.request_id, "exact", timeout=180) for a in acks] == ["exact", "exact"]
        applied, exact, decisions = _ledger_counts(store)
        assert applied == {"exact": 1, "approximate": 1} and decisions["retrain"] and decisions["update"]  # both paths ran

        with prometheus(tmp_path / "prometheus", {"ray": f"127.0.0.1:{RAY_METRICS_PORT}", "driver": f"127.0.0.1:{port}"}) as prom:
            where = f'{{run="{run}"}}'
            prom.eventually(lambda: prom.scalar(f"sum(ray_raysisa_requests_received_total{where})"), 2.0)
            prom.eventually(lambda: prom.by(f"sum by (decision) (ray_raysisa_requests_applied_total{where})", "decision"),
                            {k: float(v) for k, v in applied.items()})
            prom.eventually(lambda: prom.by(f"sum by (made_exact) (ray_raysisa_requests_exact_total{where})", "made_exact"),
                            {k: float(v) for k, v in exact.items()})
            prom.eventually(lambda: prom.by(f'sum by (decision) (ray_raysisa_shard_decisions_total{{run="{run}",policy="ohs"}})',
                                            "decision"), {k: float(v) for k, v in decisions.items()})
            # the backlog as the coordinator last read it: nothing open, no oldest request
            prom.eventually(lambda: prom.by(f"max by (state) (ray_raysisa_requests_open{where})", "state"),
                            {"pending": 0.0, "applied_exact": 0.0, "applied_approximate": 0.0})
            assert prom.scalar(f"max(ray_raysisa_oldest_open_request_age_seconds{where})") == 0.0
            assert prom.scalar(f"time() - max(ray_raysisa_coordinator_heartbeat_timestamp_seconds{where})") < 30
            # latency: every request reached exact once, and was applied once
            assert prom.scalar(f'sum(ray_raysisa_request_seconds_count{{run="{run}",until="exact"}})') == 2.0
            assert prom.scalar(f'sum(ray_raysisa_request_seconds_count{{run="{run}",until="applied"}})') == 2.0
            # training throughput from the shard actors, for every shard
            throughput = prom.by(f"sum by (shard) (ray_raysisa_shard_sample_gradients_total{where}) / "
                                 f"sum by (shard) (ray_raysisa_shard_train_seconds_total{where})", "shard")
            assert sorted(throughput) == ["0", "1", "2"] and min(throughput.values()) > 0
            retrained = prom.scalar(f"sum(ray_raysisa_slices_retrained_total{where})")
            assert retrained and retrained > 0
            assert prom.scalar(f"sum(ray_raysisa_shard_slices_trained_total{where})") == report.slices_trained + retrained
            assert prom.scalar(f"sum(ray_raysisa_samples_deleted_total{where})") == len(light) + len(heavy)
            # the update's cost, by method, and the debt it left is paid
            assert prom.scalar(f'sum(ray_raysisa_unlearning_sample_gradients_total{{run="{run}",work="update"}})') > 0
            assert prom.scalar(f"max(ray_raysisa_shard_debt_updates{where})") == 0.0
            assert prom.scalar('sum(ray_raysisa_store_bytes_total{op="write",object="checkpoint"})') > 0
    finally:
        stop_coordinator(store)
        server.shutdown()


def _raysisa(*argv: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "raysisa", *argv, "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_prometheus_reads_cli_batch_jobs_through_the_pushgateway(tmp_path):
    store = str(tmp_path / "run")
    with pushgateway(tmp_path) as gateway:
        push = ["--metrics-pushgateway", gateway]
        trained = _raysisa("train", "--store", store, "--in-process", "--quiet", *[a for o in TINY for a in ("--set", o)], *push)
        ids = pick(StoreConfig(uri=store), [(0, 3, 1), (1, 1, 0)])
        forget = _raysisa("forget", "--store", store, "--ids", ",".join(map(str, ids)), "--wait", "exact", "--in-process",
                          "--set", "coordinator.idle_seconds=0.2", "--set", "coordinator.window_seconds=0", *push)
        assert forget["status"]["state"] == "exact"
        applied, exact, decisions = _ledger_counts(StoreConfig(uri=store))
        with prometheus(tmp_path / "prometheus", {"pushgateway": gateway.removeprefix("http://")}, honor_labels=("pushgateway",)) as prom:
            run = telemetry.run_label(store)
            train_job = f'{{job="raysisa",command="train",run="{run}"}}'
            forget_job = f'{{job="raysisa",command="forget",run="{run}"}}'
            prom.eventually(lambda: prom.scalar(f"sum(ray_raysisa_shard_slices_trained_total{train_job})"), float(trained["slices_trained"]))
            assert prom.scalar(f"sum(ray_raysisa_shard_sample_gradients_total{train_job})") == trained["sample_grads"]
            throughput = prom.by(f"ray_raysisa_shard_sample_gradients_total{train_job} / "
                                 f"ray_raysisa_shard_train_seconds_total{train_job}", "shard")
            assert sorted(throughput) == ["0", "1", "2"] and min(throughput.values()) > 0
            assert prom.scalar(f"sum(ray_raysisa_requests_received_total{forget_job})") == 1.0
            assert prom.by(f"sum by (decision) (ray_raysisa_requests_applied_total{forget_job})", "decision") == {
                k: float(v) for k, v in applied.items()}
            assert prom.by(f"sum by (made_exact) (ray_raysisa_requests_exact_total{forget_job})", "made_exact") == {
                k: float(v) for k, v in exact.items()}
            assert prom.by(f"sum by (decision) (ray_raysisa_shard_decisions_total{forget_job})", "decision") == {
                k: float(v) for k, v in decisions.items()}
            assert prom.scalar(f"sum(ray_raysisa_samples_deleted_total{forget_job})") == len(ids)
            assert prom.scalar('ray_raysisa_requests_open{job="raysisa",command="forget",state="pending"}') == 0.0
            for command in ("train", "forget"):
                assert prom.scalar(f'ray_raysisa_job_last_success_timestamp_seconds{{command="{command}"}}') > 0


def test_metrics_port_serves_the_registry_and_bad_flags_are_refused(tmp_path, capsys):
    from raysisa.cli import main

    server, port = telemetry.serve("127.0.0.1:0")
    try:
        telemetry.request_received("runs/served")
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, s.labels.get("run")): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("ray_raysisa_requests_received_total", "runs/served")] >= 1
    store = str(tmp_path / "none")
    for flag, value, message in [
        ("--metrics-port", "nine", "expected PORT or HOST:PORT"),
        ("--metrics-port", "70000", "expected PORT or HOST:PORT"),
        ("--metrics-pushgateway", "pushgateway:9091", "expected an http(s):// URL"),
    ]:
        assert main(["train", "--store", store, flag, value]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "none").exists()  # refused before any work
