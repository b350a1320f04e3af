"""The seeded SISA partition of sample ids into shards and slices (SPEC section 1.2).

Ids are sorted, shuffled with ``seed`` and cut into ``S`` contiguous shards of
⌊N/S⌋ ids (the last shard takes the remainder); each shard is cut the same way into ``R``
slices. Shards are numbered 0..S-1 and slices 1..R (slice 0 names a shard's initial weights).
The plan depends only on the id set and the seed, so training with some ids excluded uses
exactly the partition that unlearning those ids produces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from raysisa.errors import ConfigError

__all__ = ["Partition", "plan_partition", "split_sizes"]


def split_sizes(total: int, parts: int) -> list[int]:
    """⌊total/parts⌋ per part, the last part taking the remainder."""
    base = total // parts
    return [base] * (parts - 1) + [total - base * (parts - 1)]


@dataclass(frozen=True)
class Partition:
    """Assignment of every id to a (shard, slice), in training order."""

    ids: np.ndarray  # int64, training order within each slice
    shard: np.ndarray  # int64, 0..S-1
    slice: np.ndarray  # int64, 1..R
    num_shards: int
    num_slices: int

    def to_table(self) -> pa.Table:
        return pa.table({"id": self.ids, "shard": self.shard, "slice": self.slice})

    def slice_ids(self, shard: int, slice_: int) -> np.ndarray:
        return self.ids[(self.shard == shard) & (self.slice == slice_)]


def plan_partition(ids: np.ndarray, num_shards: int, num_slices: int, seed: int) -> Partition:
    """Shuffle ``ids`` with ``seed`` and cut them into ``num_shards`` x ``num_slices``.

    Raises:
        ConfigError: fewer ids than slices in total (some slice would be empty).
    """
    ids = np.sort(np.asarray(ids, dtype=np.int64))
    if len(ids) < num_shards * num_slices:
        raise ConfigError(
            f"{len(ids)} samples cannot fill {num_shards} shards x {num_slices} slices; "
            "use fewer shards or slices (or more data)"
        )
    order = ids[np.random.default_rng(seed).permutation(len(ids))]
    shard = np.empty(len(ids), dtype=np.int64)
    slice_ = np.empty(len(ids), dtype=np.int64)
    start = 0
    for k, shard_size in enumerate(split_sizes(len(ids), num_shards)):
        shard[start : start + shard_size] = k
        for r, slice_size in enumerate(split_sizes(shard_size, num_slices), start=1):
            slice_[start : start + slice_size] = r
            start += slice_size
    return Partition(order, shard, slice_, num_shards, num_slices)
