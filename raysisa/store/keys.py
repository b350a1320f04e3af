"""Content-addressed checkpoint keys (the reference SISA code's ``getShardHash`` idea).

The key of slice ``r`` of shard ``k`` hashes the run's config fingerprint and the ids that
survive in slices 1..r, slice by slice. Deleting a sample from slice ``j`` therefore changes
the keys of slices ``j..R`` and leaves the keys of slices ``< j`` (and of the initial
weights, slice 0) untouched: unchanged prefixes are cache hits, changed ones are new keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

__all__ = ["init_key", "slice_keys"]


def init_key(fingerprint: str, shard: int) -> str:
    """Key of a shard's initial weights: depends on the recipe only, never on data."""
    return hashlib.sha256(f"raysisa/v1|{fingerprint}|shard={shard}|init".encode()).hexdigest()


def slice_keys(fingerprint: str, shard: int, slice_ids: Sequence[np.ndarray]) -> list[str]:
    """Keys of slices 0..R (0 = initial weights) given each slice's surviving ids, in order."""
    digest = hashlib.sha256(f"raysisa/v1|{fingerprint}|shard={shard}|slices".encode())
    keys = [init_key(fingerprint, shard)]
    for r, ids in enumerate(slice_ids, start=1):
        digest.update(f"|slice={r}:".encode())
        digest.update(":".join(str(int(i)) for i in ids).encode())
        keys.append(digest.copy().hexdigest())
    return keys
