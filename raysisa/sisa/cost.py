"""SISA cost accounting in sample-gradient evaluations (SPEC section 1.3).

Training slice r of a shard costs e_r x |D_1 ∪ ... ∪ D_r| sample-gradients (e_r epochs on the
cumulative data). These pure functions give the cost of retraining from a slice, of a full
retrain, and the expected costs that the SISA analysis predicts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from raysisa.config import slice_epochs

__all__ = [
    "first_slices",
    "retrain_cost",
    "expected_single_deletion_cost",
    "expected_batch_cost",
    "expected_speedup",
]


def first_slices(shards: Sequence[int], slices: Sequence[int]) -> dict[int, int]:
    """The earliest affected slice r* per shard, from the (shard, slice) of each deleted sample."""
    out: dict[int, int] = {}
    for shard, slice_ in zip(shards, slices, strict=True):
        out[int(shard)] = min(out.get(int(shard), int(slice_)), int(slice_))
    return dict(sorted(out.items()))


def retrain_cost(slice_sizes: Sequence[int], epochs: int, first_slice: int = 1) -> int:
    """Sample-gradients to train slices ``first_slice``..R of a shard with these slice sizes."""
    plan = slice_epochs(epochs, len(slice_sizes))
    total, cumulative = 0, 0
    for r, (size, e_r) in enumerate(zip(slice_sizes, plan, strict=True), start=1):
        cumulative += size
        if r >= first_slice:
            total += e_r * cumulative
    return total


def expected_single_deletion_cost(slice_sizes: Sequence[int], epochs: int) -> float:
    """Expected retraining cost of deleting one uniformly drawn sample of the shard.

    The sample lies in slice r with probability |D_r| / |D|; SISA then retrains r..R.
    For equal slices this is e·|D|·(2R+1)/(3R) up to the integer epoch schedule.
    """
    total = sum(slice_sizes)
    return sum(size / total * retrain_cost(slice_sizes, epochs, r) for r, size in enumerate(slice_sizes, start=1))


def expected_speedup(num_shards: int, num_slices: int) -> float:
    """Expected full-retrain / single-deletion cost ratio for S equal shards of R equal slices.

    S·3R/(2R+1): a deletion touches one shard of S, and slicing saves a further 3R/(2R+1)
    in sample-epochs (SPEC 1.3).
    """
    return num_shards * 3 * num_slices / (2 * num_slices + 1)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _p_miss(total: int, subset: int, draws: int) -> float:
    """P(none of ``draws`` samples drawn without replacement from ``total`` lands in ``subset``)."""
    if draws > total - subset:
        return 0.0
    return math.exp(_log_comb(total - subset, draws) - _log_comb(total, draws))


def expected_batch_cost(shard_slice_sizes: Sequence[Sequence[int]], epochs: int, deletions: int) -> float:
    """Expected sample-gradients to unlearn ``deletions`` uniformly drawn samples at once.

    Per shard, the earliest affected slice r* is ≥ r exactly when no deletion falls in
    slices 1..r-1; SISA then retrains r*..R. Draws are without replacement over all shards.
    """
    total = sum(sum(sizes) for sizes in shard_slice_sizes)
    expected = 0.0
    for sizes in shard_slice_sizes:
        prefix = [sum(sizes[:r]) for r in range(len(sizes) + 1)]  # prefix[r] = |D_1..r|
        for r in range(1, len(sizes) + 1):
            p_first_is_r = _p_miss(total, prefix[r - 1], deletions) - _p_miss(total, prefix[r], deletions)
            expected += p_first_is_r * retrain_cost(sizes, epochs, r)
    return expected
