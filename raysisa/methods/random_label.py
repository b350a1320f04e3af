"""RL: relabel every forget sample with a uniformly random class (it may equal the true
one) and train on the relabelled forget set plus the retain set (SPEC 3.3, SalUn).

``loop: sequential`` (CIFAR-10/SVHN in the reference code) runs a pass over the
relabelled forget set, then a pass over the retain set, every epoch; ``loop: mixed``
(CIFAR-100) runs one pass over their shuffled union.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from raysisa.training import derive_seed
from raysisa.methods.base import Need, Phase, UnlearnContext, cross_entropy, register_method
from raysisa.methods.localized import LocalizedArgs, LocalizedMethod


class RandomLabelArgs(LocalizedArgs):
    epochs: int = Field(10, ge=0, le=10_000)
    lr: float = Field(0.01, gt=0, le=10)
    schedule: Literal["constant", "cosine"] = "cosine"
    loop: Literal["sequential", "mixed"] = "sequential"


def random_labels(ctx: UnlearnContext) -> torch.Tensor:
    """A seeded uniform label in [0, C) for every forget sample (it may equal the true one)."""
    generator = torch.Generator().manual_seed(derive_seed(ctx.seed, 11))
    return torch.randint(0, ctx.info.num_classes, (len(ctx.split(Need.FORGET)),), generator=generator)


@register_method
class RandomLabel(LocalizedMethod):
    name = "random_label"
    summary = "RL: train on forget samples with random labels plus the retain set (10 epochs, lr 0.01, cosine)"
    Args = RandomLabelArgs
    base_needs = frozenset({Need.FORGET, Need.RETAIN})

    def prepare(self, ctx: UnlearnContext) -> None:
        super().prepare(ctx)
        self.labels = random_labels(ctx)

    def phases(self, ctx: UnlearnContext, epoch: int) -> list[Phase]:
        forget, retain = ctx.split(Need.FORGET), ctx.split(Need.RETAIN)
        if self.args.loop == "mixed":
            return [Phase(torch.cat([forget.x, retain.x]), torch.cat([self.labels, retain.y]), cross_entropy)]
        return [Phase(forget.x, self.labels, cross_entropy), Phase(retain.x, retain.y, cross_entropy)]
