"""The one unlearning loop: prepare, then epochs of phases through
:func:`raysisa.training.train_epoch`, with the method's hooks and the prune mask.

Determinism: the loop seeds torch's global RNG from the context's seed before
``prepare`` and gives every (epoch, phase) its own derived seed, so a method run twice on
the same inputs produces bit-identical weights on the same hardware.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from raysisa.errors import ConfigError
from raysisa.training import derive_seed, train_epoch
from raysisa.config import ModelConfig
from raysisa.data.samples import DatasetInfo
from raysisa.methods.base import Need, Split, UnlearnContext, UnlearnMethod
from raysisa.methods.masks import MaskHook

__all__ = ["UnlearnOutcome", "run_method", "iterate_method", "cosine_lr", "make_context"]


@dataclass
class UnlearnOutcome:
    """What running a method cost and did."""

    method: str
    args: dict[str, Any]
    seed: int
    setup_seconds: float = 0.0
    unlearn_seconds: float = 0.0
    epochs: int = 0
    steps: int = 0
    sample_grads: int = 0  # samples through a training step, summed over epochs and phases
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cosine_lr(lr: float, eta_min: float, epoch: int, epochs: int) -> float:
    """CosineAnnealingLR stepped per epoch (T_max = epochs)."""
    import math

    return eta_min + (lr - eta_min) * 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))


def run_method(method: UnlearnMethod, ctx: UnlearnContext) -> UnlearnOutcome:
    """Apply ``method`` to ``ctx.model`` in place and report timings.

    Raises:
        ConfigError: ``method`` retrains exactly (use the SISA path for it).
    """
    outcome = None
    for outcome in iterate_method(method, ctx):  # noqa: B007 - the last one is the result
        pass
    assert outcome is not None  # the generator always yields at least once
    return outcome


def iterate_method(method: UnlearnMethod, ctx: UnlearnContext) -> Iterator[UnlearnOutcome]:
    """:func:`run_method` one step at a time: yields the outcome so far after ``prepare``
    (``outcome.epochs == 0``) and after every epoch, with ``ctx.model`` holding the weights
    of that moment (a Tune trial scores them and reports once per epoch). The model is left
    in eval mode after the last step.

    Raises:
        ConfigError: ``method`` retrains exactly (use the SISA path for it).
    """
    if method.retrains:
        raise ConfigError(f"method {method.name!r} retrains exactly; run it through the SISA path (SisaRun.unlearn)")
    args = method.args
    outcome = UnlearnOutcome(method.name, args.to_dict(), ctx.seed)
    model = ctx.model.to(ctx.device)

    started = time.perf_counter()
    torch.manual_seed(derive_seed(ctx.seed, 0, 0))
    method.prepare(ctx)
    prune = MaskHook(model, ctx.prune_mask, {n: torch.zeros_like(m, dtype=torch.float32) for n, m in ctx.prune_mask.items()}) if ctx.prune_mask else None
    if prune:
        prune.apply()  # a one-shot update in prepare() must not revive pruned weights
    outcome.setup_seconds = time.perf_counter() - started
    outcome.notes = dict(ctx.notes)
    if not args.epochs:
        model.eval()
    yield outcome
    if not args.epochs:
        return

    hooks = [*method.hooks(ctx), *([prune] if prune else [])]
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    augment = ctx.augment if args.augment is None else args.augment
    losses: list[float] = []
    for epoch in range(args.epochs):
        started = time.perf_counter()
        lr = args.lr if args.schedule == "constant" else cosine_lr(args.lr, args.eta_min_ratio * args.lr, epoch, args.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        seen, total = 0, 0.0
        for index, phase in enumerate(method.phases(ctx, epoch)):
            stats = train_epoch(
                model,
                optimizer,
                phase.x,
                phase.y,
                batch_size=args.batch_size,
                seed=derive_seed(ctx.seed, epoch + 1, index),
                augment=augment,
                loss_fn=phase.loss,
                hooks=hooks,
                device=ctx.device,
                extra=phase.extra,
            )
            outcome.steps += stats.batches
            outcome.sample_grads += stats.samples
            seen, total = seen + stats.samples, total + stats.loss_sum
        losses.append(total / max(seen, 1))
        outcome.epochs = epoch + 1
        outcome.notes = dict(ctx.notes)
        last = epoch + 1 == args.epochs or method.converged(epoch, losses)
        if last:
            model.eval()
        outcome.unlearn_seconds += time.perf_counter() - started
        yield outcome
        if last:
            return


def make_context(
    method: UnlearnMethod,
    model: nn.Module,
    info: DatasetInfo,
    model_config: ModelConfig,
    seed: int,
    *,
    x: torch.Tensor,
    y: torch.Tensor,
    ids: np.ndarray,
    forget_ids: np.ndarray,
    test: Split | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    prune_mask: dict[str, torch.Tensor] | None = None,
    augment: bool = False,
    device: str = "cpu",
) -> UnlearnContext:
    """A context holding only what ``method`` declares it needs.

    ``(x, y, ids)`` are the model's training samples; those whose id is in ``forget_ids``
    form the forget split, the others the retain split.
    """
    needs = method.needs
    is_forget = np.isin(ids, forget_ids)

    def split(mask: np.ndarray) -> Split:
        rows = torch.from_numpy(np.flatnonzero(mask))
        return Split(x[rows], y[rows], ids[mask])

    return UnlearnContext(
        model=model,
        info=info,
        model_config=model_config,
        seed=seed,
        forget=split(is_forget) if Need.FORGET in needs else None,
        retain=split(~is_forget) if Need.RETAIN in needs else None,
        test=test if Need.TEST in needs else None,
        init_state=init_state if Need.INIT_WEIGHTS in needs else None,
        prune_mask=prune_mask,
        augment=augment,
        device=device,
    )
