"""GA: gradient ascent on the forget set, i.e. minimise −CE on D_f (SPEC 3.3)."""

from __future__ import annotations

from pydantic import Field

from raysisa.methods.base import Need, OptimArgs, Phase, UnlearnContext, UnlearnMethod, cross_entropy, negated, register_method


class GradAscentArgs(OptimArgs):
    epochs: int = Field(5, ge=0, le=10_000)
    lr: float = Field(1e-4, gt=0, le=10)


@register_method
class GradAscent(UnlearnMethod):
    name = "grad_ascent"
    summary = "GA: maximise the cross-entropy of the forget set (5 epochs, lr 1e-4)"
    Args = GradAscentArgs
    base_needs = frozenset({Need.FORGET})

    def phases(self, ctx: UnlearnContext, epoch: int) -> list[Phase]:
        forget = ctx.split(Need.FORGET)
        return [Phase(forget.x, forget.y, negated(cross_entropy))]
