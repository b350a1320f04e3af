"""Quantization schemes behind one small protocol, and their registry.

A :class:`Scheme` converts a float model into a quantization-aware one (weights on a
signed ``w_bits`` grid, inputs of quantized convolutions on a signed ``a_bits`` grid; 32 =
full precision), finds its quantized layers, exports a layer's integer codes and scale,
and freezes a layer to compute with given codes (:mod:`raysisa.quant.export`).

- ``lsq``: Learned Step Size Quantization, written here (:mod:`raysisa.quant.lsq`).
- ``brevitas``: Brevitas' QuantConv2d with learned (log-domain) per-tensor scales
  initialised from statistics (:mod:`raysisa.quant.brevitas_scheme`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from raysisa.data.samples import DatasetInfo
from raysisa.registry import Registry

__all__ = ["Scheme", "SCHEMES", "register_scheme", "list_schemes", "get_scheme", "SUPPORTED_BITS"]

SUPPORTED_BITS = (2, 4, 8, 32)


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


SCHEMES: Registry[Scheme | Callable[[], Scheme]] = Registry("quantization scheme")


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


def _lsq() -> Scheme:
    from raysisa.quant.lsq import LsqQuantizer
    from raysisa.quant.modules import QuantConv2d, quantize_model, quantized_layers

    def convert(model: nn.Module, model_name: str, info: DatasetInfo, w_bits: int, a_bits: int) -> nn.Module:
        return quantize_model(model, model_name, w_bits, a_bits, LsqQuantizer, LsqQuantizer)

    def export(layer: QuantConv2d) -> tuple[torch.Tensor, torch.Tensor, int]:
        quantizer = layer.weight_quant
        with torch.no_grad():
            return quantizer.integers(layer.weight), quantizer.step.detach().clone(), quantizer.bits

    def freeze(layer: QuantConv2d, codes: torch.Tensor, scale: torch.Tensor) -> None:
        layer.frozen_integers = (codes, scale)

    return Scheme("lsq", convert, quantized_layers, export, freeze, "LSQ: learned per-tensor step sizes (Esser et al. 2020)")


def _brevitas() -> Scheme:
    from raysisa.quant import brevitas_scheme

    return brevitas_scheme.SCHEME


register_scheme("lsq", _lsq)
register_scheme("brevitas", _brevitas)
