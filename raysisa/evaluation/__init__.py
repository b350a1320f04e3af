"""Evaluation of unlearning: metrics (SPEC 6), forget-set scenarios, comparisons, reports."""

from raysisa.evaluation.compare import compare
from raysisa.evaluation.evaluator import Evaluator, load_states
from raysisa.evaluation.metrics import Metrics, accuracy, avg_gap, mia_efficacy
from raysisa.evaluation.results import CompareReport, MethodResult
from raysisa.evaluation.scenarios import draw_forget_set, excluded_test_classes, load_forget_set, save_forget_set

__all__ = [
    "CompareReport",
    "Evaluator",
    "MethodResult",
    "Metrics",
    "accuracy",
    "avg_gap",
    "compare",
    "draw_forget_set",
    "excluded_test_classes",
    "load_forget_set",
    "load_states",
    "mia_efficacy",
    "save_forget_set",
]
