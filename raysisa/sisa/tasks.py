"""The contract between a driver and a shard's worker: a small union of typed tasks.

A driver (the SISA run, the coordinator, the comparison harness) asks shard ``k`` for work
by handing a task to :meth:`raysisa.sisa.pool.ShardPool.submit`; the worker executes it
with :meth:`raysisa.sisa.shard.ShardWorker.run`, which dispatches on the task's type:

- :class:`TrainSlice` -> :class:`SliceReport`: make sure checkpoint ``slice`` of the
  shard's current data exists, training it from checkpoint ``slice - 1`` if not;
- :class:`ApplyUpdate` -> :class:`UpdateResult`: run an approximate unlearning method on
  the shard's model and return the new weights (the store is not touched);
- :class:`Predict` -> a tensor of softmax probabilities of one of the shard's models;
- :class:`RewindRetrain` -> the weights of the shard's model pruned by a mask, rewound to
  an early epoch of its training and retrained (prune-first's OMP; the store is not touched).

Tasks are frozen values, pickled to Ray actors as they are. Each names the run and the
committed version it is about (:class:`RunAt`), so one worker can serve several runs and
reads the one commit the driver works with, without listing the commit log. Every task is
idempotent: a retried task gives the same result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from raysisa.config import StoreConfig
from raysisa.store import CheckpointRef

__all__ = [
    "RunAt",
    "MethodCall",
    "TrainSlice",
    "ApplyUpdate",
    "Predict",
    "RewindRetrain",
    "ShardTask",
    "SliceReport",
    "UpdateResult",
]

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class RunAt:
    """A run (its store and fingerprint) at one committed version."""

    store: StoreConfig
    fingerprint: str
    version: int


@dataclass(frozen=True)
class MethodCall:
    """An unlearning method by registry name with its (validated) hyperparameters."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, method: Any) -> MethodCall:
        """The call of an :class:`~raysisa.methods.base.UnlearnMethod` instance."""
        described = method.describe()
        return cls(described["method"], dict(described["args"]))


@dataclass(frozen=True)
class TrainSlice:
    """Make sure checkpoint ``slice`` (0..R) of the shard's current data exists."""

    run: RunAt
    slice: int


@dataclass(frozen=True)
class ApplyUpdate:
    """Apply ``method`` to the shard's model, forgetting ``forget_ids`` (the shard's other
    samples are the retained data).

    Attributes:
        base: start from these weights, or this checkpoint/overlay (default: the shard's
            latest exact checkpoint).
        prune_mask: weights that must stay zero (prune-first).
        retain_slices: use only these slices' samples (1-based) as data (OHS fine-tuning).
    """

    run: RunAt
    method: MethodCall
    forget_ids: np.ndarray
    seed: int
    base: State | CheckpointRef | None = None
    prune_mask: State | None = None
    retain_slices: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Predict:
    """Softmax probabilities of checkpoint ``ref`` (default: the shard's latest exact one)
    on ``x`` (default: the run's test split, read by the worker)."""

    run: RunAt
    ref: CheckpointRef | None = None
    x: torch.Tensor | None = None


@dataclass(frozen=True)
class RewindRetrain:
    """OMP's rewind-and-retrain (Unlearn-Sparse ``rewind_lt``) on the shard's own data and
    recipe: replay epochs 0..``rewind_epoch``-1 of the shard's training from its initial
    checkpoint (bit-identical on CPU), zero the weights outside ``mask``, then train
    ``epochs`` epochs with a fresh optimiser, the LR schedule at epochs ``rewind_epoch``,
    ``rewind_epoch`` + 1, ... and the pruned weights held at zero. Returns the state dict.
    Needs a run of one slice per shard."""

    run: RunAt
    mask: State
    rewind_epoch: int
    epochs: int


ShardTask = TrainSlice | ApplyUpdate | Predict | RewindRetrain


@dataclass(frozen=True)
class SliceReport:
    """What one :class:`TrainSlice` did. ``trained`` is False when the checkpoint existed."""

    shard: int
    slice: int
    key: str
    trained: bool
    epochs: int = 0
    samples: int = 0
    sample_grads: int = 0
    seconds: float = 0.0
    mean_loss: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class UpdateResult:
    """What one :class:`ApplyUpdate` produced: the new weights and what it cost
    (:class:`~raysisa.methods.engine.UnlearnOutcome`)."""

    tensors: State
    outcome: Any

    @property
    def seconds(self) -> float:
        return self.outcome.setup_seconds + self.outcome.unlearn_seconds
