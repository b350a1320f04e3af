"""Ray at the edge: shard work in a pool of Ray actors ("slots"), Ray start-up, and the
logging of Ray worker processes.

**Resources.** Every slot actor reserves the run's ``train.threads`` CPUs (or
``cluster.cpus_per_shard`` where that is set) and ``cluster.gpus_per_shard`` GPUs: a fixed
request, never one computed from what is free at the moment, so an autoscaler sees exactly
what a shard needs, and torch's threads in the actor have a core each. The thread count is
part of the recipe's fingerprint because it can change floating-point summation order, so
the reservation follows the recipe and never changes a result. An explicit reservation
smaller than the threads is allowed (shards then compete for cores; a warning says so).

**Slots.** A :class:`RayPool` runs at most ``cluster.max_concurrent`` slot actors (default:
one per shard it was asked for), and any slot serves any shard: :class:`ShardWorker` reads
everything from the store, so a slot keeps one worker (its decoded partitions and last
checkpoint) per shard it served recently. Calls queue in the pool and go to a slot that is
up and idle, one call per shard at a time in the order they were submitted; a shard goes
back to the slot that ran it last when that slot is free (its cache is there), so a shard
that continues (slice r+1 after r) keeps its slot and shards finish one after another
rather than all at the end.

**Demand, and why nothing deadlocks.** While calls wait and fewer slots exist than the
limit, the pool requests new slots for them at once (creating actors together overlaps
their start-ups; measured faster on 2 cores). A slot the cluster cannot place yet simply
stays pending: a resource request the autoscaler sees, which takes work when it is placed.
Nothing ever waits for a particular slot, so a cluster smaller than
shards x ``cpus_per_shard`` trains the shards a few at a time on the slots it could place
(the others stay pending until :meth:`RayPool.close` cancels them). A warning is logged
while no slot at all could be placed.

**Restarts.** Ray restarts a slot up to ``cluster.max_restarts`` times; a call in flight
when its slot dies is retried on the restarted slot, and since every ``ShardWorker`` call
is idempotent and reads its state from the store, the retry resumes from the last
checkpoint. A slot that dies for good fails its call (:class:`ShardUnavailableError`) and
is replaced for the calls after it.

**Names and logs.** A slot actor is named after the run and its slot number
(``raysisa <run> slot 0 <pool id>``: what the Ray dashboard lists), each call is a Ray task
named after the run, shard and task (``<run> shard 3 TrainSlice``), and every log record a
slot emits carries ``run`` and ``shard`` attributes. When raysisa starts or connects to
Ray itself (:func:`ray_session`, :func:`connect`), worker output reaches this process's
stderr (``log_to_driver``: a Ray job's log), and worker processes log at this process's
level, as text or, when this process logs JSON (``raysisa --log-format json``), as one
JSON object per line with the CLI's keys (``asctime``, ``level``, ``logger``,
``message``) plus ``run``, ``shard`` and Ray's ids (``job_id``, ``actor_id``, ``task_name``...).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import re
import socket
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from raysisa.config import ClusterConfig
from raysisa.errors import ClusterUnavailableError, RaysisaError, ShardUnavailableError
from raysisa.sisa.shard import ShardWorker
from raysisa.sisa.tasks import ShardTask, TrainSlice
from raysisa.telemetry import run_label

__all__ = [
    "RayPool",
    "ShardSlot",
    "ray_session",
    "ray_pool",
    "connect",
    "log_settings",
    "configure_worker_logging",
    "log_context",
]

log = logging.getLogger(__name__)

# -- logging in Ray worker processes ---------------------------------------------------------
_JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"  # the CLI's (raysisa.cli.configure_logging)
_JSON_RENAMES = {"levelname": "level", "name": "logger"}
_CONTEXT: dict[str, Any] = {}  # attributes added to every log record of this process (run, shard)


def log_settings() -> tuple[int, str]:
    """(level, ``"text"`` or ``"json"``) of this process's logging, for the Ray workers it
    starts: the root logger's level, and JSON when a root handler formats JSON (what
    ``raysisa --log-format json`` installs)."""
    root = logging.getLogger()
    json_ = any(type(h.formatter).__module__.startswith("pythonjsonlogger") for h in root.handlers if h.formatter)
    return root.getEffectiveLevel(), "json" if json_ else "text"


class _TextFormatter(logging.Formatter):
    """``time logger [run=... shard=...]: message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(name)s%(raysisa_context)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(f"{key}={getattr(record, key)}" for key in ("run", "shard") if hasattr(record, key))
        record.raysisa_context = f" [{context}]" if context else ""
        return super().format(record)


def _with_context(factory: Any) -> Any:
    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        for key, value in _CONTEXT.items():
            setattr(record, key, value)
        return record

    make.raysisa = True  # type: ignore[attr-defined]
    return make


def configure_worker_logging(level: int, log_format: str, **context: Any) -> None:
    """Log this (Ray worker) process's records at ``level`` to stderr, which Ray streams to
    the driver, as text or JSON, each record with the attributes ``context`` (for the life
    of the process) and :func:`log_context` (for a block) give it.

    When the job has a Ray logging config (:func:`ray_session` passes one for JSON, which
    keeps Ray from prefixing the lines), Ray has installed the handler: it is kept (with
    the Ray ids its filter adds) and given raysisa's format."""
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        formatter: logging.Formatter = JsonFormatter(_JSON_FIELDS, rename_fields=_JSON_RENAMES)
    else:
        formatter = _TextFormatter()
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for handler in root.handlers:
        handler.setFormatter(formatter)
        handler.setLevel(logging.NOTSET)
    root.setLevel(level)
    logging.captureWarnings(True)  # Python warnings are records too (with run and shard)
    _CONTEXT.update(context)
    if not getattr(logging.getLogRecordFactory(), "raysisa", False):
        logging.setLogRecordFactory(_with_context(logging.getLogRecordFactory()))


@contextlib.contextmanager
def log_context(**values: Any) -> Iterator[None]:
    """Add ``values`` as attributes of every log record this process creates in the block."""
    before = dict(_CONTEXT)
    _CONTEXT.update(values)
    try:
        yield
    finally:
        _CONTEXT.clear()
        _CONTEXT.update(before)


# -- the slot actor -----------------------------------------------------------------------------
class ShardSlot:
    """The body of one slot actor: runs shard tasks for any shard, keeping a
    :class:`ShardWorker` (and its caches) for the shards it served most recently.

    Args:
        device: ``cpu`` or ``cuda``.
        label: the run the pool was started for (its repr, the prefix Ray puts on its output).
        index: the slot's number in its pool.
        log: (level, format) of the driver's logging (:func:`log_settings`).
    """

    def __init__(self, device: str, label: str, index: int, log: tuple[int, str] = (logging.WARNING, "text")) -> None:
        configure_worker_logging(*log)
        self.device = device
        self.label = label
        self.index = index
        self.workers: OrderedDict[int, ShardWorker] = OrderedDict()
        # torch's optimiser imports its compiler (torch._dynamo, ~2 s) on its first step:
        # a long-lived slot pays it now, while it starts with the others
        importlib.import_module("torch._dynamo")

    def __repr__(self) -> str:
        return f"ShardSlot(run={self.label}, slot={self.index})"

    @ray.method(concurrency_group="info")
    def pid(self) -> int:
        """This slot's process id (answered while a task runs)."""
        return os.getpid()

    def run(self, shard: int, task: ShardTask, keep: int = 1) -> Any:
        """``ShardWorker(shard).run(task)``, keeping the workers of the last ``keep`` shards."""
        worker = self.workers.pop(shard, None) or ShardWorker(shard, self.device)
        self.workers[shard] = worker
        while len(self.workers) > max(1, keep):
            self.workers.popitem(last=False)
        with log_context(run=run_label(task.run.store.uri), shard=shard):
            return worker.run(task)


_SLOT = ray.remote(concurrency_groups={"info": 1})(ShardSlot)


@dataclass(eq=False)
class _Slot:
    index: int
    handle: Any
    up: ray.ObjectRef | None  # answers when the actor is placed and constructed; None once up
    call: _Call | None = None  # the call it runs


@dataclass(eq=False)
class _Call:
    """A pool handle: one shard task, queued, running on a slot, or done."""

    shard: int
    task: ShardTask
    ref: ray.ObjectRef | None = None
    slot: _Slot | None = None
    done: bool = False
    value: Any = None
    error: BaseException | None = None


def _task_name(shard: int, task: ShardTask) -> str:
    what = f"TrainSlice {task.slice}" if isinstance(task, TrainSlice) else type(task).__name__
    return f"{run_label(task.run.store.uri)} shard {shard} {what}"


class RayPool:
    """A :class:`~raysisa.sisa.pool.ShardPool` of Ray actors ("slots") that serve any shard
    (see the module docstring).

    Args:
        cluster: resources, restart policy and ``max_concurrent``.
        num_shards: shards of the run: the default number of slots.
        label: the run, for the slots' names; default: the run of the first task submitted.
    """

    def __init__(
        self, cluster: ClusterConfig | None = None, num_shards: int = 1, label: str | None = None, threads: int = 1
    ) -> None:
        """``threads``: the run's ``train.threads``, which each slot reserves as CPUs unless
        ``cluster.cpus_per_shard`` says otherwise."""
        self.cluster = cluster or ClusterConfig()
        self.cpus = self.cluster.cpus_per_shard or threads  # CPUs each slot actor reserves
        self.num_shards = max(1, num_shards)
        self.label = label
        self.log = log_settings()
        self.slots: list[_Slot] = []
        self.queue: list[_Call] = []
        self.home: dict[int, _Slot] = {}  # shard -> the slot that ran it last
        self._shards: set[int] = set()  # every shard this pool was asked for
        self._warm = 0  # slots start() asked for, not created yet
        self._created = 0
        self._id = uuid.uuid4().hex[:6]
        self._warned_threads = False

    @property
    def device(self) -> str:
        return "cuda" if self.cluster.gpus_per_shard > 0 else "cpu"

    def limit(self) -> int:
        """The most slots this pool runs: ``cluster.max_concurrent``, else one per shard."""
        return self.cluster.max_concurrent or max(self.num_shards, len(self._shards))

    def concurrency(self, threads_per_shard: int) -> int:
        if threads_per_shard > self.cpus and not self._warned_threads:
            self._warned_threads = True
            log.warning(
                "train.threads=%d but each shard actor reserves %g CPU(s): shards will compete for cores; "
                "set cluster.cpus_per_shard=%d",
                threads_per_shard, self.cpus, threads_per_shard,
            )
        return self.limit()

    # -- slots ---------------------------------------------------------------------------------
    def _new_slot(self) -> None:
        index = self._created
        self._created += 1
        options = {
            "name": f"raysisa {self.label} slot {index} {self._id}",
            "num_cpus": self.cpus,
            "num_gpus": self.cluster.gpus_per_shard,
            "max_restarts": self.cluster.max_restarts,
            "max_task_retries": self.cluster.max_restarts,
        }
        handle = _SLOT.options(**options).remote(self.device, self.label, index, self.log)
        self.slots.append(_Slot(index, handle, handle.__ray_ready__.remote()))

    def _drop(self, slot: _Slot) -> None:
        if slot in self.slots:
            self.slots.remove(slot)
        self.home = {shard: s for shard, s in self.home.items() if s is not slot}
        with contextlib.suppress(Exception):
            ray.kill(slot.handle)

    def start(self, shards: Sequence[int]) -> None:
        """Request slots for ``shards`` now, together (their start-ups overlap one another
        and the caller's work); returns at once: calls go to slots as they come up. (Without
        a label, the slots are requested with the first call, which names the run.)"""
        self._shards.update(shards)
        self._warm = max(self._warm, min(self.limit(), len(set(shards))))
        self._grow()

    def _grow(self) -> None:
        """Create the slots :meth:`start` asked for, once the run's label is known."""
        if self.label is None:
            return
        while len(self.slots) < self._warm:
            self._new_slot()
        self._warm = 0

    def _dispatch(self) -> None:
        """Send queued calls to idle slots that are up (a shard to its last slot first), then
        request slots for the shards still waiting."""
        if self.label is None and self.queue:
            self.label = run_label(self.queue[0].task.run.store.uri)
        self._grow()
        idle = [s for s in self.slots if s.up is None and s.call is None]
        running = {s.call.shard for s in self.slots if s.call is not None}
        for continuing in (True, False):
            for call in list(self.queue):
                if not idle or call.shard in running:
                    continue
                home = self.home.get(call.shard)
                if home in idle:
                    slot = home
                elif continuing:
                    continue
                else:  # the idle slot that is home to the fewest shards
                    slot = min(idle, key=lambda s: sum(h is s for h in self.home.values()))
                idle.remove(slot)
                self.queue.remove(call)
                running.add(call.shard)
                self._send(slot, call)
        waiting = {call.shard for call in self.queue} - running
        if waiting and self.label is not None:  # a slot for each shard that waits, beyond those coming up
            up = sum(s.up is None for s in self.slots)
            while len(self.slots) < min(self.limit(), up + len(waiting)):
                self._new_slot()

    def _send(self, slot: _Slot, call: _Call) -> None:
        keep = math.ceil(len(self._shards | {call.shard}) / max(1, sum(s.up is None for s in self.slots)))
        call.ref = slot.handle.run.options(name=_task_name(call.shard, call.task)).remote(call.shard, call.task, keep)
        call.slot, slot.call = slot, call
        self.home[call.shard] = slot

    def _pump(self, targets: Sequence[_Call]) -> list[_Call]:
        """Run the pool until one of ``targets`` is done; returns the done ones."""
        waited = time.monotonic()
        while True:
            done = [call for call in targets if call.done]
            if done:  # before dispatching: the caller may continue a shard on the slot it just freed
                return done
            self._dispatch()
            running = {s.call.ref: s for s in self.slots if s.call is not None}
            starting = {s.up: s for s in self.slots if s.up is not None}
            if not running and not starting:
                raise ShardUnavailableError("no shard actor is left to run the queued shard tasks")
            ready, _ = ray.wait([*running, *starting], num_returns=1, timeout=60)
            if not ready:
                if not running and not any(s.up is None for s in self.slots):
                    log.warning(
                        "no shard actor could be placed for %.0fs: each reserves %g CPU(s) and %g GPU(s); the cluster "
                        "has %s. An autoscaler adds nodes for them; on a fixed cluster lower cluster.cpus_per_shard",
                        time.monotonic() - waited, self.cpus, self.cluster.gpus_per_shard,
                        ray.cluster_resources(),
                    )
                continue
            for ref in ready:
                if ref in starting:
                    self._up(starting[ref])
                else:
                    self._finish(running[ref])

    def _up(self, slot: _Slot) -> None:
        try:
            ray.get(slot.up)
        except Exception as exc:  # its constructor failed, or it could not be placed
            self._drop(slot)
            raise ShardUnavailableError(f"a shard actor could not start: {exc}") from exc
        slot.up = None

    def _finish(self, slot: _Slot) -> None:
        call, slot.call = slot.call, None
        assert call is not None
        try:
            call.value = ray.get(call.ref)
        except Exception as exc:  # noqa: BLE001 - handed back through result()
            call.error = exc
            if isinstance(exc, RayActorError):  # dead for good: the next calls get a new slot
                self._drop(slot)
        call.done = True
        call.ref = None

    # -- the ShardPool protocol ----------------------------------------------------------------
    def submit(self, shard: int, task: ShardTask) -> _Call:
        call = _Call(shard, task)
        self._shards.add(shard)
        self.queue.append(call)
        self._dispatch()
        return call

    def wait(self, handles: Sequence[_Call]) -> list[_Call]:
        return self._pump(handles)

    def result(self, handle: _Call) -> Any:
        if not handle.done:
            self._pump([handle])
        exc = handle.error
        if exc is None:
            return handle.value
        if isinstance(exc, RayActorError):
            raise ShardUnavailableError(
                f"shard {handle.shard}: its actor died and was not restarted (max_restarts={self.cluster.max_restarts}): {exc}"
            ) from exc
        if isinstance(exc, RayTaskError) and isinstance(exc.cause, RaysisaError):
            raise exc.cause from None
        raise exc

    def shard_pids(self) -> dict[int, int]:
        """Process id of the slot each shard ran on last (for operators and tests)."""
        return {shard: ray.get(slot.handle.pid.remote()) for shard, slot in sorted(dict(self.home).items())}

    def close(self) -> None:
        for slot in list(self.slots):
            self._drop(slot)
        self.queue.clear()
        self.home.clear()


# -- connecting ---------------------------------------------------------------------------------
def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a Ray address to probe, or None for ``auto``/``local``/unparsable."""
    match = re.fullmatch(r"(?:ray://|https?://)?\[?([^\]/]+?)\]?:(\d{1,5})/?", address.strip())
    return (match[1], int(match[2])) if match else None


def _init(**kwargs: Any) -> None:
    """``ray.init`` with worker output sent to this process (a Ray job's log), in the
    format and at the level this process logs (JSON: Ray's logging config, which also
    keeps Ray from prefixing worker lines, so each stays one JSON object)."""
    level, log_format = log_settings()
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no colour codes in a job's log file
    root = logging.getLogger()
    handlers, root_level = list(root.handlers), root.level
    if log_format == "json":
        kwargs["logging_config"] = ray.LoggingConfig(encoding="JSON", log_level=logging.getLevelName(level))
    try:
        ray.init(log_to_driver=True, **kwargs)
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:  # Ray's, doubling this process's own
            root.removeHandler(handler)
        root.setLevel(root_level)
    # Ray folds lines that differ only in numbers, from different workers, into one
    # "[repeated Nx across cluster]" line: shard 1's and shard 2's records would be lost, and a
    # JSON line would be broken. The flag is read at import (RAY_DEDUP_LOGS), so it is set here.
    with contextlib.suppress(Exception):
        from ray._private import ray_logging

        ray_logging.RAY_DEDUP_LOGS = False


def connect(address: str, timeout: float = 30.0) -> None:
    """``ray.init(address=...)``, failing within ``timeout`` seconds when nothing answers there
    (``ray.init`` alone retries for minutes). Worker output reaches this process (see
    :func:`_init`).

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
        _init(address=address)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        hint = ""
        if os.environ.get("RAY_AUTH_MODE") != "token" or not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
            hint = (" (a cluster with token authentication, Ray's default for new clusters from 2.60, needs "
                    "RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)")
        raise ClusterUnavailableError(f"cannot connect to the Ray cluster at {address}: {exc}{hint}") from None


@contextlib.contextmanager
def ray_session(cluster: ClusterConfig | None = None) -> Iterator[None]:
    """Use the running Ray session, or connect/start one for the duration of the block.

    ``cluster.address`` (or ``RAY_ADDRESS``) connects to an existing cluster, failing after
    ``cluster.connect_timeout_seconds`` if it does not answer; otherwise a private local
    cluster is started (``address="local"``, never a stale one found on disk). Either way
    worker output reaches this process's stderr, as text or JSON like this process's logs.
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
        _init(address="local", include_dashboard=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def ray_pool(cluster: ClusterConfig | None = None, num_shards: int = 1, threads: int = 1) -> Iterator[RayPool]:
    """A :class:`RayPool` inside a :func:`ray_session`; its actors are killed on exit."""
    with ray_session(cluster):
        pool = RayPool(cluster, num_shards, threads=threads)
        try:
            yield pool
        finally:
            pool.close()
