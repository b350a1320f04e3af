"""FT: fine-tune the trained model on the retain set (SPEC 3.3). Forgetting comes only from
catastrophic forgetting of what the retain set does not reinforce."""

from __future__ import annotations

from pydantic import Field

from raysisa.methods.base import Need, Phase, UnlearnContext, cross_entropy, register_method
from raysisa.methods.localized import LocalizedArgs, LocalizedMethod


class FinetuneArgs(LocalizedArgs):
    epochs: int = Field(10, ge=0, le=10_000)
    lr: float = Field(0.01, gt=0, le=10)


@register_method
class Finetune(LocalizedMethod):
    name = "finetune"
    summary = "FT: keep training on the retain set with cross-entropy (10 epochs, lr 0.01)"
    Args = FinetuneArgs
    base_needs = frozenset({Need.RETAIN})

    def phases(self, ctx: UnlearnContext, epoch: int) -> list[Phase]:
        retain = ctx.split(Need.RETAIN)
        return [Phase(retain.x, retain.y, cross_entropy)]
