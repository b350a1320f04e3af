"""Ray at the edge: one actor per shard around :class:`ShardWorker`, and Ray start-up.

Actors are created together by :meth:`RayPool.start` (one scheduling wave, not one per
first call) or on first use, reserve ``cluster.cpus_per_shard`` CPUs (by default the
cluster's free CPUs spread over the shards, at most one each) and ``cluster.gpus_per_shard``
GPUs, and are restarted by Ray up to ``cluster.max_restarts`` times; a call in flight when
its actor dies is retried on the restarted actor, and since every ``ShardWorker`` call is
idempotent and reads its state from the store, the retry resumes from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from raysisa.config import ClusterConfig
from raysisa.errors import ClusterUnavailableError, RaysisaError, ShardUnavailableError
from raysisa.sisa.shard import ShardWorker
from raysisa.sisa.tasks import ShardTask

__all__ = ["RayPool", "ray_session", "ray_pool", "connect"]

log = logging.getLogger(__name__)


class RayPool:
    """A :class:`~raysisa.sisa.pool.ShardPool` of Ray actors, one per shard index.

    Args:
        cluster: resources and restart policy.
        num_shards: shards of the run, used to spread the free CPUs when ``cpus_per_shard``
            is unset.
    """

    def __init__(self, cluster: ClusterConfig | None = None, num_shards: int = 1) -> None:
        self.cluster = cluster or ClusterConfig()
        self.cpus = float(ray.cluster_resources().get("CPU", 1.0))
        self.free_cpus = float(ray.available_resources().get("CPU", 0.0))
        self.num_shards = max(1, num_shards)
        self.actors: dict[int, Any] = {}
        self._shard_of: dict[ray.ObjectRef, int] = {}

    @property
    def device(self) -> str:
        return "cuda" if self.cluster.gpus_per_shard > 0 else "cpu"

    def _cpus_per_shard(self) -> float:
        if self.cluster.cpus_per_shard is not None:
            return self.cluster.cpus_per_shard
        # Spread the CPUs that are free now, so every shard actor can start.
        return max(0.01, min(1.0, math.floor(100 * self.free_cpus / self.num_shards) / 100))

    def start(self, shards: Sequence[int]) -> None:
        """Create the actors of ``shards`` now, together (one scheduling wave), and wait
        until they are up: their start-ups overlap one another instead of delaying each
        shard's first task (measured faster on 2 cores than letting them start while the
        first shards train)."""
        new = [shard for shard in shards if shard not in self.actors]
        ray.get([self.actor(shard).__ray_ready__.remote() for shard in new])

    def actor(self, shard: int) -> Any:
        """The actor handle of ``shard`` (created on first use)."""
        if shard not in self.actors:
            options = {
                "num_cpus": self._cpus_per_shard(),
                "num_gpus": self.cluster.gpus_per_shard,
                "max_restarts": self.cluster.max_restarts,
                "max_task_retries": self.cluster.max_restarts,
            }
            self.actors[shard] = ray.remote(ShardWorker).options(**options).remote(shard, self.device, warm=True)
        return self.actors[shard]

    def concurrency(self, threads_per_shard: int) -> int:
        if self.cluster.max_concurrent is not None:
            return self.cluster.max_concurrent
        return max(1, int(self.cpus // threads_per_shard))

    def submit(self, shard: int, task: ShardTask) -> ray.ObjectRef:
        handle = self.actor(shard).run.remote(task)
        self._shard_of[handle] = shard
        return handle

    def wait(self, handles: Sequence[ray.ObjectRef]) -> list[ray.ObjectRef]:
        done, _ = ray.wait(list(handles), num_returns=1)
        return done

    def result(self, handle: ray.ObjectRef) -> Any:
        shard = self._shard_of.pop(handle, None)
        try:
            return ray.get(handle)
        except RayActorError as exc:
            raise ShardUnavailableError(
                f"shard {shard}: its actor died and was not restarted (max_restarts={self.cluster.max_restarts}): {exc}"
            ) from exc
        except RayTaskError as exc:
            if isinstance(exc.cause, RaysisaError):
                raise exc.cause from None
            raise

    def close(self) -> None:
        for handle in self.actors.values():
            with contextlib.suppress(Exception):
                ray.kill(handle)
        self.actors.clear()


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a Ray address to probe, or None for ``auto``/``local``/unparsable."""
    match = re.fullmatch(r"(?:ray://|https?://)?\[?([^\]/]+?)\]?:(\d{1,5})/?", address.strip())
    return (match[1], int(match[2])) if match else None


def connect(address: str, timeout: float = 30.0) -> None:
    """``ray.init(address=...)``, failing within ``timeout`` seconds when nothing answers there
    (``ray.init`` alone retries for minutes).

    Raises:
        ClusterUnavailableError: no TCP answer at the address, or Ray could not connect.
    """
    target = _host_port(address)
    if target is not None:
        try:
            with socket.create_connection(target, timeout=timeout):
                pass
        except OSError as exc:
            raise ClusterUnavailableError(
                f"cannot reach the Ray cluster at {address} within {timeout:g}s ({exc.strerror or exc}); "
                "check the address (ray://HOST:10001 for Ray Client, HOST:6379 on the cluster) and that the head is up"
            ) from None
    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise ClusterUnavailableError(f"cannot connect to the Ray cluster at {address}: {exc}") from None


@contextlib.contextmanager
def ray_session(cluster: ClusterConfig | None = None) -> Iterator[None]:
    """Use the running Ray session, or connect/start one for the duration of the block.

    ``cluster.address`` (or ``RAY_ADDRESS``) connects to an existing cluster, failing after
    ``cluster.connect_timeout_seconds`` if it does not answer; otherwise a private local
    cluster is started (``address="local"``, never a stale one found on disk).
    """
    cluster = cluster or ClusterConfig()
    if ray.is_initialized():
        yield
        return
    address = cluster.address or os.environ.get("RAY_ADDRESS")
    if address:
        connect(address, cluster.connect_timeout_seconds)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def ray_pool(cluster: ClusterConfig | None = None, num_shards: int = 1) -> Iterator[RayPool]:
    """A :class:`RayPool` inside a :func:`ray_session`; its actors are killed on exit."""
    with ray_session(cluster):
        pool = RayPool(cluster, num_shards)
        try:
            yield pool
        finally:
            pool.close()
