"""Integer export of quantized models, and evaluation from the exported integers.

:func:`export_integers` turns every quantized layer's latent float weight into its integer
codes (int8, on the scheme's signed grid) plus the scale they multiply; everything else
(full-precision layers, BatchNorm, activation step sizes) travels as the float state dict
without the latent quantized weights. :func:`model_from_integers` rebuilds a model that
computes with those integers; its predictions equal the fake-quant model's, which is what
forgetting must be measured on: the deployed grid, never latent float weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from raysisa.config import ModelConfig
from raysisa.data.samples import DatasetInfo
from raysisa.quant.modules import quantized_layers

__all__ = ["IntegerExport", "export_integers", "model_from_integers", "layer_integers"]


@dataclass
class IntegerExport:
    """Integer weights and scales of a quantized model."""

    codes: dict[str, torch.Tensor]  # layer name -> int8 codes, the weight's shape
    scales: dict[str, torch.Tensor]  # layer name -> scalar step
    bits: dict[str, int]
    rest: dict[str, torch.Tensor]  # every other tensor of the state dict

    def tensors(self) -> dict[str, torch.Tensor]:
        """A flat dict (e.g. for safetensors): ``int/<layer>``, ``scale/<layer>``, ``float/<name>``."""
        out = {f"int/{k}": v for k, v in self.codes.items()}
        out |= {f"scale/{k}": v for k, v in self.scales.items()}
        return out | {f"float/{k}": v for k, v in self.rest.items()}


def layer_integers(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(codes, scale, bits) of one QuantConv2d's weight under its scheme."""
    quantizer = layer.weight_quant
    if not hasattr(quantizer, "integers"):
        raise ValueError(f"{type(quantizer).__name__} does not export integers (a full-precision weight?)")
    with torch.no_grad():
        return quantizer.integers(layer.weight), quantizer.step.detach().clone(), quantizer.bits


def export_integers(model: nn.Module) -> IntegerExport:
    """Integer codes and scales of every quantized layer of ``model``."""
    codes, scales, bits = {}, {}, {}
    for name, layer in quantized_layers(model).items():
        if isinstance(layer.weight_quant, nn.Identity):
            continue
        layer_codes, scale, b = layer_integers(layer)
        q_max = 2 ** (b - 1)
        if layer_codes.min() < -q_max or layer_codes.max() >= q_max:
            raise AssertionError(f"{name}: codes outside the {b}-bit grid")  # a quantizer bug
        codes[name], scales[name], bits[name] = layer_codes.to(torch.int8), scale, b
    skip = {f"{name}.weight" for name in codes}
    rest = {k: v.detach().clone() for k, v in model.state_dict().items() if k not in skip}
    return IntegerExport(codes, scales, bits, rest)


def model_from_integers(export: IntegerExport, info: DatasetInfo, config: ModelConfig) -> nn.Module:
    """A model (eval mode) that computes with the exported integer weights."""
    from raysisa.models import build_model

    model = build_model(info, config)
    layers = quantized_layers(model)
    state = dict(export.rest)
    for name, codes in export.codes.items():
        state[f"{name}.weight"] = torch.zeros_like(codes, dtype=torch.float32)  # unused: integers compute
    model.load_state_dict(state, strict=True)
    for name, codes in export.codes.items():
        layers[name].frozen_integers = (codes, export.scales[name])
    return model.eval()
