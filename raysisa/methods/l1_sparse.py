"""l1-sparse MU (Jia et al. 2023, SPEC 3.2): fine-tune on the retain set with an l1 penalty
γ_t·‖θ‖₁ over all parameters, γ_t = γ·(1 − t/E) decaying linearly across epochs (constant
within one). Combine with prune-first (OMP) for the paper's "prune first, then unlearn"."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from raysisa.methods.base import Need, OptimArgs, Phase, UnlearnContext, UnlearnMethod, cross_entropy, register_method


class L1SparseArgs(OptimArgs):
    """Args:
    gamma: l1 strength γ (the brief's 5e-4; SPEC 3.4 suggests 1e-4 for random forgetting).
    gamma_schedule: ``decay`` (default, γ(1−t/E)), ``constant`` or ``increase`` (γ(t+1)/E).
    """

    epochs: int = Field(10, ge=0, le=10_000)
    lr: float = Field(0.01, gt=0, le=10)
    gamma: float = Field(5e-4, ge=0, le=1)
    gamma_schedule: Literal["decay", "constant", "increase"] = "decay"


def l1_gamma(gamma: float, epoch: int, epochs: int, schedule: str = "decay") -> float:
    """γ_t of epoch ``epoch`` (0-based): decay gives γ at t=0 and γ/E at t=E−1."""
    if schedule == "constant":
        return gamma
    if schedule == "increase":
        return gamma * (epoch + 1) / epochs
    return gamma * (1.0 - epoch / epochs)


@register_method
class L1Sparse(UnlearnMethod):
    name = "l1_sparse"
    summary = "l1-sparse: retain fine-tuning plus a linearly decaying l1 penalty (γ 5e-4, 10 epochs)"
    Args = L1SparseArgs
    base_needs = frozenset({Need.RETAIN})

    def phases(self, ctx: UnlearnContext, epoch: int) -> list[Phase]:
        retain = ctx.split(Need.RETAIN)
        gamma = l1_gamma(self.args.gamma, epoch, self.args.epochs, self.args.gamma_schedule)

        def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            # Forward first: an uninitialised LSQ quantizer sets its step size in place on it.
            ce = cross_entropy(model, x, y)
            return ce + gamma * sum(p.abs().sum() for p in model.parameters())

        return [Phase(retain.x, retain.y, loss)]
