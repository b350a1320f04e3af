"""IU — influence unlearning with a damped empirical-Fisher inverse Hessian (SPEC 3.3).

At the trained weights θ_o (eval mode):

    v = G_f/(n_f+n_r) − G_r·n_f/((n_f+n_r)·n_r)        G = summed loss gradients
    θ ← θ_o + α·H⁻¹v

H is the damped empirical Fisher of ``samples`` retain examples,
H = λI + (1/n)·Σ g_i g_iᵀ, inverted exactly on that rank-n subspace with the Woodbury
identity: H⁻¹v = (v − Gᵀ(nλI + GGᵀ)⁻¹Gv)/λ, with G the n x P matrix of per-sample
gradients (memory n x P floats: keep ``samples`` small for large models).

This is not the reference's estimator. The reference (Unlearn-Sparse/SalUn ``Wfisher``)
runs WoodFisher's O(P)-memory rank-one recursion over about 1,000 per-sample retain
gradients (batch 1) with damping N = 1000, which only approximates an inverse of a
differently scaled and damped Fisher. The size of H⁻¹v therefore differs from the
reference's by a factor that depends on the model and data, so α values from the papers
(e.g. DEL's 42,000 for CIFAR-10, SPEC 5.4) do not transfer: α (and ``damping``) must come
from a sweep against retraining on the setting at hand (``raysisa sweep``). The default
α = 1 is only a starting point; ``notes["step_norm"]`` reports the size of the step taken.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from raysisa.training import derive_seed
from raysisa.methods.base import Need, OptimArgs, Split, UnlearnContext, UnlearnMethod, register_method


class InfluenceArgs(OptimArgs):
    """Args:
    alpha: scale of the Newton step. Papers' values do not transfer (see the module
        docstring): tune it with a sweep.
    damping: λ of the damped Fisher.
    samples: retain examples in the Fisher estimate.
    """

    epochs: int = Field(0, ge=0, le=0)
    alpha: float = Field(1.0, gt=0)
    damping: float = Field(1.0, gt=0)
    samples: int = Field(256, ge=1, le=100_000)


def _flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])


def summed_gradient(model: nn.Module, split: Split, device: str, batch_size: int = 256) -> torch.Tensor:
    """Σ_i ∇ℓ(x_i) over a split, in eval mode."""
    total = None
    for start in range(0, len(split), batch_size):
        model.zero_grad(set_to_none=True)
        x, y = split.x[start : start + batch_size].to(device), split.y[start : start + batch_size].to(device)
        nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
        g = _flat_grad(model)
        total = g if total is None else total + g
    model.zero_grad(set_to_none=True)
    return total


@register_method
class Influence(UnlearnMethod):
    name = "influence"
    summary = "IU: one Newton step θ + α·H⁻¹v with a damped empirical-Fisher Hessian (WoodFisher)"
    Args = InfluenceArgs
    base_needs = frozenset({Need.FORGET, Need.RETAIN})

    @torch.no_grad()
    def prepare(self, ctx: UnlearnContext) -> None:
        model, device = ctx.model, ctx.device
        forget, retain = ctx.split(Need.FORGET), ctx.split(Need.RETAIN)
        model.eval()
        with torch.enable_grad():
            g_f = summed_gradient(model, forget, device)
            g_r = summed_gradient(model, retain, device)
            n_f, n_r = len(forget), len(retain)
            v = g_f / (n_f + n_r) - g_r * n_f / ((n_f + n_r) * n_r)
            pick = torch.randperm(n_r, generator=torch.Generator().manual_seed(derive_seed(ctx.seed, 17)))
            rows = []
            for i in pick[: self.args.samples].tolist():
                model.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(retain.x[i : i + 1].to(device)), retain.y[i : i + 1].to(device)).backward()
                rows.append(_flat_grad(model))
            model.zero_grad(set_to_none=True)
        g = torch.stack(rows)  # (n, P)
        n, lam = len(rows), self.args.damping
        small = n * lam * torch.eye(n, dtype=g.dtype, device=g.device) + g @ g.T
        h_inv_v = (v - g.T @ torch.linalg.solve(small, g @ v)) / lam
        step = self.args.alpha * h_inv_v
        ctx.notes["step_norm"] = float(step.norm())
        offset = 0
        for p in model.parameters():
            p.add_(step[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
