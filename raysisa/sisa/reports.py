"""Sample-id validation and the reports SISA operations return."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from raysisa.errors import InvalidIdsError
from raysisa.sisa.shard import SliceReport

__all__ = ["parse_ids", "TrainReport", "UnlearnReport", "EvalReport"]


INT64_MAX = 2**63 - 1
_DIGITS = re.compile(r"-?[0-9]+")  # ASCII only: "²" or "٣" are digits to str.isdigit, not ids


def _parse_id(value: Any) -> int | None:
    """The integer a user-given id stands for, or None if it is not one (no floats, no bools)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, str):
        text = value.strip()
        return int(text) if _DIGITS.fullmatch(text) else None
    if isinstance(value, (int, np.integer)):
        return int(value)
    return None


def parse_ids(values: Iterable[Any]) -> np.ndarray:
    """Validate sample ids given by a user: sorted unique int64.

    Ids are integers, or strings of ASCII digits, in 0..2^63-1. Floats (even ``3.0`` or
    JSON's ``1e30``), booleans and anything else are refused.

    Raises:
        InvalidIdsError: no ids, a value that is not an integer, a negative id, or one
            beyond int64.
    """
    bad, ids = [], []
    for value in values:
        parsed = _parse_id(value)
        if parsed is None:
            bad.append(value)
        else:
            ids.append(parsed)
    if bad:
        shown = ", ".join(_show(b) for b in bad[:5])
        raise InvalidIdsError(f"{len(bad)} id(s) are not integers: {shown}; nothing was changed")
    if not ids:
        raise InvalidIdsError("no sample ids given; nothing was changed")
    negative = sorted(i for i in ids if i < 0)
    if negative:
        raise InvalidIdsError(
            f"{len(negative)} negative id(s), e.g. {', '.join(map(str, negative[:5]))}; "
            "sample ids are non-negative; nothing was changed"
        )
    huge = sorted(i for i in ids if i > INT64_MAX)
    if huge:
        raise InvalidIdsError(
            f"{len(huge)} id(s) beyond the int64 range, e.g. {huge[0]}; sample ids are at most {INT64_MAX}; "
            "nothing was changed"
        )
    return np.unique(np.asarray(ids, dtype=np.int64))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
