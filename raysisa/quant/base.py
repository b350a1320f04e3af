"""The protocol every quantization scheme provides, and the scheme registry.

A :class:`Scheme` converts a float model into a quantization-aware one (weights on a
signed ``w_bits`` grid, inputs of quantized convolutions on a signed ``a_bits`` grid; 32 =
full precision), finds its quantized layers, exports a layer's integer codes and scale,
and freezes a layer to compute with given codes (:mod:`raysisa.quant.export`). The
built-in schemes register in :mod:`raysisa.quant.schemes`; the registry itself
(``SCHEMES``) lives in :mod:`raysisa.registry`, below config, which validates
``model.quant.scheme``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from raysisa.config.recipe import SUPPORTED_BITS
from raysisa.data.samples import DatasetInfo
from raysisa.registry import SCHEMES

__all__ = ["Scheme", "SCHEMES", "register_scheme", "list_schemes", "get_scheme", "SUPPORTED_BITS"]


@dataclass(frozen=True)
class Scheme:
    """What a quantization scheme provides.

    convert: (float model, model name, info, w_bits, a_bits) -> quantization-aware model
        (deterministic, no data needed; every state tensor present in ``state_dict()``).
    layers: the quantized layers of a converted model, by module name.
    export_layer: a layer's weight as (integer codes, scale, bits), codes·scale being the
        weight the layer computes with.
    freeze_layer: make a layer compute with given (codes, scale) from now on.
    """

    name: str
    convert: Callable[[nn.Module, str, DatasetInfo, int, int], nn.Module]
    layers: Callable[[nn.Module], dict[str, nn.Module]]
    export_layer: Callable[[nn.Module], tuple[torch.Tensor, torch.Tensor, int]]
    freeze_layer: Callable[[nn.Module, torch.Tensor, torch.Tensor], None]
    summary: str = ""


def register_scheme(name: str, factory: Callable[[], Scheme]) -> None:
    """Register a scheme; ``factory`` builds it on first use (heavy imports stay lazy)."""
    SCHEMES.register(name)(factory)


def list_schemes() -> list[str]:
    return SCHEMES.names()


_BUILT: dict[str, Scheme] = {}


def get_scheme(name: str) -> Scheme:
    if name not in _BUILT:
        _BUILT[name] = SCHEMES.get(name)()
    return _BUILT[name]
