"""OHS fine-tuning (the optimised hybrid strategy's amendment, SPEC 2.2): after a direct
parameter update, fine-tune on retained data with a small learning rate until the training
loss stops improving (by less than ``min_delta`` over ``patience`` epochs), within an epoch
cap. The coordinator passes it the retained samples of a shard's last m slices.

SPEC 2.2 proposes a validation-loss criterion; raysisa watches the fine-tuning loss, which
needs no held-out data on the shard (a documented deviation)."""

from __future__ import annotations

from pydantic import Field

from raysisa.methods.base import Need, OptimArgs, Phase, UnlearnContext, UnlearnMethod, cross_entropy, register_method


class OhsArgs(OptimArgs):
    """Args: ``epochs`` is the cap; ``min_delta`` and ``patience`` the plateau rule."""

    epochs: int = Field(8, ge=0, le=10_000)
    lr: float = Field(0.005, gt=0, le=10)
    min_delta: float = Field(1e-3, ge=0)
    patience: int = Field(2, ge=1)


@register_method
class Ohs(UnlearnMethod):
    name = "ohs"
    summary = "OHS: fine-tune on retained data until the loss plateaus (small lr, epoch cap)"
    Args = OhsArgs
    base_needs = frozenset({Need.RETAIN})

    def phases(self, ctx: UnlearnContext, epoch: int) -> list[Phase]:
        retain = ctx.split(Need.RETAIN)
        return [Phase(retain.x, retain.y, cross_entropy)]

    def converged(self, epoch: int, losses: list[float]) -> bool:
        patience = self.args.patience
        if len(losses) <= patience:
            return False
        return losses[-patience - 1] - min(losses[-patience:]) < self.args.min_delta
