"""The ``coordinator`` section: batching, the retrain-or-update policy, DPUS, OHS, debt."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from raysisa.config.base import ConfigModel, registered
from raysisa.registry import POLICIES

__all__ = ["DpusConfig", "OhsConfig", "CoordinatorConfig"]


class DpusConfig(ConfigModel):
    """The direct parameter update (DPUS) the coordinator applies to heavy shards.

    Args:
        method: a registered approximate method for full-precision shards.
        args: its hyperparameters.
        quantized_method: the method for quantized shards (Q-MUL by default).
        quantized_args: its hyperparameters.
    """

    method: str = "neggrad_plus"
    args: dict[str, Any] = Field(default_factory=lambda: {"epochs": 2})
    quantized_method: str = "qmul"
    quantized_args: dict[str, Any] = Field(default_factory=lambda: {"epochs": 3})


class OhsConfig(ConfigModel):
    """OHS fine-tuning after DPUS: the retained data of the last m slices, m as large as
    ``budget`` (a fraction of a full shard retrain; default: the coordinator's ``rho``)
    allows, lr = ``lr_factor`` x the training lr, until the loss plateaus."""

    budget: float | None = Field(None, ge=0)
    lr_factor: float = Field(0.1, gt=0, le=10)
    max_epochs: int | None = Field(None, ge=1)  # default: the mean epochs per slice (ē)
    min_delta: float = Field(1e-3, ge=0)
    patience: int = Field(2, ge=1)


class CoordinatorConfig(ConfigModel):
    """How the coordinator batches deletion requests and chooses retrain or update.

    Args:
        policy: ``hs`` (retrain light work, update heavy work), ``ohs`` (hs + OHS
            fine-tuning after updates), ``prs`` (always retrain), ``dpus`` (always update).
        rho: the boundary: retrain a shard when its retraining work W ≤ rho x a full retrain.
        time_budget_seconds: also retrain when the estimated time W/τ is within this budget.
        window_seconds: after the first pending request, wait this long to batch more.
        poll_seconds: how often the ledger is read.
        max_batch: requests per batch.
        max_request_ids: larger requests are rejected (``None``: no limit).
        defer_seconds: let heavy shards wait up to this long for more requests (0: never).
        max_approx_updates: a shard updated this many times is retrained (debt bound).
        max_drift_points: a shard whose test accuracy fell this many points since its last
            exact state is retrained.
        idle_seconds: restore exactness of approximate shards after this much idle time
            (``None``: only when a debt bound is reached).
        exact_deadline_seconds: how long a request may stay not exact before the
            ``RaysisaRequestPastDeadline`` alert fires (exported with the metrics; default
            30 days, GDPR's "within one month"). Nothing else depends on it.
    """

    policy: str = "ohs"
    rho: float = Field(0.5, ge=0)
    time_budget_seconds: float | None = Field(None, gt=0)
    window_seconds: float = Field(1.0, ge=0)
    poll_seconds: float = Field(0.5, gt=0)
    max_batch: int = Field(100_000, ge=1)
    max_request_ids: int | None = Field(None, ge=1)
    defer_seconds: float = Field(0.0, ge=0)
    max_approx_updates: int = Field(5, ge=1)
    max_drift_points: float = Field(1.0, ge=0)
    idle_seconds: float | None = Field(30.0, ge=0)
    exact_deadline_seconds: float = Field(30 * 24 * 3600.0, gt=0)
    dpus: DpusConfig = Field(default_factory=DpusConfig)
    ohs: OhsConfig = Field(default_factory=OhsConfig)

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        return registered(POLICIES, value)
