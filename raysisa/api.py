"""The high-level Python API: one call per operation, Ray started only when needed.

Example:
    >>> import raysisa
    >>> job = raysisa.load_config(None, ["sharding.num_shards=3"])   # doctest: +SKIP
    >>> raysisa.train(job, "/tmp/run")                                 # doctest: +SKIP
    >>> raysisa.methods("/tmp/run", [17, 42])                          # doctest: +SKIP
    >>> raysisa.evaluate("/tmp/run").accuracy                          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

from raysisa.config import ClusterConfig, CoordinatorConfig, JobConfig, RunSpec, StoreConfig
from raysisa.sisa.pool import LocalPool, ShardPool
from raysisa.sisa.run import EvalReport, SisaRun, TrainReport, UnlearnReport

__all__ = ["train", "unlearn", "evaluate", "inspect", "compare", "as_store", "run_coordinator"]


def as_store(store: str | StoreConfig, endpoint_url: str | None = None) -> StoreConfig:
    """A :class:`StoreConfig` from a URI (or pass one through)."""
    if isinstance(store, StoreConfig):
        return store
    return StoreConfig(uri=str(store), endpoint_url=endpoint_url)


@contextlib.contextmanager
def _pool(pool: ShardPool | None, cluster: ClusterConfig | None, spec: RunSpec) -> Iterator[ShardPool]:
    """``pool``, or a Ray pool for the run of recipe ``spec`` (its shard actors reserve the
    recipe's threads as CPUs unless ``cluster`` says otherwise)."""
    if pool is not None:
        yield pool
        return
    from raysisa.sisa.actors import ray_pool  # Ray only when a cluster is needed

    with ray_pool(cluster, spec.sharding.num_shards, spec.train.threads) as ray_shards:
        yield ray_shards


def train(
    config: RunSpec | JobConfig | None,
    store: str | StoreConfig,
    *,
    exclude_ids: Iterable[Any] | None = None,
    cluster: ClusterConfig | None = None,
    pool: ShardPool | None = None,
    progress: bool = False,
    verify: bool = False,
) -> TrainReport:
    """Create (or resume) a SISA run at ``store`` and train every shard.

    Args:
        config: the run's recipe (a :class:`JobConfig` also brings its ``cluster`` section);
            ``None`` resumes the run already at ``store`` with its own recipe.
        store: URI or :class:`StoreConfig` of the run.
        exclude_ids: samples to leave out of the same partition (the exact-unlearning reference).
        cluster: Ray resources; defaults to the config's ``cluster`` section.
        pool: run shards here instead of in Ray actors (e.g. :class:`raysisa.LocalPool`).
        progress: show a progress bar.
        verify: check every checkpoint's sha256 first and rebuild corrupt ones.
    """
    run = SisaRun(as_store(store))
    with run.writer("train"):  # one writer throughout; it finishes an interrupted ingest or deletion first
        if config is None:
            spec = run.store.spec  # raises StoreNotFoundError if there is no run to resume
        else:
            spec = config.spec if isinstance(config, JobConfig) else config
            if cluster is None and isinstance(config, JobConfig):
                cluster = config.cluster
        run.ingest(spec, exclude_ids)  # reopens an identical run (checking exclude_ids are excluded)
        with _pool(pool, cluster, spec) as shards:
            return run.train(shards, progress, verify)


def in_process_is_enough(cluster: ClusterConfig | None, shards: int) -> bool:
    """Whether shard work touching ``shards`` shards gains nothing from Ray here: no cluster
    is configured (Ray would start a private local one just for this call) and at most one
    shard works."""
    address = (cluster.address if cluster is not None else None) or os.environ.get("RAY_ADDRESS")
    return not address and shards <= 1


def unlearn(
    store: str | StoreConfig,
    ids: Iterable[Any],
    *,
    cluster: ClusterConfig | None = None,
    pool: ShardPool | None = None,
    progress: bool = False,
) -> UnlearnReport:
    """Exactly unlearn sample ``ids`` from the run at ``store`` (see :meth:`SisaRun.unlearn`).

    Without a ``pool``, the retraining runs on Ray, except when Ray would only add its
    start-up: with no cluster to connect to (no ``cluster.address``, no ``RAY_ADDRESS``)
    and the ids in at most one shard, there is nothing to run in parallel, so the shard
    retrains in this process (``bench/scale.py`` measures both).
    """
    run = SisaRun.open(as_store(store))
    ids = list(ids)
    wanted, deleting, _ = run.check_ids(ids)  # bad input fails before Ray starts
    shards = run.shards_of(wanted)
    if pool is None and (in_process_is_enough(cluster, len(shards)) or not (len(deleting) or run.pending_work(shards=shards))):
        pool = LocalPool()  # one shard's work, or nothing to train: no cluster needed
    with _pool(pool, cluster, run.store.spec) as workers:
        return run.unlearn(ids, workers, progress)


def evaluate(
    store: str | StoreConfig,
    aggregation: str = "vote",
    weights: list[float] | None = None,
    *,
    pool: ShardPool | None = None,
) -> EvalReport:
    """Ensemble and per-shard test accuracy of the run at ``store``.

    Models are loaded in this process, or in the shard workers of ``pool`` if given.
    """
    return SisaRun.open(as_store(store)).evaluate(aggregation, weights, pool)


def inspect(store: str | StoreConfig, verify: bool = True) -> dict[str, Any]:
    """A JSON-ready description of the run at ``store``."""
    return SisaRun.open(as_store(store)).inspect(verify)


def compare(
    config: JobConfig,
    store: str | StoreConfig,
    *,
    methods: list[str] | None = None,
    seeds: list[int] | None = None,
    cluster: ClusterConfig | None = None,
    pool: ShardPool | None = None,
    progress: bool = False,
):
    """Compare retraining with approximate methods on one forget scenario
    (:func:`raysisa.evaluation.compare`); the report lands in ``reports/<name>/``."""
    from raysisa.evaluation.compare import compare as run_compare
    from raysisa.evaluation.compare import resolve_methods
    from raysisa.methods.tuned import Setting

    resolve_methods(config.compare, methods, Setting.of(config.spec))  # bad names or args fail before Ray starts
    with _pool(pool, cluster or config.cluster, config.spec) as shards:
        return run_compare(config, as_store(store), shards, methods, seeds, progress)


def run_coordinator(
    store: str | StoreConfig,
    config: CoordinatorConfig | None = None,
    *,
    until: tuple[str, str] | None = None,
    cluster: ClusterConfig | None = None,
    pool: ShardPool | None = None,
    timeout: float = 3600.0,
) -> dict[str, Any]:
    """Run a coordinator in this process (instead of the detached actor).

    Args:
        store: the run.
        config: batching and policy settings.
        until: ``(request_id, "applied" | "exact")``: stop once that request gets there
            (exactness is restored right away rather than after ``idle_seconds``);
            ``None``: apply everything pending, restore exactness, and stop.
        cluster, pool: where shards work (default: Ray actors on a local cluster).
        timeout: give up (raising TimeoutError) after this many seconds.
    """
    from raysisa.coordinator.ledger import STATES, Ledger
    from raysisa.coordinator.service import Coordinator

    store = as_store(store)
    run = SisaRun(store)
    with _pool(pool, cluster, run.store.spec) as shards:
        coordinator = Coordinator(store, config or CoordinatorConfig(), shards)
        if until is None:
            coordinator.run_until_settled(timeout)
            return coordinator.summary()
        request_id, goal = until
        target = STATES["applied_approximate"] if goal == "applied" else STATES["exact"]
        ledger = Ledger(run.store.objects)
        deadline = time.time() + timeout
        while STATES[ledger.state(request_id)] < target:
            if time.time() > deadline:
                raise TimeoutError(f"request {request_id} did not become {goal} within {timeout}s")
            done = coordinator.step()
            if goal == "exact" and ledger.state(request_id) == "applied_approximate":
                coordinator.restore_exactness()
            elif done in ("waiting", "idle", "busy"):
                time.sleep(0.05)
        return coordinator.summary()
