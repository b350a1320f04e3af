"""Ensemble aggregation of shard predictions (SPEC section 1.2, step 5).

An aggregator maps per-shard softmax outputs ``probs`` of shape (S, N, C) and shard
weights (S,) to class scores (N, C); the prediction is the score's argmax, so ties go to
the lowest class index, as in the reference SISA code.

- ``vote``: weighted majority vote of each shard's argmax (the SISA default).
- ``mean_softmax``: weighted mean of the softmax vectors (the paper's refinement).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from raysisa.errors import ConfigError
from raysisa.registry import Registry

__all__ = ["AGGREGATORS", "register_aggregator", "list_aggregators", "aggregate"]

Aggregator = Callable[[np.ndarray, np.ndarray], np.ndarray]
AGGREGATORS: Registry[Aggregator] = Registry("aggregation")
register_aggregator = AGGREGATORS.register  # decorator: @register_aggregator("name")


def list_aggregators() -> list[str]:
    return AGGREGATORS.names()


@register_aggregator("vote")
def _vote(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    votes = np.zeros(probs.shape[1:], dtype=np.float64)
    rows = np.arange(probs.shape[1])
    for shard_probs, weight in zip(probs, weights, strict=True):
        votes[rows, shard_probs.argmax(axis=1)] += weight
    return votes


@register_aggregator("mean_softmax")
def _mean_softmax(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.tensordot(weights / weights.sum(), probs.astype(np.float64), axes=1)


def aggregate(
    probs: np.ndarray, method: str = "vote", weights: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Aggregate per-shard probabilities.

    Args:
        probs: (S, N, C) softmax outputs of the S shard models.
        method: a registered aggregator (``vote`` or ``mean_softmax``).
        weights: non-negative shard weights (default: uniform).

    Returns:
        (predictions (N,), scores (N, C)).

    Example:
        >>> p = np.array([[[0.9, 0.1]], [[0.2, 0.8]], [[0.6, 0.4]]])
        >>> aggregate(p, "vote")[0].tolist()
        [0]
    """
    if method not in AGGREGATORS:
        raise ConfigError(AGGREGATORS.unknown(method))
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise ConfigError(f"probs must have shape (shards, samples, classes), got {probs.shape}")
    w = np.ones(probs.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (probs.shape[0],):
        raise ConfigError(f"{len(w)} shard weights given for {probs.shape[0]} shards")
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ConfigError("shard weights must be finite, non-negative and not all zero")
    scores = AGGREGATORS.get(method)(probs, w)
    return scores.argmax(axis=1), scores
