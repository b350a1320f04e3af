"""NegGrad+: descend on the retain set while ascending on the forget set in the same step,
loss = β·CE(retain batch) − (1−β)·CE(forget batch) (DEL's baseline: β = 0.99)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from raysisa.training import derive_seed
from raysisa.methods.base import Need, Phase, Split, UnlearnContext, cross_entropy, register_method
from raysisa.methods.localized import LocalizedArgs, LocalizedMethod


class NegGradPlusArgs(LocalizedArgs):
    epochs: int = Field(5, ge=0, le=10_000)
    lr: float = Field(0.01, gt=0, le=10)
    beta: float = Field(0.99, ge=0, le=1)


class BatchCycler:
    """Endless seeded batches of a split, reshuffled on every pass (wrapping around)."""

    def __init__(self, split: Split, batch_size: int, seed: int) -> None:
        self.split, self.batch_size = split, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.randperm(len(split), generator=self.generator), 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        take = []
        while sum(map(len, take)) < min(self.batch_size, len(self.split)):
            if self.pos >= len(self.order):
                self.order, self.pos = torch.randperm(len(self.split), generator=self.generator), 0
            need = self.batch_size - sum(map(len, take))
            take.append(self.order[self.pos : self.pos + need])
            self.pos += len(take[-1])
        idx = torch.cat(take)
        return self.split.x[idx], self.split.y[idx]


@register_method
class NegGradPlus(LocalizedMethod):
    name = "neggrad_plus"
    summary = "NegGrad+: β·CE on retain minus (1−β)·CE on forget, per step (β 0.99)"
    Args = NegGradPlusArgs
    base_needs = frozenset({Need.FORGET, Need.RETAIN})

    def phases(self, ctx: UnlearnContext, epoch: int) -> list[Phase]:
        retain = ctx.split(Need.RETAIN)
        forget = BatchCycler(ctx.split(Need.FORGET), self.args.batch_size, derive_seed(ctx.seed, epoch, 7))
        beta, device = self.args.beta, ctx.device

        def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            fx, fy = forget.next()
            retain_loss = cross_entropy(model, x, y)
            forget_loss = cross_entropy(model, fx.to(device), fy.to(device))
            return beta * retain_loss - (1.0 - beta) * forget_loss

        return [Phase(retain.x, retain.y, loss)]
