"""Parameter masks: one-shot magnitude pruning (OMP), DEL's localisation, and the hook that
keeps masked-out parameters fixed through training.

A mask is a ``{parameter name: bool tensor}`` dict; ``True`` marks entries that may change
(or, for pruning, that survive). Parameters absent from a mask are unconstrained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raysisa.quant import quantizer_parameter_names

__all__ = [
    "MaskHook",
    "omp_prune",
    "conv_weight_names",
    "classifier_names",
    "localize",
    "mask_size",
    "sparsity",
]


class MaskHook:
    """Keep the entries outside ``mask`` at ``anchor`` (default: their current values).

    After backward their gradients are zeroed (so momentum never builds up on them); after
    each optimiser step they are put back exactly, whatever the optimiser did (weight decay
    included). Pruned weights therefore stay exactly zero, and DEL's frozen weights exactly
    as they were.
    """

    def __init__(self, model: nn.Module, mask: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor] | None = None) -> None:
        params = dict(model.named_parameters())
        unknown = set(mask) - set(params)
        if unknown:
            raise KeyError(f"mask names parameters the model does not have: {sorted(unknown)[:3]}")
        self.entries = []
        for name, keep in mask.items():
            param = params[name]
            keep = keep.to(device=param.device, dtype=torch.bool)
            fixed = (anchor[name] if anchor is not None else param.detach()).to(param.device).clone()
            self.entries.append((param, keep, fixed))

    @torch.no_grad()
    def apply(self) -> None:
        for param, keep, fixed in self.entries:
            param.copy_(torch.where(keep, param, fixed))

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        for param, keep, _ in self.entries:
            if param.grad is not None:
                param.grad.mul_(keep)

    def after_step(self, model: nn.Module) -> None:
        self.apply()


def conv_weight_names(model: nn.Module) -> list[str]:
    """Names of every Conv2d weight (what OMP prunes; FC, BN and biases never are)."""
    return [f"{mod_name}.weight" if mod_name else "weight" for mod_name, mod in model.named_modules() if isinstance(mod, nn.Conv2d)]


def classifier_names(model: nn.Module) -> list[str]:
    """Parameter names of the last ``nn.Linear`` (the classifier head)."""
    last = None
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = mod_name
    if last is None:
        return []
    return [f"{last}.{p}" for p, _ in dict(model.named_modules())[last].named_parameters()]


@torch.no_grad()
def omp_prune(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """One-shot global magnitude pruning of all Conv2d weights (SPEC 3.2).

    Ranks |w| over every conv weight together and zeroes exactly ``round(sparsity * N)``
    of them (ties broken by position), in place. Returns the survival mask.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    params = dict(model.named_parameters())
    names = conv_weight_names(model)
    flat = torch.cat([params[n].detach().abs().flatten() for n in names])
    n_prune = round(sparsity * flat.numel())
    keep_flat = torch.ones(flat.numel(), dtype=torch.bool)
    if n_prune:
        order = torch.argsort(flat, stable=True)
        keep_flat[order[:n_prune]] = False
    mask, start = {}, 0
    for name in names:
        p = params[name]
        mask[name] = keep_flat[start : start + p.numel()].view_as(p).to(p.device)
        start += p.numel()
        p.mul_(mask[name])
    return mask


def sparsity(model: nn.Module, names: list[str] | None = None) -> float:
    """Fraction of exactly-zero entries among the named parameters (default: conv weights)."""
    params = dict(model.named_parameters())
    names = names if names is not None else conv_weight_names(model)
    total = sum(params[n].numel() for n in names)
    zeros = sum(int((params[n] == 0).sum()) for n in names)
    return zeros / max(total, 1)


def mask_size(mask: dict[str, torch.Tensor]) -> int:
    return sum(int(m.sum()) for m in mask.values())


def localize(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float,
    *,
    h_frac: float = 0.1,
    batch_size: int = 128,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, torch.Tensor]:
    """DEL's localisation (SPEC 5.2): the critical parameters for forgetting ``(x, y)``.

    1. In eval mode, accumulate S_p = Σ_batches θ_p ⊙ ∇_p(−CE) over shuffled batches of the
       forget set (``drop_last``; one batch if the set is smaller than ``batch_size``).
    2. For tensors with ndim > 1, score each output channel by the mean of its top-h |S|
       entries (h = max(1, ⌊h_frac · C_out⌋)) and broadcast it over the channel; 1-D tensors
       keep element-wise |S|.
    3. Select the global top ⌊alpha · N⌋ entries over all parameters (no per-layer quota).

    Returns a mask with exactly ⌊alpha · N⌋ ``True`` entries. On a quantized model the
    quantizer state (step sizes, scales) is not a candidate and is left out of the mask
    (so it stays trainable): resetting a step size to a fresh value would wipe its layer.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    was_training = model.training
    model.eval()
    quantizer = quantizer_parameter_names(model)
    params = {n: p for n, p in model.named_parameters() if n not in quantizer}
    scores = {n: torch.zeros_like(p) for n, p in params.items()}
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_batches = max(1, len(x) // batch_size)
    for b in range(n_batches):
        idx = order[b * batch_size : (b + 1) * batch_size]
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():  # callers may hold no_grad
            loss = -F.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
            loss.backward()
        with torch.no_grad():
            for n, p in params.items():
                if p.grad is not None:
                    scores[n] += p.detach() * p.grad
    model.zero_grad(set_to_none=True)
    model.train(was_training)

    element_scores = {}
    for n, s in scores.items():
        s = s.abs()
        if s.ndim > 1:
            rows = s.reshape(s.shape[0], -1)
            h = max(1, int(h_frac * s.shape[0]))
            h = min(h, rows.shape[1])
            channel = rows.topk(h, dim=1).values.mean(dim=1)  # (C_out,)
            s = channel.view(-1, *([1] * (s.ndim - 1))).expand_as(s)
        element_scores[n] = s
    names = list(element_scores)
    flat = torch.cat([element_scores[n].flatten() for n in names])
    budget = int(alpha * flat.numel())
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    if budget:
        keep[torch.argsort(flat, descending=True, stable=True)[:budget]] = True
    mask, start = {}, 0
    for n in names:
        numel = params[n].numel()
        mask[n] = keep[start : start + numel].view_as(params[n]).to(params[n].device)
        start += numel
    return mask
