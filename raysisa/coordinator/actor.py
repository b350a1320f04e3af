"""The coordinator as a named, detached, restartable Ray actor.

The actor runs :class:`~raysisa.coordinator.service.Coordinator` in a background thread.
All of its state is on the store, so when Ray restarts it (``max_restarts=-1``) it picks
up unfinished batch plans and pending requests where they were.

It logs like the process that started it (level, text or JSON: see
:mod:`raysisa.sisa.actors`), every record with the run's ``run`` attribute, and so do the
shard actors of its pool (named after the run).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from typing import Any

import ray

from raysisa import telemetry
from raysisa.config import ClusterConfig, CoordinatorConfig, StoreConfig

__all__ = ["CoordinatorActor", "coordinator_name", "start_coordinator", "get_coordinator", "stop_coordinator", "NAMESPACE"]

log = logging.getLogger(__name__)
NAMESPACE = "raysisa"


class CoordinatorActor:
    def __init__(
        self, store: StoreConfig, config: CoordinatorConfig, cluster: ClusterConfig, log: tuple[int, str] | None = None
    ) -> None:
        from raysisa.coordinator.service import Coordinator
        from raysisa.sisa.actors import RayPool, configure_worker_logging
        from raysisa.sisa.run import SisaRun

        self.label = telemetry.run_label(store.uri)
        configure_worker_logging(*(log or (logging.WARNING, "text")), run=self.label)  # every record names the run
        spec = SisaRun(store).store.spec
        shards = spec.sharding.num_shards
        pool = RayPool(cluster, shards, label=self.label, threads=spec.train.threads)
        pool.start(range(shards))  # shard actors requested now: started before the first request, where the cluster has room
        self.coordinator = Coordinator(store, config, pool)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="raysisa-coordinator", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        poll = self.coordinator.config.poll_seconds
        while not self._stop.is_set():
            try:
                done = self.coordinator.step()
            except Exception as exc:
                log.exception("coordinator step failed")
                telemetry.error("coordinator", exc)
                self.errors = [*self.errors[-9:], f"{type(exc).__name__}: {exc}"]
                done = "error"
            if done in ("idle", "waiting", "busy", "error"):
                self._stop.wait(poll)

    def __repr__(self) -> str:
        return f"CoordinatorActor(run={self.label})"

    def summary(self) -> dict[str, Any]:
        return {**self.coordinator.summary(), "errors": self.errors, "pid": os.getpid()}

    def pid(self) -> int:
        return os.getpid()

    def shard_pids(self) -> dict[int, int]:
        """Process id of the shard actor each shard ran on last (for operators and tests)."""
        return self.coordinator.pool.shard_pids()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=600)


def coordinator_name(store: StoreConfig) -> str:
    return "raysisa-coordinator-" + hashlib.sha256(store.uri.encode()).hexdigest()[:16]


def start_coordinator(store: StoreConfig, config: CoordinatorConfig | None = None, cluster: ClusterConfig | None = None) -> Any:
    """The coordinator actor of ``store`` (started if not running, logging like this
    process). Ray must be initialised."""
    from raysisa.sisa.actors import log_settings

    config = config or CoordinatorConfig()
    cluster = cluster or ClusterConfig()
    handle = (
        ray.remote(CoordinatorActor)
        .options(
            name=coordinator_name(store),
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            max_concurrency=4,
            num_cpus=0,
        )
        .remote(store, config, cluster, log_settings())
    )
    ray.get(handle.pid.remote())  # up and running (constructor done)
    return handle


def get_coordinator(store: StoreConfig) -> Any | None:
    try:
        return ray.get_actor(coordinator_name(store), namespace=NAMESPACE)
    except ValueError:
        return None


def stop_coordinator(store: StoreConfig) -> bool:
    handle = get_coordinator(store)
    if handle is None:
        return False
    try:
        ray.get(handle.stop.remote(), timeout=600)
    finally:
        ray.kill(handle, no_restart=True)
    for _ in range(50):
        if get_coordinator(store) is None:
            break
        time.sleep(0.1)
    return True
