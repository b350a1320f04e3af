"""Approximate (and exact) unlearning methods behind one protocol and one registry.

Every method module is imported here explicitly, which registers it.
"""

from raysisa.methods import (  # noqa: F401 - imported to register
    delete,
    finetune,
    grad_ascent,
    influence,
    l1_sparse,
    neggrad_plus,
    ohs,
    qmul,
    random_label,
    retrain,
)
from raysisa.methods.base import (
    METHODS,
    Need,
    OptimArgs,
    Phase,
    Split,
    UnlearnContext,
    UnlearnMethod,
    get_method,
    list_methods,
    register_method,
)
from raysisa.methods.engine import UnlearnOutcome, run_method
from raysisa.methods.masks import MaskHook, localize, omp_prune

__all__ = [
    "METHODS",
    "MaskHook",
    "Need",
    "OptimArgs",
    "Phase",
    "Split",
    "UnlearnContext",
    "UnlearnMethod",
    "UnlearnOutcome",
    "get_method",
    "list_methods",
    "localize",
    "omp_prune",
    "register_method",
    "run_method",
]
