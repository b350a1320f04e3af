"""The ``compare`` section: forget-set scenarios, methods and variants, prune-first."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from raysisa.config.base import ConfigModel

__all__ = [
    "RandomForget",
    "ClasswiseForget",
    "NonIIDForget",
    "BackdoorForget",
    "Scenario",
    "PruneConfig",
    "MethodVariant",
    "CompareConfig",
]


class RandomForget(ConfigModel):
    """Forget a seeded uniform ``fraction`` of the training samples."""

    kind: Literal["random"] = "random"
    fraction: float = Field(0.1, gt=0, lt=1)


class ClasswiseForget(ConfigModel):
    """Forget every training sample of ``classes``; TA then excludes those classes."""

    kind: Literal["classwise"] = "classwise"
    classes: list[int] = Field(default_factory=lambda: [0], min_length=1)


class NonIIDForget(ConfigModel):
    """Forget a seeded ``fraction`` of the samples of a few ``classes`` (DEL: half of 2 and 5)."""

    kind: Literal["noniid"] = "noniid"
    classes: list[int] = Field(default_factory=lambda: [2, 5], min_length=1)
    fraction: float = Field(0.5, gt=0, le=1)


class BackdoorForget(ConfigModel):
    """Forget the samples poisoned by ``data.poison`` (backdoor cleanse; reports ASR)."""

    kind: Literal["backdoor"] = "backdoor"


Scenario = Annotated[RandomForget | ClasswiseForget | NonIIDForget | BackdoorForget, Field(discriminator="kind")]


class PruneConfig(ConfigModel):
    """Prune first, then unlearn (SPEC 3.2): OMP every shard model to ``sparsity`` (conv
    weights, global magnitude), then fine-tune the masked model ``epochs`` epochs at ``lr``
    to recover. Methods keep the pruned weights at zero; the retrain reference trains the
    same masked architecture from its initial weights."""

    sparsity: float = Field(0.95, ge=0, lt=1)
    epochs: int = Field(5, ge=0, le=10_000)
    lr: float = Field(0.01, gt=0)


class MethodVariant(ConfigModel):
    """A named method configuration in a comparison (e.g. an ablation of Q-MUL)."""

    method: str
    args: dict[str, Any] = Field(default_factory=dict)


class CompareConfig(ConfigModel):
    """The ``compare`` section: which methods to compare against retraining, and on what.

    Args:
        scenario: the forget set (``random``, ``classwise``, ``noniid``, ``backdoor``).
        seeds: one full comparison per seed (forget-set draw and method randomness).
        methods: methods to compare with ``retrain`` (default: every registered one).
        method_args: hyperparameters per method, e.g. ``{finetune: {epochs: 5}}``.
        variants: extra named entries, each a method with its own arguments, e.g.
            ``{rl_sl: {method: qmul, args: {agr: false}}}``; list them in ``methods``.
        prune: prune first (OMP), then unlearn.
        name: the report's folder under ``reports/`` on the store.
    """

    scenario: Scenario = Field(default_factory=RandomForget)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    methods: list[str] | None = None
    method_args: dict[str, dict[str, Any]] = Field(default_factory=dict)
    variants: dict[str, MethodVariant] = Field(default_factory=dict)
    prune: PruneConfig | None = None
    name: str = Field("compare", pattern=r"^[A-Za-z0-9_.-]+$")
