"""The unlearning-method protocol and registry.

A method is a small class with a typed ``Args`` config (a pydantic model, so Ray Tune can
sample it) and up to four hooks into the one loop of :mod:`raysisa.methods.engine`:

- ``needs``: which data and state it reads (:class:`Need`); the engine hands it nothing else;
- ``prepare(ctx)``: one-off work before the loop (relabelling, localisation, a Newton step);
- ``phases(ctx, epoch)``: the passes of one epoch, each a :class:`Phase` (samples + loss);
- ``hooks(ctx)``: :class:`~raysisa.training.TrainHook` objects (e.g. gradient masks).

The engine never branches on a method's name; it reads only ``needs``, ``retrains`` and
``args.epochs``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from raysisa.config import ConfigModel, ModelConfig
from raysisa.data.samples import DatasetInfo
from raysisa.errors import ConfigError
from raysisa.registry import Registry
from raysisa.training import LossFn, TrainHook

__all__ = [
    "Need",
    "Split",
    "UnlearnContext",
    "Phase",
    "OptimArgs",
    "UnlearnMethod",
    "METHODS",
    "register_method",
    "get_method",
    "list_methods",
]


class Need(str, enum.Enum):
    """What a method reads."""

    FORGET = "forget"  # the samples to unlearn, with their true labels
    RETAIN = "retain"  # the remaining training samples
    TEST = "test"  # held-out samples
    INIT_WEIGHTS = "init_weights"  # the model's weights before training (SISA slice 0)


@dataclass(frozen=True)
class Split:
    """Samples of one split: normalised images, labels and their ids."""

    x: torch.Tensor
    y: torch.Tensor
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class UnlearnContext:
    """Everything a method may use. Splits a method did not declare are ``None``.

    ``model`` is the caller's copy of the trained model; methods change it in place.
    ``prune_mask`` marks the weights that survive pruning (prune-first): the engine keeps
    every other weight at zero through unlearning.
    """

    model: nn.Module
    info: DatasetInfo
    model_config: ModelConfig
    seed: int
    forget: Split | None = None
    retain: Split | None = None
    test: Split | None = None
    init_state: dict[str, torch.Tensor] | None = None
    prune_mask: dict[str, torch.Tensor] | None = None
    augment: bool = False
    device: str = "cpu"
    notes: dict[str, Any] = field(default_factory=dict)  # what a method reports back (e.g. mask size)

    def split(self, need: Need) -> Split:
        value = getattr(self, need.value)
        if value is None:
            raise RuntimeError(f"the method did not declare {need.value!r} in its needs")  # a method bug
        return value


@dataclass(frozen=True)
class Phase:
    """One pass over ``(x, y)`` in mini-batches, minimising ``loss`` (one step per batch)."""

    x: torch.Tensor
    y: torch.Tensor
    loss: LossFn
    extra: Sequence[torch.Tensor] = ()


class OptimArgs(ConfigModel):
    """Hyperparameters every looped method shares (SGD, as in the OPTML protocol).

    Args:
        epochs: passes of the method's loop (0: no loop).
        lr: learning rate.
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
        batch_size: mini-batch size.
        schedule: ``constant``, or ``cosine`` from ``lr`` down to ``eta_min_ratio * lr``.
        eta_min_ratio: floor of the cosine schedule, as a fraction of ``lr``.
        augment: random crop + flip while unlearning (``None``: as the model was trained).
    """

    epochs: int = Field(10, ge=0, le=10_000)
    lr: float = Field(0.01, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, le=1)
    batch_size: int = Field(256, ge=1)
    schedule: Literal["constant", "cosine"] = "constant"
    eta_min_ratio: float = Field(0.0, ge=0, le=1)
    augment: bool | None = None


class UnlearnMethod:
    """Base class of approximate unlearning methods (see the module docstring).

    Subclasses set ``name``, ``summary`` and ``Args``, and override the hooks they need.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    Args: ClassVar[type[OptimArgs]] = OptimArgs
    retrains: ClassVar[bool] = False  # True: exact retraining, run through the SISA path
    base_needs: ClassVar[frozenset[Need]] = frozenset()

    def __init__(self, args: OptimArgs | dict[str, Any] | None = None, **overrides: Any) -> None:
        if isinstance(args, OptimArgs):
            args = args.to_dict()
        try:
            self.args = self.Args(**{**(args or {}), **overrides})
        except ConfigError as exc:
            raise ConfigError(f"method {self.name!r}: {exc}") from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.args!r})"

    @property
    def needs(self) -> frozenset[Need]:
        return self.base_needs

    def describe(self) -> dict[str, Any]:
        """Name and every hyperparameter, for reports."""
        return {"method": self.name, "args": self.args.to_dict()}

    def prepare(self, ctx: UnlearnContext) -> None:
        """One-off work before the loop (timed as setup)."""

    def phases(self, ctx: UnlearnContext, epoch: int) -> list[Phase]:
        """The passes of ``epoch``."""
        return []

    def hooks(self, ctx: UnlearnContext) -> list[TrainHook]:
        return []

    def converged(self, epoch: int, losses: list[float]) -> bool:
        """Stop the loop early? ``losses`` are the mean training losses of epochs 0..epoch."""
        return False


METHODS: Registry[type[UnlearnMethod]] = Registry("unlearning method")


def register_method(cls: type[UnlearnMethod]) -> type[UnlearnMethod]:
    """Class decorator registering a method under ``cls.name``. Duplicates fail."""
    return METHODS.register(cls.name)(cls)


def list_methods() -> list[str]:
    """Names of all registered unlearning methods, sorted."""
    return METHODS.names()


def get_method(name: str, args: dict[str, Any] | None = None, **overrides: Any) -> UnlearnMethod:
    """An instance of method ``name`` with validated hyperparameters.

    Raises:
        ConfigError: unknown name (listing the valid ones) or invalid hyperparameters.
    """
    if name not in METHODS:
        raise ConfigError(METHODS.unknown(name))
    return METHODS.get(name)(args, **overrides)


# Loss helpers shared by several methods --------------------------------------------------


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def negated(loss: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """The same loss with its sign flipped (gradient ascent)."""
    return lambda model, *batch: -loss(model, *batch)


def scaled(loss: Callable[..., torch.Tensor], weight: float) -> Callable[..., torch.Tensor]:
    """The same loss times ``weight`` (e.g. AGR's per-split weights)."""
    return lambda model, *batch: weight * loss(model, *batch)
