"""raysisa.telemetry in this process (prometheus-client): what each part of raysisa counts.

The registry is process-wide, so every check reads a value before and after.
"""

from __future__ import annotations

import logging

import numpy as np

from raysisa import telemetry
from raysisa.cli import main
from raysisa.config import StoreConfig
from raysisa.coordinator.ledger import Ledger
from raysisa.store import ObjectStore


def _value(sample: str, **labels: str) -> float:
    return telemetry.value(sample, **labels) or 0.0


def test_run_labels_drop_credentials_and_query():
    assert telemetry.run_label("s3://key:secret@bucket/runs/x/?endpoint_override=127.0.0.1:9000") == "s3://bucket/runs/x"
    assert telemetry.run_label("/data/runs/x/") == "/data/runs/x"
    assert telemetry.run_label("memory://a/b") == "memory://a/b"


def test_names_follow_rays_export_in_both_paths():
    spec = telemetry.METRICS["raysisa_requests_received"]
    assert spec.series == ("ray_raysisa_requests_received_total",)
    assert telemetry.METRICS["raysisa_request_seconds"].series == (
        "ray_raysisa_request_seconds_bucket", "ray_raysisa_request_seconds_sum", "ray_raysisa_request_seconds_count")
    assert not telemetry._in_ray_worker()  # a pytest process is a driver: prometheus-client
    forbidden = {"request_id", "subject", "sample", "id", "ids", "key"}
    assert all(not forbidden & set(s.labels) for s in telemetry.METRICS.values())


def test_ledger_transitions_are_counted_once_as_events_are_created():
    store = ObjectStore(StoreConfig(uri="memory://telemetry-ledger"))
    ledger = Ledger(store)
    run = ledger.run
    received = _value("ray_raysisa_requests_received_total", run=run)
    ack = ledger.submit(np.array([3, 4]), key="k1")
    ledger.submit(np.array([3, 4]), key="k1")  # the same key again: a no-op, not a new request
    assert _value("ray_raysisa_requests_received_total", run=run) == received + 1

    applied = _value("ray_raysisa_requests_applied_total", run=run, decision="approximate")
    made = _value("ray_raysisa_requests_exact_total", run=run, made_exact="yes")
    waited = _value("ray_raysisa_request_seconds_count", run=run, until="exact")
    for _ in range(2):  # a replayed batch appends the same transitions again
        view = ledger.view()
        ledger.append(view, [(ack.request_id, "applied_approximate", None)])
        ledger.commit(view)
    assert _value("ray_raysisa_requests_applied_total", run=run, decision="approximate") == applied + 1
    view = ledger.view()
    ledger.append(view, [(ack.request_id, "exact", None)])
    ledger.commit(view)
    assert _value("ray_raysisa_requests_exact_total", run=run, made_exact="yes") == made + 1
    assert _value("ray_raysisa_request_seconds_count", run=run, until="exact") == waited + 1


def test_store_operations_count_bytes_by_kind_of_object(tmp_path):
    store = ObjectStore(StoreConfig(uri=str(tmp_path)))
    before = _value("ray_raysisa_store_bytes_total", op="write", object="checkpoint")
    reads = _value("ray_raysisa_store_seconds_count", op="read", object="ledger")
    store.put_bytes("checkpoints/shard=0/slice=1/k.safetensors", b"x" * 100)
    store.create_bytes("ledger/events/r/1.json", b"{}")
    store.get_bytes("ledger/events/r/1.json")
    assert _value("ray_raysisa_store_bytes_total", op="write", object="checkpoint") == before + 100
    assert _value("ray_raysisa_store_seconds_count", op="read", object="ledger") == reads + 1


def test_a_cli_error_is_counted_by_class(tmp_path, capsys):
    before = _value("ray_raysisa_errors_total", component="cli", kind="StoreNotFoundError")
    assert main(["inspect", "--store", str(tmp_path / "nothing")]) == 2
    assert "error:" in capsys.readouterr().err
    assert _value("ray_raysisa_errors_total", component="cli", kind="StoreNotFoundError") == before + 1
    assert _value("ray_raysisa_job_duration_seconds", command="inspect", outcome="failure") > 0


def test_a_metric_that_cannot_be_recorded_is_logged_not_raised(caplog):
    with caplog.at_level(logging.WARNING, logger="raysisa.telemetry"):
        telemetry._record("raysisa_requests_received", 1, {})  # its run label is missing
    assert "could not record metric raysisa_requests_received" in caplog.text
