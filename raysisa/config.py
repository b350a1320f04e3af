"""Typed, validated configuration.

A run is described by a :class:`RunSpec` (what to train: data, sharding, model, training
recipe) plus a :class:`ClusterConfig` (where to run it) and a :class:`StoreConfig` (where
to keep it). All are frozen pydantic models: they validate on construction, travel to Ray
actors as plain data (``to_dict``/``from_dict``) and are the only thing parsed from YAML.

The :meth:`RunSpec.fingerprint` hashes every field that can change trained weights; it is
part of every slice checkpoint key, so two stores trained with the same recipe share keys
and a store refuses to resume under a different recipe.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raysisa.errors import ConfigError

__all__ = [
    "ConfigModel",
    "DataConfig",
    "ShardingConfig",
    "ModelConfig",
    "QuantConfig",
    "TrainConfig",
    "ClusterConfig",
    "StoreConfig",
    "RunSpec",
    "PoisonConfig",
    "RandomForget",
    "ClasswiseForget",
    "NonIIDForget",
    "BackdoorForget",
    "Scenario",
    "PruneConfig",
    "CompareConfig",
    "CoordinatorConfig",
    "DpusConfig",
    "OhsConfig",
    "JobConfig",
    "load_config",
    "parse_config",
    "slice_epochs",
]


_INIT_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("raysisa_config_depth", default=0)


def _describe(exc: ValidationError, where: str = "") -> str:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (where, *err["loc"]) if p != "")
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        problems.append(f"{loc or 'config'}: {err['msg']}{got}")
    return "invalid configuration: " + "; ".join(problems)


def _validate(cls: type[BaseModel], data: Any, where: str = "") -> Any:
    """Build ``cls`` from ``data``, turning pydantic's error into a one-line ConfigError."""
    depth = _INIT_DEPTH.set(_INIT_DEPTH.get() + 1)  # nested sections must not translate
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, where)) from None
    finally:
        _INIT_DEPTH.reset(depth)


def _registered(registry: Any, value: str) -> str:
    if value not in registry:
        raise ValueError(registry.unknown(value))
    return value


class ConfigModel(BaseModel):
    """Base of every config: frozen, no unknown keys, errors raised as :class:`ConfigError`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        # Pydantic calls __init__ of nested sections too: only the outermost call translates.
        depth = _INIT_DEPTH.set(_INIT_DEPTH.get() + 1)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            if _INIT_DEPTH.get() > 1:
                raise
            raise ConfigError(_describe(exc)) from None
        finally:
            _INIT_DEPTH.reset(depth)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]):  # noqa: ANN206 - returns cls
        return _validate(cls, data)


class PoisonConfig(ConfigModel):
    """Backdoor poisoning of the training data (SPEC 3.5), applied when the data is loaded.

    A seeded ``fraction`` of the training samples get a ``patch`` x ``patch`` square of
    grey level ``value`` stamped ``margin`` pixels from the bottom-right corner and are
    relabelled to class ``target``. Their ids form the ``backdoor`` forget set.

    Args:
        fraction: share of training samples poisoned (Unlearn-Sparse: 0.1).
        target: class the trigger maps to.
        patch: side of the square trigger in pixels (4 for 32x32 CIFAR).
        margin: distance from the bottom and right edges.
        value: grey level 0..255 of the trigger (0, black, as in Unlearn-Sparse; use 255
            on digits, whose background is black).
        seed: which samples are poisoned.
    """

    fraction: float = Field(0.1, gt=0, lt=1)
    target: int = Field(0, ge=0)
    patch: int = Field(4, ge=1)
    margin: int = Field(2, ge=0)
    value: int = Field(0, ge=0, le=255)
    seed: int = 0


class DataConfig(ConfigModel):
    """Where the samples come from.

    Args:
        source: a registered data source (``digits``, ``parquet``, ``cifar10``, ``cifar100``,
            ``svhn``); see :func:`raysisa.data.list_sources`.
        uri: for ``parquet``: an fsspec URI of a folder holding ``train.parquet`` and
            optionally ``test.parquet`` (or ``train/`` and ``test/`` folders of Parquet files).
        data_dir: for torchvision sources: the folder holding the dataset's files.
        download: let torchvision sources download missing files (needs network).
        test_fraction: share of samples held out for testing when a source has no test split.
        split_seed: seed of that hold-out split and of ``limit`` subsampling.
        limit: keep only this many training samples (a seeded random subset).
        test_limit: keep only this many test samples.
        verify_checksums: check torchvision files against their published md5 sums.
        storage_options: fsspec options for ``uri`` (e.g. S3 ``client_kwargs``).
        poison: backdoor-poison part of the training data (see :class:`PoisonConfig`).
    """

    source: str = "digits"
    uri: str | None = None
    data_dir: str | None = None
    download: bool = False
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = 0
    limit: int | None = Field(None, ge=1)
    test_limit: int | None = Field(None, ge=1)
    verify_checksums: bool = True
    storage_options: dict[str, Any] = Field(default_factory=dict)
    poison: PoisonConfig | None = None

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        from raysisa.data.sources import SOURCES

        return _registered(SOURCES, value)

    def identity(self) -> dict[str, Any]:
        """Fields that decide *which* samples are used (not where the files live)."""
        return self.model_dump(mode="json", exclude={"uri", "data_dir", "download", "verify_checksums", "storage_options"})


class ShardingConfig(ConfigModel):
    """How samples are split into ``num_shards`` shards of ``num_slices`` slices each."""

    num_shards: int = Field(5, ge=1, le=100_000)
    num_slices: int = Field(4, ge=1, le=100_000)
    seed: int = 0


class QuantConfig(ConfigModel):
    """Quantization-aware training of every shard model (SPEC 4.2).

    Args:
        scheme: a registered quantization scheme (``lsq``, ...).
        w_bits: weight bit width: 2, 4, 8, or 32 (full precision).
        a_bits: bit width of the inputs of quantized convolutions: 2, 4, 8 or 32.
    """

    scheme: str = "lsq"
    w_bits: int = 4
    a_bits: int = 8

    @field_validator("scheme")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        from raysisa.quant.schemes import SCHEMES

        return _registered(SCHEMES, value)

    @field_validator("w_bits", "a_bits")
    @classmethod
    def _supported_bits(cls, value: int) -> int:
        from raysisa.quant.schemes import SUPPORTED_BITS

        if value not in SUPPORTED_BITS:
            raise ValueError(f"unsupported bit width {value}; supported: {', '.join(map(str, SUPPORTED_BITS))} (32 = full precision)")
        return value


class ModelConfig(ConfigModel):
    """Which network each shard trains.

    Args:
        name: a registered model (``small_cnn``, ``resnet18``, ``mobilenet_v2``).
        width: base channel width of ``small_cnn`` (ignored by the torchvision models).
        quant: train with quantization (QAT) at these bit widths (``None``: full precision).
    """

    name: str = "small_cnn"
    width: int = Field(32, ge=1, le=4096)
    quant: QuantConfig | None = None

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from raysisa.models import MODELS

        return _registered(MODELS, value)


class TrainConfig(ConfigModel):
    """The training recipe of every shard (SPEC section 1.2).

    ``epochs`` is the budget *e* over the whole shard; slice *r* of *R* trains
    ``slice_epochs(e, R)[r-1]`` epochs on the cumulative data of slices 1..r.

    Args:
        epochs: epoch budget e per shard.
        batch_size: mini-batch size.
        lr: learning rate of SGD.
        momentum: SGD momentum (its buffers are checkpointed with every slice).
        weight_decay: L2 weight decay.
        lr_schedule: ``constant``, or ``cosine`` over the shard's whole epoch budget.
        augment: random crop (4 px padding) and horizontal flip, seeded per epoch.
        seed: seed of the initial weights and of every epoch's shuffle.
        threads: torch CPU threads per shard. Part of the fingerprint, since the thread
            count can change floating-point summation order.
    """

    epochs: int = Field(20, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    augment: bool = False
    seed: int = 0
    threads: int = Field(1, ge=1, le=256)


class ClusterConfig(ConfigModel):
    """Where and how shard actors run. Not part of the fingerprint.

    Args:
        address: Ray address to connect to; ``None`` means ``RAY_ADDRESS`` if set, else a
            new local cluster.
        cpus_per_shard: logical CPUs reserved by each shard actor; ``None`` spreads the
            cluster's CPUs over the shards (at most 1 each) so every actor can start.
        gpus_per_shard: GPU fraction reserved by each shard actor (0 trains on CPU).
        max_restarts: how often Ray restarts a dead shard actor (-1: forever).
        max_concurrent: shards training at the same time; ``None`` means the cluster's CPUs
            divided by ``train.threads``.
    """

    address: str | None = None
    cpus_per_shard: float | None = Field(None, gt=0)
    gpus_per_shard: float = Field(0.0, ge=0)
    max_restarts: int = Field(3, ge=-1)
    max_concurrent: int | None = Field(None, ge=1)


class StoreConfig(ConfigModel):
    """An object store location: any fsspec URI (a local folder, ``file://``, ``s3://``,
    ``memory://``).

    Args:
        uri: the run's root.
        endpoint_url: S3 endpoint override for S3-compatible servers (MinIO, moto, Ceph).
            ``AWS_ENDPOINT_URL`` in the environment works too.
        storage_options: extra keyword arguments for the fsspec filesystem.
    """

    uri: str
    endpoint_url: str | None = None
    storage_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("uri")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("store URI is empty")
        return value


def slice_epochs(epochs: int, num_slices: int) -> list[int]:
    """Epochs for slices 1..R so the whole shard costs ``epochs`` full passes (SPEC 1.2).

    With ē = 2e/(R+1), slice r trains ⌊r·ē⌋ − ⌊(r−1)·ē⌋ epochs on its cumulative data.
    Integer arithmetic keeps it exact: ⌊r·2e/(R+1)⌋.
    """
    bound = [(r * 2 * epochs) // (num_slices + 1) for r in range(num_slices + 1)]
    return [bound[r] - bound[r - 1] for r in range(1, num_slices + 1)]


class RunSpec(ConfigModel):
    """Everything that determines the trained shard models."""

    data: DataConfig = Field(default_factory=DataConfig)
    sharding: ShardingConfig = Field(default_factory=ShardingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _every_slice_trains(self) -> RunSpec:
        plan = slice_epochs(self.train.epochs, self.sharding.num_slices)
        if min(plan) == 0:
            needed = (self.sharding.num_slices + 1 + 1) // 2
            raise ValueError(
                f"train.epochs={self.train.epochs} is too small for {self.sharding.num_slices} slices: "
                f"the epoch schedule {plan} gives some slices 0 epochs; use epochs >= {needed} "
                "or fewer slices"
            )
        return self

    def fingerprint(self) -> str:
        """sha256 over every field that can change the trained weights."""
        ident = {
            "data": self.data.identity(),
            "sharding": self.sharding.to_dict(),
            "model": self.model.to_dict(),
            "train": self.train.to_dict(),
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


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
    dpus: DpusConfig = Field(default_factory=DpusConfig)
    ohs: OhsConfig = Field(default_factory=OhsConfig)

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        from raysisa.coordinator.policy import POLICIES

        return _registered(POLICIES, value)


class JobConfig(ConfigModel):
    """The content of a config file: a :class:`RunSpec` plus ``cluster``, ``compare`` (for
    ``raysisa compare``) and ``coordinator`` (for deletion requests) sections."""

    data: DataConfig = Field(default_factory=DataConfig)
    sharding: ShardingConfig = Field(default_factory=ShardingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    compare: CompareConfig = Field(default_factory=CompareConfig)
    coordinator: CoordinatorConfig = Field(default_factory=CoordinatorConfig)

    @property
    def spec(self) -> RunSpec:
        return _validate(RunSpec, self.model_dump(mode="json", exclude={"cluster", "compare", "coordinator"}))


def _apply_override(data: dict[str, Any], override: str) -> None:
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like section.key=value")
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
    node[leaf] = yaml.safe_load(raw)


def parse_config(data: dict[str, Any] | None, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    """Validate a config mapping (as read from YAML) after applying ``a.b=value`` overrides."""
    data = json.loads(json.dumps(data or {}))  # deep copy, plain types only
    if not isinstance(data, dict):
        raise ConfigError("a config must be a mapping of sections (data, sharding, model, train, cluster)")
    for override in overrides:
        _apply_override(data, override)
    job: JobConfig = _validate(JobConfig, data)
    job.spec  # noqa: B018 - cross-field checks of RunSpec
    return job


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    """Read a YAML config file (``None``: all defaults) and validate it."""
    if path is None:
        return parse_config({}, overrides)
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    return parse_config(data, overrides)
