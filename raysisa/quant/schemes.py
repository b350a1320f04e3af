"""Quantization schemes: a name -> (weight quantizer, activation quantizer) registry.

- ``lsq``: Learned Step Size Quantization, written here (:mod:`raysisa.quant.lsq`).

Every scheme quantizes weights to a signed ``w_bits`` grid and activations (the inputs of
quantized convolutions) to a signed ``a_bits`` grid; 32 means full precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from raysisa.quant.lsq import LsqQuantizer
from raysisa.registry import Registry

__all__ = ["Scheme", "SCHEMES", "register_scheme", "list_schemes", "SUPPORTED_BITS"]

SUPPORTED_BITS = (2, 4, 8, 32)


@dataclass(frozen=True)
class Scheme:
    """How one scheme quantizes: factories taking a bit width."""

    name: str
    weight: Callable[[int], nn.Module]
    activation: Callable[[int], nn.Module]
    summary: str = ""


SCHEMES: Registry[Scheme] = Registry("quantization scheme")


def register_scheme(scheme: Scheme) -> Scheme:
    return SCHEMES.register(scheme.name)(scheme)


def list_schemes() -> list[str]:
    return SCHEMES.names()


register_scheme(Scheme("lsq", LsqQuantizer, LsqQuantizer, "LSQ: learned per-tensor step sizes (Esser et al. 2020)"))
