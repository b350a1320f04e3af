"""Retrain: the exact reference. On a SISA run it is the SISA path (roll each affected
shard back to the checkpoint before its earliest affected slice and retrain; for a single
model, S = R = 1, that is training from scratch on the retain set). It is registered so
that reports and sweeps can name it like any method; the engine refuses to run it in
place of the SISA path."""

from __future__ import annotations

from pydantic import Field

from raysisa.methods.base import Need, OptimArgs, UnlearnMethod, register_method


class RetrainArgs(OptimArgs):
    epochs: int = Field(0, ge=0, le=0)  # the run's own recipe decides


@register_method
class Retrain(UnlearnMethod):
    name = "retrain"
    summary = "Retrain: exact SISA retraining from the last clean slice checkpoint (the reference)"
    Args = RetrainArgs
    retrains = True
    base_needs = frozenset({Need.RETAIN})
