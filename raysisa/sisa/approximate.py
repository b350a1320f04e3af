"""Approximate unlearning of a SISA ensemble: apply a method to each affected shard model.

For ids U, shard k gets forget = U ∩ D_k and retain = D_k \\ U (SPEC 7.11, "per-shard
approximate"); unaffected shards keep their models. The update runs in the shard's worker
(a Ray actor with :class:`~raysisa.sisa.actors.RayPool`) and returns the new weights;
nothing on the store changes. For a single model (S = 1) this is plain approximate
unlearning.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from raysisa.data.samples import take_ids
from raysisa.errors import InvalidIdsError
from raysisa.sisa.pool import ShardPool
from raysisa.sisa.run import SisaRun
from raysisa.sisa.tasks import ApplyUpdate, MethodCall
from raysisa.training import derive_seed
from raysisa.methods.base import UnlearnMethod
from raysisa.methods.engine import UnlearnOutcome

__all__ = ["ShardUpdate", "approximate_unlearn", "shard_groups"]


@dataclass
class ShardUpdate:
    """One shard's approximately unlearned weights and what producing them cost."""

    shard: int
    forget_ids: np.ndarray
    tensors: dict[str, torch.Tensor]
    outcome: UnlearnOutcome


def shard_groups(run: SisaRun, ids: Iterable[Any]) -> dict[int, np.ndarray]:
    """Live ids grouped by shard.

    Raises:
        InvalidIdsError: malformed or unknown ids, or ids already deleted (their data is gone).
    """
    _, live, already = run.check_ids(ids)
    if len(already):
        raise InvalidIdsError(
            f"{len(already)} id(s) are already deleted, e.g. {', '.join(map(str, already[:5].tolist()))}; "
            "approximate unlearning needs the samples' data"
        )
    rows = take_ids(run.store.read_index(), live)
    shards, row_ids = rows["shard"].to_numpy(), rows["id"].to_numpy()
    return {int(k): np.sort(row_ids[shards == k]) for k in np.unique(shards)}


def approximate_unlearn(
    run: SisaRun,
    ids: Iterable[Any],
    method: UnlearnMethod,
    pool: ShardPool,
    seed: int = 0,
    base_states: dict[int, dict[str, torch.Tensor]] | None = None,
    prune_masks: dict[int, dict[str, torch.Tensor]] | None = None,
) -> dict[int, ShardUpdate]:
    """Apply ``method`` to every shard holding some of ``ids``; returns the new weights.

    Args:
        run: the SISA run (its data must still hold ``ids``).
        ids: samples to forget.
        method: an approximate method (``retrain`` is the SISA path: use ``run.unlearn``).
        pool: where shards work (their workers read their data from the store).
        seed: base seed; shard k uses a seed derived from (seed, k).
        base_states: start shard k from these weights instead of its latest checkpoint.
        prune_masks: per-shard prune masks to keep (prune-first).
    """
    groups = shard_groups(run, ids)
    call = MethodCall.of(method)
    pool.start(sorted(groups))
    handles = {
        shard: pool.submit(
            shard,
            ApplyUpdate(
                run.at(),
                call,
                forget,
                derive_seed(seed, shard),
                base=(base_states or {}).get(shard),
                prune_mask=(prune_masks or {}).get(shard),
            ),
        )
        for shard, forget in groups.items()
    }
    updates = {}
    for shard, handle in handles.items():
        result = pool.result(handle)
        updates[shard] = ShardUpdate(shard, groups[shard], result.tensors, result.outcome)
    return updates
