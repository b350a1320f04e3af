"""The ``brevitas`` scheme: QAT with Brevitas (AMD/Xilinx, BSD-3) QuantConv2d layers.

Weights and the inputs of quantized convolutions get per-tensor scales that Brevitas
learns in the log domain (``PARAMETER_FROM_STATS`` + ``LOG_FP``), initialised from
statistics: the weight scale from max|W|, the activation scale from a percentile of the
inputs. Two things make checkpoints exact, as raysisa's slice rollback requires:

- Brevitas keeps some initialisation progress in plain attributes (a statistics counter,
  an ``init_done`` flag) that ``state_dict`` does not carry. :func:`convert` therefore
  finishes every initialisation at build time, calibrating activation scales on a fixed
  synthetic batch (a private generator, BatchNorm statistics restored afterwards), so a
  converted model's state is entirely in its ``state_dict``.
- Loading a state dict rebuilds Brevitas' quantizers: optimisers must be built after
  loading (raysisa always does).

Differences from ``lsq``: no 1/√(N·Q_p) gradient scaling of the scales, and other
initialisation rules. Full-precision layers are the same as for every scheme.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from raysisa.data.samples import DatasetInfo
from raysisa.quant.base import Scheme
from raysisa.quant.modules import full_precision_names

logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime" on CPU machines
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import brevitas.nn as qnn
    from brevitas.graph.calibrate import calibration_mode
    from brevitas.inject.enum import RestrictValueType, ScalingImplType
    from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerTensorFloat

__all__ = ["SCHEME", "convert"]


class LearnedWeight(Int8WeightPerTensorFloat):
    scaling_impl_type = ScalingImplType.PARAMETER_FROM_STATS
    restrict_scaling_type = RestrictValueType.LOG_FP
    narrow_range = False  # levels -2^(b-1) .. 2^(b-1)-1, as LSQ


class LearnedActivation(Int8ActPerTensorFloat):
    scaling_impl_type = ScalingImplType.PARAMETER_FROM_STATS
    restrict_scaling_type = RestrictValueType.LOG_FP
    narrow_range = False


def convert(model: nn.Module, model_name: str, info: DatasetInfo, w_bits: int, a_bits: int) -> nn.Module:
    """Swap eligible convolutions for Brevitas QuantConv2d and initialise every scale."""
    keep = full_precision_names(model, model_name)
    targets = [name for name, mod in model.named_modules() if type(mod) is nn.Conv2d and name not in keep]
    for name in targets:
        conv = model.get_submodule(name)
        kwargs = {"weight_bit_width": w_bits, "weight_narrow_range": False}
        kwargs["weight_quant"] = LearnedWeight if w_bits < 32 else None
        if a_bits < 32:
            kwargs |= {"input_quant": LearnedActivation, "input_bit_width": a_bits}
        layer = qnn.QuantConv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, padding_mode=conv.padding_mode, bias=conv.bias is not None,
            return_quant_tensor=False, **kwargs,
        )
        with torch.no_grad():  # in place: the weight quantizer tracks layer.weight
            layer.weight.copy_(conv.weight)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        model.set_submodule(name, layer)
    _initialise(model, info)
    return model


@torch.no_grad()
def _initialise(model: nn.Module, info: DatasetInfo) -> None:
    for layer in layers(model).values():
        if layer.weight_quant.is_quant_enabled:
            layer.quant_weight()  # weight scale from max|W|; init done
    norms = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    was_training = model.training
    model.train(True)
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(16, info.channels, info.height, info.width, generator=generator)  # inputs are normalised
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with calibration_mode(model):
            model(batch)
    for name, state in norms.items():
        model.get_submodule(name).load_state_dict(state)
    model.train(was_training)


def layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, qnn.QuantConv2d)}


def export_layer(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, int]:
    if not layer.weight_quant.is_quant_enabled:
        raise ValueError("full-precision weight: nothing to export")
    with torch.no_grad():
        quant = layer.quant_weight()
        return quant.int(), quant.scale.detach().clone(), int(quant.bit_width)


def freeze_layer(layer: nn.Module, codes: torch.Tensor, scale: torch.Tensor) -> None:
    with torch.no_grad():
        layer.weight.copy_(codes.to(layer.weight.dtype) * scale)
    layer.weight_quant.disable_quant = True  # the weight already is codes x scale


SCHEME = Scheme("brevitas", convert, layers, export_layer, freeze_layer, "Brevitas QuantConv2d, learned log-domain scales")
