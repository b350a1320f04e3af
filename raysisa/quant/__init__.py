"""Quantization-aware training: schemes (LSQ, Brevitas), quantized layers, integer export."""

from raysisa.quant.base import SCHEMES, SUPPORTED_BITS, Scheme, get_scheme, list_schemes, register_scheme
from raysisa.quant.export import IntegerExport, export_integers, is_quantized, model_from_integers
from raysisa.quant.modules import quantizer_parameter_names
from raysisa.quant import schemes as _schemes  # noqa: F401 - registers lsq and brevitas

__all__ = [
    "SCHEMES",
    "SUPPORTED_BITS",
    "IntegerExport",
    "Scheme",
    "export_integers",
    "get_scheme",
    "is_quantized",
    "list_schemes",
    "model_from_integers",
    "quantizer_parameter_names",
    "register_scheme",
]
