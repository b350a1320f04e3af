"""Operational metrics for Prometheus, declared in one place (not the evaluation metrics
of :mod:`raysisa.evaluation`).

Every series raysisa exports is a :class:`MetricSpec` in :data:`METRICS`; code records
through the functions at the bottom of this module (:func:`request_received`,
:func:`shard_trained`...), never through a client library, so names, labels and buckets
cannot drift between processes or from the Grafana dashboard and alert rules in ``k8s/``.

Where the numbers go depends on the process that records them:

- **Ray worker processes** (shard actors, the coordinator actor, Tune trials):
  :mod:`ray.util.metrics`, exported by each node's metrics agent on Ray's metrics port,
  the port KubeRay's PodMonitor scrapes. Ray prefixes every name with ``ray_``, adds
  ``_total`` to counters, and adds ``WorkerId``/``SessionName`` labels (an actor restart
  starts a new series: dashboards sum by the labels below).
- **Any other process** (the CLI, a Python program calling raysisa in-process): the
  prometheus-client registry :data:`REGISTRY`, served over HTTP by :func:`serve`
  (``--metrics-port``, for long-running commands) or pushed to a Pushgateway when the
  command ends by :func:`push` (``--metrics-pushgateway``, the convention for batch jobs).

The names are declared with Ray's ``ray_`` prefix, so a series is called the same in both
paths and one dashboard reads both. Labels are low-cardinality (run, shard, policy,
decision, state, work, method, op, object, component, kind, command, outcome): never a sample, subject or
request id. Counts that must hold for an audit come from the ledger; these mirror it (a
request transition is counted when its ledger event is created, once).

Two things Ray does differently: its histograms approximate ``_sum`` from the bucket bounds
(buckets, and so percentiles, are exact), and it drops a gauge a worker has not set again
within about two export intervals. So what a worker measures now and then is a counter
(throughput is ``rate(sample-gradients) / rate(train seconds)``), and the coordinator
re-sets its gauges on every look at the ledger.

Example:
    >>> request_received("runs/demo")
    >>> value("ray_raysisa_requests_received_total", run="runs/demo") >= 1
    True
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as _PromCounter
from prometheus_client import Gauge as _PromGauge
from prometheus_client import Histogram as _PromHistogram

__all__ = ["METRICS", "MetricSpec", "REGISTRY", "exported_names", "push", "run_label", "serve", "value"]

log = logging.getLogger(__name__)

Kind = Literal["counter", "gauge", "histogram"]

PREFIX = "ray_"  # what Ray puts before every application metric; used in both paths
LATENCY_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600, 7 * 24 * 3600)
IO_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name without Ray's prefix, kind, help text, labels, buckets."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()

    @property
    def family(self) -> str:
        """The metric family as exported (``ray_`` + name)."""
        return PREFIX + self.name

    @property
    def series(self) -> tuple[str, ...]:
        """The sample names Prometheus stores for it."""
        if self.kind == "counter":
            return (self.family + "_total",)
        if self.kind == "histogram":
            return tuple(self.family + suffix for suffix in ("_bucket", "_sum", "_count"))
        return (self.family,)


def _m(name: str, kind: Kind, help_: str, *labels: str, buckets: tuple[float, ...] = ()) -> MetricSpec:
    return MetricSpec(name, kind, help_, labels, buckets)


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        # requests, mirroring the ledger's transitions
        _m("raysisa_requests_received", "counter", "Deletion requests logged (re-submissions of a key not counted).", "run"),
        _m("raysisa_requests_applied", "counter",
           "Requests applied by a batch: decision=exact (retrained) or approximate (updated).", "run", "decision"),
        _m("raysisa_requests_exact", "counter",
           "Requests that became exact: made_exact=yes after an approximate update, no after exact retraining.",
           "run", "made_exact"),
        _m("raysisa_requests_rejected", "counter", "Requests a batch rejected.", "run"),
        _m("raysisa_request_seconds", "histogram", "Seconds from a request's logging to until=applied or until=exact.",
           "run", "until", buckets=LATENCY_BUCKETS),
        _m("raysisa_requests_open", "gauge",
           "Requests not yet exact, by state (pending, applied_exact, applied_approximate), as the coordinator last read the ledger.",
           "run", "state"),
        _m("raysisa_oldest_open_request_age_seconds", "gauge",
           "Age of the oldest request not yet exact (0 when none), as the coordinator last read the ledger.", "run"),
        _m("raysisa_coordinator_heartbeat_timestamp_seconds", "gauge",
           "Unix time of the coordinator's last look at the ledger.", "run"),
        _m("raysisa_exact_deadline_seconds", "gauge",
           "The coordinator's coordinator.exact_deadline_seconds: how long a request may stay not exact.", "run"),
        _m("raysisa_debt_bound_updates", "gauge",
           "The coordinator's coordinator.max_approx_updates: approximate updates that force a shard's retraining.", "run"),
        # what the coordinator decided and what unlearning cost
        _m("raysisa_shard_decisions", "counter",
           "Shard decisions of planned batches: decision=retrain, update or defer.", "run", "policy", "decision"),
        _m("raysisa_samples_deleted", "counter", "Training samples deleted from the store.", "run"),
        _m("raysisa_slices_retrained", "counter", "Slices retrained after deletions.", "run"),
        _m("raysisa_unlearning_sample_gradients", "counter",
           "Sample-gradients spent unlearning: work=retrain (SISA slices) or update (an approximate method, with OHS).",
           "run", "work", "method"),
        _m("raysisa_shard_debt_updates", "gauge",
           "Approximate updates a shard serves on top of its exact model (0: exact).", "run", "shard"),
        # shard training
        _m("raysisa_shard_sample_gradients", "counter", "Sample-gradients of slice training, per shard.", "run", "shard"),
        _m("raysisa_shard_slices_trained", "counter", "Slices trained (first training and retraining), per shard.", "run", "shard"),
        _m("raysisa_shard_train_seconds", "counter",
           "Wall seconds of slice training, per shard: sample-gradients / seconds is the training throughput.", "run", "shard"),
        # storage
        _m("raysisa_store_seconds", "histogram", "Latency of store operations (op: read, write, delete, list).",
           "op", "object", buckets=IO_BUCKETS),
        _m("raysisa_store_bytes", "counter", "Bytes read and written (op) by kind of object.", "op", "object"),
        # errors
        _m("raysisa_errors", "counter", "Errors raysisa reported, by component and error class.", "component", "kind"),
        # CLI commands (what a Pushgateway keeps of a batch job)
        _m("raysisa_job_duration_seconds", "gauge", "Wall seconds of the last CLI command.", "command", "outcome"),
        _m("raysisa_job_last_success_timestamp_seconds", "gauge", "Unix time the last CLI command succeeded.", "command"),
    )
}


def exported_names() -> set[str]:
    """Every sample name Prometheus can store from raysisa (for dashboard and rule checks)."""
    return {name for spec in METRICS.values() for name in spec.series}


# -- backends ------------------------------------------------------------------------------
REGISTRY = CollectorRegistry(auto_describe=True)
"""The prometheus-client registry of this process (not the library's global one)."""

_LOCK = threading.Lock()
_METRICS: dict[tuple[str, str], Any] = {}
_IN_WORKER: bool | None = None


def _in_ray_worker() -> bool:
    """Whether this process is a Ray worker (decided once: a process never changes role)."""
    global _IN_WORKER
    if _IN_WORKER is None:
        ray = sys.modules.get("ray")
        if ray is None or not ray.is_initialized():
            return False  # not decided: only a worker can be connected from its start
        from ray._private.worker import global_worker

        _IN_WORKER = global_worker.mode == ray.WORKER_MODE
    return _IN_WORKER


def _metric(name: str) -> tuple[str, Any]:
    backend = "ray" if _in_ray_worker() else "prometheus"
    key = (backend, name)
    found = _METRICS.get(key)
    if found is None:
        with _LOCK:
            found = _METRICS.get(key) or _create(backend, METRICS[name])
            _METRICS[key] = found
    return backend, found


def _create(backend: str, spec: MetricSpec) -> Any:
    if backend == "ray":
        from ray.util import metrics as ray_metrics

        if spec.kind == "histogram":
            return ray_metrics.Histogram(spec.name, description=spec.help, boundaries=list(spec.buckets), tag_keys=spec.labels)
        cls = {"counter": ray_metrics.Counter, "gauge": ray_metrics.Gauge}[spec.kind]
        return cls(spec.name, description=spec.help, tag_keys=spec.labels)
    if spec.kind == "histogram":
        return _PromHistogram(spec.family, spec.help, spec.labels, registry=REGISTRY, buckets=spec.buckets)
    cls = {"counter": _PromCounter, "gauge": _PromGauge}[spec.kind]
    return cls(spec.family, spec.help, spec.labels, registry=REGISTRY)


_ACTIONS = {"counter": "inc", "gauge": "set", "histogram": "observe"}


def _record(name: str, value: float, labels: dict[str, Any]) -> None:
    """Record ``value`` on metric ``name``; a failure to record is logged, never raised (a
    metric must not fail a deletion)."""
    try:
        spec = METRICS[name]
        tags = {key: str(labels[key]) for key in spec.labels}
        backend, metric = _metric(name)
        action = _ACTIONS[spec.kind]
        if backend == "ray":
            if spec.kind != "counter" or value > 0:  # Ray refuses a zero increment
                getattr(metric, action)(value, tags=tags)
            return
        getattr(metric.labels(**tags), action)(value)
    except Exception:  # metrics are best effort by design
        log.warning("could not record metric %s", name, exc_info=True)


def value(sample: str, **labels: str) -> float | None:
    """A sample's current value in this process's prometheus-client registry (tests, CLI)."""
    return REGISTRY.get_sample_value(sample, labels)


def serve(address: str) -> tuple[Any, int]:
    """Serve :data:`REGISTRY` at ``http://address/metrics`` (``PORT`` or ``HOST:PORT``; a bare
    port listens on every interface, as exporters do). Returns (server, port)."""
    from prometheus_client import start_http_server

    host, _, port = address.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "0.0.0.0", registry=REGISTRY)
    return server, server.server_address[1]


def push(gateway: str, job: str, grouping: dict[str, str]) -> None:
    """Replace this job's group on a Pushgateway with :data:`REGISTRY`'s samples (the
    Pushgateway convention for batch jobs: the group holds the last run's values)."""
    from prometheus_client import push_to_gateway

    push_to_gateway(gateway, job=job, registry=REGISTRY, grouping_key=grouping, timeout=10)


def run_label(uri: str) -> str:
    """A run's label: its store URI without credentials or query (``s3://b/runs/x``)."""
    parts = urlsplit(uri)
    if not parts.scheme or len(parts.scheme) == 1:  # a path (or a Windows drive letter)
        return uri.rstrip("/") or "/"
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


# -- what raysisa records ------------------------------------------------------------------
STATE_OF = {"applied_exact": "exact", "applied_approximate": "approximate"}


def request_received(run: str) -> None:
    _record("raysisa_requests_received", 1, {"run": run})


def request_transition(run: str, previous: str, state: str, age_seconds: float) -> None:
    """A ledger event created now: ``previous`` → ``state``, ``age_seconds`` after logging."""
    if state in STATE_OF:
        _record("raysisa_requests_applied", 1, {"run": run, "decision": STATE_OF[state]})
        _record("raysisa_request_seconds", age_seconds, {"run": run, "until": "applied"})
    elif state == "exact":
        _record("raysisa_requests_exact", 1, {"run": run, "made_exact": "yes" if previous == "applied_approximate" else "no"})
        _record("raysisa_request_seconds", age_seconds, {"run": run, "until": "exact"})
    elif state == "rejected":
        _record("raysisa_requests_rejected", 1, {"run": run})


def ledger_read(run: str, open_by_state: dict[str, int], oldest_age_seconds: float, deadline_seconds: float,
                debt_bound: int) -> None:
    """What the coordinator just read of the ledger (open requests by state, the oldest
    one's age), with the bounds the alert rules compare them to."""
    for state in ("pending", "applied_exact", "applied_approximate"):
        _record("raysisa_requests_open", open_by_state.get(state, 0), {"run": run, "state": state})
    _record("raysisa_oldest_open_request_age_seconds", oldest_age_seconds, {"run": run})
    _record("raysisa_coordinator_heartbeat_timestamp_seconds", time.time(), {"run": run})
    _record("raysisa_exact_deadline_seconds", deadline_seconds, {"run": run})
    _record("raysisa_debt_bound_updates", debt_bound, {"run": run})


def shard_decision(run: str, policy: str, decision: str) -> None:
    _record("raysisa_shard_decisions", 1, {"run": run, "policy": policy, "decision": decision})


def samples_deleted(run: str, count: int) -> None:
    _record("raysisa_samples_deleted", count, {"run": run})


def slices_retrained(run: str, slices: int, sample_grads: int) -> None:
    _record("raysisa_slices_retrained", slices, {"run": run})
    _record("raysisa_unlearning_sample_gradients", sample_grads, {"run": run, "work": "retrain", "method": "retrain"})


def update_applied(run: str, method: str, sample_grads: int) -> None:
    _record("raysisa_unlearning_sample_gradients", sample_grads, {"run": run, "work": "update", "method": method})


def shard_debt(run: str, shard: int, updates: int) -> None:
    _record("raysisa_shard_debt_updates", updates, {"run": run, "shard": shard})


def shard_trained(run: str, shard: int, sample_grads: int, seconds: float) -> None:
    """One slice trained by a shard: its sample-gradients and wall seconds."""
    _record("raysisa_shard_sample_gradients", sample_grads, {"run": run, "shard": shard})
    _record("raysisa_shard_train_seconds", seconds, {"run": run, "shard": shard})
    _record("raysisa_shard_slices_trained", 1, {"run": run, "shard": shard})


def object_kind(key: str) -> str:
    """The kind of a store key, for the ``object`` label (a fixed set, never the key)."""
    head = key.split("/", 1)[0]
    return {
        "checkpoints": "checkpoint", "approx": "checkpoint", "data": "partition", "index": "index", "ledger": "ledger",
        "receipts": "ledger", "subjects": "ledger", "_log": "transaction",
    }.get(head, "other")


def store_op(op: str, key: str, seconds: float, nbytes: int = 0) -> None:
    kind = object_kind(key)
    _record("raysisa_store_seconds", seconds, {"op": op, "object": kind})
    if nbytes:
        _record("raysisa_store_bytes", nbytes, {"op": op, "object": kind})


def error(component: str, exc: BaseException) -> None:
    _record("raysisa_errors", 1, {"component": component, "kind": type(exc).__name__})


def job_finished(command: str, seconds: float, ok: bool) -> None:
    """A CLI command ended (what a Pushgateway shows of a batch job)."""
    _record("raysisa_job_duration_seconds", seconds, {"command": command, "outcome": "success" if ok else "failure"})
    if ok:
        _record("raysisa_job_last_success_timestamp_seconds", time.time(), {"command": command})
