"""Quantized layers and the model conversion shared by every scheme.

A scheme provides two quantizer factories (weights, activations). :func:`quantize_model`
swaps every eligible ``nn.Conv2d`` for a :class:`QuantConv2d` that fake-quantizes its
weight (and, unless ``a_bits`` is 32, its input) in the forward pass. As in Q-MUL
(SPEC 4.2) the first convolution, shortcut (downsample) convolutions, MobileNetV2's head
convolution and the classifier stay at full precision.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["QuantConv2d", "quantize_model", "quantized_layers", "full_precision_names"]

QuantizerFactory = Callable[[int], nn.Module]

# Convolutions kept at full precision beyond the generic rules, by model name.
_HEADS = {"mobilenet_v2": ("features.18.0",)}


class QuantConv2d(nn.Conv2d):
    """A Conv2d whose weight (and input) pass through fake quantizers.

    With ``frozen_integers`` set (see :mod:`raysisa.quant.export`) the layer computes with
    exported integer weights times their scale instead of quantizing its float weight.
    """

    def __init__(self, conv: nn.Conv2d, weight_quant: nn.Module, act_quant: nn.Module | None) -> None:
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
        )
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            if conv.bias is not None:
                self.bias.copy_(conv.bias)
        self.weight_quant = weight_quant
        self.act_quant = act_quant
        self.frozen_integers: tuple[torch.Tensor, torch.Tensor] | None = None

    def quantized_weight(self) -> torch.Tensor:
        if self.frozen_integers is not None:
            codes, scale = self.frozen_integers
            return codes.to(self.weight.dtype) * scale
        return self.weight_quant(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_quant is not None:
            x = self.act_quant(x)
        return F.conv2d(x, self.quantized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


def full_precision_names(model: nn.Module, model_name: str) -> set[str]:
    """Conv2d modules that stay at full precision: the first, shortcuts, model heads."""
    convs = [name for name, mod in model.named_modules() if isinstance(mod, nn.Conv2d)]
    keep = {convs[0]} if convs else set()
    keep |= {n for n in convs if "downsample" in n or "shortcut" in n}
    keep |= set(_HEADS.get(model_name, ())) & set(convs)
    return keep


def quantize_model(
    model: nn.Module, model_name: str, w_bits: int, a_bits: int, weight_quant: QuantizerFactory, act_quant: QuantizerFactory
) -> nn.Module:
    """Swap eligible convolutions (in place) for :class:`QuantConv2d`; returns ``model``."""
    keep = full_precision_names(model, model_name)
    targets = [name for name, mod in model.named_modules() if isinstance(mod, nn.Conv2d) and name not in keep]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        conv = getattr(parent, child)
        weights = weight_quant(w_bits) if w_bits < 32 else nn.Identity()
        setattr(parent, child, QuantConv2d(conv, weights, act_quant(a_bits) if a_bits < 32 else None))
    return model


_WEIGHT_MODULES = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def quantizer_parameter_names(model: nn.Module) -> set[str]:
    """Parameters that are quantizer state (LSQ step sizes, Brevitas scales), not network
    weights: every parameter not owned directly by a conv, linear or normalisation layer.
    Empty for a full-precision model of the registry."""
    weights = {
        f"{mod_name}.{p}" if mod_name else p
        for mod_name, mod in model.named_modules()
        if isinstance(mod, _WEIGHT_MODULES)
        for p, _ in mod.named_parameters(recurse=False)
    }
    return {name for name, _ in model.named_parameters() if name not in weights}


def quantized_layers(model: nn.Module) -> dict[str, QuantConv2d]:
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, QuantConv2d)}
