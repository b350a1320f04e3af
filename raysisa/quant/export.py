"""Integer export of quantized models, and evaluation from the exported integers.

:func:`export_integers` turns every quantized layer's weight into its integer codes (int8,
on the scheme's signed grid) plus the scale they multiply; everything else (full-precision
layers, BatchNorm, activation scales) travels as the float state dict without the latent
quantized weights. :func:`model_from_integers` loads them into a freshly built model
(:func:`raysisa.models.build_model`, which sits above this package) that then computes with
those integers; its predictions equal the fake-quant model's. Forgetting is measured on this
deployed grid, never on latent float weights (quantizing after unlearning can restore
what was forgotten).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from raysisa.config import ModelConfig
from raysisa.quant.base import get_scheme

__all__ = ["IntegerExport", "export_integers", "model_from_integers", "is_quantized"]


def is_quantized(config: ModelConfig) -> bool:
    return config.quant is not None and (config.quant.w_bits < 32 or config.quant.a_bits < 32)


@dataclass
class IntegerExport:
    """Integer weights and scales of a quantized model."""

    codes: dict[str, torch.Tensor]  # layer name -> int8 codes, the weight's shape
    scales: dict[str, torch.Tensor]  # layer name -> scalar scale
    bits: dict[str, int]
    rest: dict[str, torch.Tensor]  # every other tensor of the state dict

    def tensors(self) -> dict[str, torch.Tensor]:
        """A flat dict (e.g. for safetensors): ``int/<layer>``, ``scale/<layer>``, ``float/<name>``."""
        out = {f"int/{k}": v for k, v in self.codes.items()}
        out |= {f"scale/{k}": v for k, v in self.scales.items()}
        return out | {f"float/{k}": v for k, v in self.rest.items()}


def export_integers(model: nn.Module, config: ModelConfig) -> IntegerExport:
    """Integer codes and scales of every quantized weight of ``model`` (built from ``config``)."""
    scheme = get_scheme(config.quant.scheme)
    codes, scales, bits = {}, {}, {}
    for name, layer in scheme.layers(model).items():
        try:
            layer_codes, scale, b = scheme.export_layer(layer)
            layer_codes = layer_codes.to(torch.int32)  # compare in a type that holds the grid bounds
        except ValueError:
            continue  # a full-precision weight (w_bits 32)
        limit = 2 ** (b - 1)
        if layer_codes.min() < -limit or layer_codes.max() >= limit:
            raise AssertionError(f"{name}: codes outside the {b}-bit grid")  # a scheme bug
        codes[name], scales[name], bits[name] = layer_codes.to(torch.int8), scale, b
    skip = {f"{name}.weight" for name in codes}
    rest = {k: v.detach().clone() for k, v in model.state_dict().items() if k not in skip}
    return IntegerExport(codes, scales, bits, rest)


def model_from_integers(export: IntegerExport, model: nn.Module, config: ModelConfig) -> nn.Module:
    """``model``, freshly built from ``config`` (``build_model(info, config)``), made to compute
    with the exported integer weights; returned in eval mode."""
    scheme = get_scheme(config.quant.scheme)
    state = dict(export.rest)
    for name, codes in export.codes.items():
        state[f"{name}.weight"] = torch.zeros(codes.shape, dtype=torch.float32)  # replaced just below
    model.load_state_dict(state, strict=True)
    layers = scheme.layers(model)
    for name, codes in export.codes.items():
        scheme.freeze_layer(layers[name], codes, export.scales[name])
    return model.eval()
