"""Where shard work runs: in this process (:class:`LocalPool`) or in Ray actors.

The driver logic in :mod:`raysisa.sisa.run` talks to a :class:`ShardPool` only, so the
whole SISA flow runs (and is unit-tested) without Ray; :class:`raysisa.sisa.actors.RayPool`
puts a pool of Ray actors that serve any shard behind the same methods. What a pool runs is a typed task of
:mod:`raysisa.sisa.tasks`, executed by the shard's :meth:`ShardWorker.run`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from raysisa.sisa.shard import ShardWorker
from raysisa.sisa.tasks import ShardTask

__all__ = ["ShardPool", "LocalPool"]


class ShardPool(Protocol):
    """Runs shard tasks, asynchronously where it can."""

    def start(self, shards: Sequence[int]) -> None:
        """Get the workers of ``shards`` ready at once (Ray: create their actors together)."""
        ...

    def concurrency(self, threads_per_shard: int) -> int:
        """How many shards may train at once."""
        ...

    def submit(self, shard: int, task: ShardTask) -> Any:
        """Start ``ShardWorker(shard).run(task)``; return a handle."""
        ...

    def wait(self, handles: Sequence[Any]) -> list[Any]:
        """Block until at least one handle is done; return the done ones."""
        ...

    def result(self, handle: Any) -> Any:
        """The call's return value, or its exception raised here."""
        ...

    def close(self) -> None: ...


@dataclass(eq=False)
class _Done:
    value: Any = None
    error: BaseException | None = None


class LocalPool:
    """Runs every call immediately, in this process, one shard at a time."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.workers: dict[int, ShardWorker] = {}

    def start(self, shards: Sequence[int]) -> None:
        for shard in shards:
            self.workers.setdefault(shard, ShardWorker(shard, self.device))

    def concurrency(self, threads_per_shard: int) -> int:
        return 1

    def submit(self, shard: int, task: ShardTask) -> _Done:
        worker = self.workers.setdefault(shard, ShardWorker(shard, self.device))
        try:
            return _Done(value=worker.run(task))
        except Exception as exc:  # noqa: BLE001 - handed back through result()
            return _Done(error=exc)

    def wait(self, handles: Sequence[_Done]) -> list[_Done]:
        return list(handles)

    def result(self, handle: _Done) -> Any:
        if handle.error is not None:
            raise handle.error
        return handle.value

    def close(self) -> None:
        self.workers.clear()
