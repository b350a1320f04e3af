"""Sample-id validation and the reports SISA operations return."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from raysisa.errors import InvalidIdsError
from raysisa.sisa.shard import SliceReport

__all__ = ["parse_ids", "TrainReport", "UnlearnReport", "EvalReport"]


def parse_ids(values: Iterable[Any]) -> np.ndarray:
    """Validate sample ids given by a user: sorted unique int64.

    Raises:
        InvalidIdsError: no ids, a value that is not an integer, or a negative id.
    """
    bad, ids = [], []
    for value in values:
        if isinstance(value, (bool, np.bool_)):
            bad.append(value)
            continue
        if isinstance(value, str):
            text = value.strip()
            if text.lstrip("+-").isdigit():
                ids.append(int(text))
            else:
                bad.append(value)
            continue
        if isinstance(value, (int, np.integer)) or isinstance(value, (float, np.floating)) and float(value).is_integer():
            ids.append(int(value))
        else:
            bad.append(value)
    if bad:
        shown = ", ".join(repr(b) for b in bad[:5])
        raise InvalidIdsError(f"{len(bad)} id(s) are not integers: {shown}; nothing was changed")
    if not ids:
        raise InvalidIdsError("no sample ids given; nothing was changed")
    arr = np.unique(np.asarray(ids, dtype=np.int64))
    if arr[0] < 0:
        negative = arr[arr < 0]
        raise InvalidIdsError(
            f"{len(negative)} negative id(s), e.g. {', '.join(map(str, negative[:5].tolist()))}; "
            "sample ids are non-negative; nothing was changed"
        )
    return arr


@dataclass
class TrainReport:
    """Outcome of training (or resuming) a run."""

    store: str
    num_shards: int
    num_slices: int
    slices_trained: int
    slices_skipped: int
    sample_grads: int
    compute_seconds: float
    wall_seconds: float
    checkpoints_rebuilt: int = 0
    slices: list[SliceReport] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["slices"] = [s.to_dict() for s in self.slices]
        return out


@dataclass
class UnlearnReport:
    """Outcome of an exact unlearning request."""

    store: str
    requested: int
    deleted: list[int]
    already_deleted: list[int]
    message: str
    shards_affected: list[int] = field(default_factory=list)
    first_slice: dict[int, int] = field(default_factory=dict)
    slices_retrained: int = 0
    sample_grads: int = 0
    compute_seconds: float = 0.0
    wall_seconds: float = 0.0
    checkpoints_deleted: int = 0
    slices: list[SliceReport] = field(default_factory=list)

    @property
    def noop(self) -> bool:
        return not self.deleted

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["noop"] = self.noop
        out["first_slice"] = {str(k): v for k, v in self.first_slice.items()}
        out["slices"] = [s.to_dict() for s in self.slices]
        return out


@dataclass
class EvalReport:
    """Ensemble and per-shard accuracy (%) on the run's test split."""

    store: str
    aggregation: str
    test_samples: int
    accuracy: float
    shard_accuracy: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
