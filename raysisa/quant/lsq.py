"""LSQ — Learned Step Size Quantization (Esser et al., ICLR 2020), as Q-MUL uses it (SPEC 4.2).

    x̂ = round(clamp(x / s, Q_n, Q_p)) · s        Q_n = −2^(b−1), Q_p = 2^(b−1) − 1

- The rounding passes gradients straight through (STE) inside the clamp range; outside
  it, x gets no gradient. Both tricks are autograd functions with exact forwards, so the
  fake-quantized tensor equals its integer codes times s bit for bit.
- The step s is learned; its gradient is scaled by g = 1/√(numel · Q_p).
- s is initialised on the first forward in training mode as 2·mean|x|/√Q_p. The
  ``initialized`` buffer records that, so a checkpoint restored after initialisation
  never re-initialises, and one taken before it initialises exactly as the original run
  would have.

Written from the LSQ paper; no code was copied.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LsqQuantizer", "lsq_quantize", "qrange"]


def qrange(bits: int) -> tuple[int, int]:
    """Signed integer range of ``bits`` bits: (−2^(b−1), 2^(b−1) − 1)."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


class _GradScale(torch.autograd.Function):
    """Identity forward (bit-exact); gradient multiplied by ``scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


class _RoundSTE(torch.autograd.Function):
    """round() forward (bit-exact); identity gradient (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.round()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def _grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    return _GradScale.apply(x, scale)


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return _RoundSTE.apply(x)


def lsq_quantize(x: torch.Tensor, step: torch.Tensor, bits: int, grad_scale: float) -> torch.Tensor:
    """Fake-quantise ``x`` with step ``step`` at ``bits`` bits (LSQ forward and gradients)."""
    q_n, q_p = qrange(bits)
    s = _grad_scale(step, grad_scale)
    return _round_ste(torch.clamp(x / s, q_n, q_p)) * s


class LsqQuantizer(nn.Module):
    """A per-tensor LSQ quantizer with a learned step size.

    Args:
        bits: bit width (2..8; 32 would mean no quantization and is handled by callers).
    """

    def __init__(self, bits: int) -> None:
        super().__init__()
        if not 2 <= bits <= 16:
            raise ValueError(f"LSQ supports 2..16 bits, got {bits}")
        self.bits = bits
        self.step = nn.Parameter(torch.ones(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def extra_repr(self) -> str:
        return f"bits={self.bits}"

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """s = 2·mean|x|/√Q_p (kept away from zero)."""
        _, q_p = qrange(self.bits)
        self.step.copy_((2 * x.detach().abs().mean() / math.sqrt(q_p)).clamp_min(1e-8))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not bool(self.initialized):
            self.initialize(x)
        _, q_p = qrange(self.bits)
        return lsq_quantize(x, self.step, self.bits, 1.0 / math.sqrt(x.numel() * q_p))

    @torch.no_grad()
    def integers(self, x: torch.Tensor) -> torch.Tensor:
        """The integer codes round(clamp(x/s)) as int32."""
        q_n, q_p = qrange(self.bits)
        return torch.clamp(x / self.step, q_n, q_p).round().to(torch.int32)
