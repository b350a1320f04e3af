"""Quantization-aware training: schemes (LSQ, ...), quantized layers, integer export."""

from raysisa.quant.modules import QuantConv2d, quantize_model, quantized_layers
from raysisa.quant.schemes import SCHEMES, SUPPORTED_BITS, Scheme, list_schemes, register_scheme

__all__ = [
    "SCHEMES",
    "SUPPORTED_BITS",
    "QuantConv2d",
    "Scheme",
    "list_schemes",
    "quantize_model",
    "quantized_layers",
    "register_scheme",
]
