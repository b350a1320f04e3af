"""The built-in quantization schemes, registered on import of :mod:`raysisa.quant`.

- ``lsq``: Learned Step Size Quantization, written here (:mod:`raysisa.quant.lsq`).
- ``brevitas``: Brevitas' QuantConv2d with learned (log-domain) per-tensor scales
  initialised from statistics (:mod:`raysisa.quant.brevitas_scheme`, imported on first use).

The :class:`~raysisa.quant.base.Scheme` protocol and the registry functions are in
:mod:`raysisa.quant.base`; this module re-exports them.
"""

from __future__ import annotations

import torch
from torch import nn

from raysisa.data.samples import DatasetInfo
from raysisa.quant.base import SCHEMES, SUPPORTED_BITS, Scheme, get_scheme, list_schemes, register_scheme

__all__ = ["Scheme", "SCHEMES", "register_scheme", "list_schemes", "get_scheme", "SUPPORTED_BITS"]


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
