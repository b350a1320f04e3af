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
    """Prune first, then unlearn (SPEC 3.2). Every shard model is pruned by one-shot global
    magnitude pruning (OMP) of its conv weights to ``sparsity``; methods then keep the
    pruned weights at zero, and the retrain reference trains the same masked architecture
    from the model's initial weights on the retain data.

    How the pruned model recovers (``mode``):

    - ``rewind`` (the reference, Unlearn-Sparse ``main_imp.py --prune_type rewind_lt
      --rewind_epoch 8``): the survivors are rewound to their values at the end of epoch
      ``rewind_epoch`` of the shard's own training (replayed exactly from its initial
      checkpoint: SISA training is deterministic), and the masked network is retrained with
      the run's recipe for ``retrain_epochs`` epochs, its LR schedule fast-forwarded by
      ``rewind_epoch`` epochs and a fresh optimiser. The sparse original then holds no
      weight trained past the rewind point. Needs ``rewind_epoch < train.epochs`` and
      ``sharding.num_slices = 1`` (the epochs of a sliced shard see growing data).
    - ``finetune``: fine-tune the pruned converged model ``epochs`` epochs at ``lr`` (the
      dense model's memorisation stays in the survivors).

    Args:
        sparsity: share of conv weights pruned.
        mode: ``rewind`` or ``finetune``.
        rewind_epoch: ``rewind``: epochs of the dense training the survivors keep.
        retrain_epochs: ``rewind``: epochs of masked retraining (``None``: ``train.epochs``,
            as the reference, whose second pruning state restarts its epoch count while its
            LR scheduler stays fast-forwarded).
        epochs: ``finetune``: fine-tuning epochs.
        lr: ``finetune``: fine-tuning learning rate.
    """

    sparsity: float = Field(0.95, ge=0, lt=1)
    mode: Literal["rewind", "finetune"] = "rewind"
    rewind_epoch: int = Field(8, ge=0)
    retrain_epochs: int | None = Field(None, ge=0, le=100_000)
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
        tuned_defaults: a registered method whose hyperparameters were tuned by raysisa's
            sweeps for this setting (data set, model, bit width; see
            :mod:`raysisa.methods.tuned`) starts from the tuned values instead of its
            reference defaults; ``method_args`` still override them. ``false``: the
            references' defaults everywhere. Variants are never tuned.
        name: the report's folder under ``reports/`` on the store.
    """

    scenario: Scenario = Field(default_factory=RandomForget)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    methods: list[str] | None = None
    method_args: dict[str, dict[str, Any]] = Field(default_factory=dict)
    variants: dict[str, MethodVariant] = Field(default_factory=dict)
    prune: PruneConfig | None = None
    tuned_defaults: bool = True
    name: str = Field("compare", pattern=r"^[A-Za-z0-9_.-]+$")
