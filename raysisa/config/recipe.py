"""What to train: data, sharding, model (and its quantization), the training recipe, and
the :class:`RunSpec` that bundles them. :meth:`RunSpec.fingerprint` hashes every field that
can change trained weights; it is part of every slice checkpoint key."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from raysisa.config.base import ConfigModel, registered
from raysisa.registry import MODELS, SCHEMES, SOURCES

__all__ = [
    "PoisonConfig",
    "DataConfig",
    "ShardingConfig",
    "QuantConfig",
    "ModelConfig",
    "TrainConfig",
    "slice_epochs",
    "RunSpec",
    "SUPPORTED_BITS",
    "FULL_PRECISION",
    "bits_label",
]

FULL_PRECISION = 32  # in a bit grid: the model without quantization
SUPPORTED_BITS = (2, 4, 8, FULL_PRECISION)  # bit widths of QuantConfig


def bits_label(bits: int) -> str:
    """How tables name a bit width: ``FP`` for full precision, else ``W<bits>``."""
    return "FP" if bits == FULL_PRECISION else f"W{bits}"


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
        return registered(SOURCES, value)

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
        return registered(SCHEMES, value)

    @field_validator("w_bits", "a_bits")
    @classmethod
    def _supported_bits(cls, value: int) -> int:
        if value not in SUPPORTED_BITS:
            raise ValueError(f"unsupported bit width {value}; supported: {', '.join(map(str, SUPPORTED_BITS))} (32 = full precision)")
        return value


class ModelConfig(ConfigModel):
    """Which network each shard trains.

    Args:
        name: a registered model (``small_cnn``, ``airbench``, ``resnet18``, ``mobilenet_v2``).
        width: base channel width of ``small_cnn``, first group width of ``airbench`` (64
            is the paper's airbench94); ignored by the torchvision models.
        quant: train with quantization (QAT) at these bit widths (``None``: full precision).
    """

    name: str = "small_cnn"
    width: int = Field(32, ge=1, le=4096)
    quant: QuantConfig | None = None

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return registered(MODELS, value)


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
        lr_schedule: ``constant``; ``cosine`` over the shard's whole epoch budget (set
            once per epoch); or ``linear``: set every step, rising linearly from 0 over the
            first ``warmup`` of the budget to ``lr``, then falling linearly to 0 at its end
            (airbench's triangular schedule).
        warmup: share of the epoch budget the ``linear`` schedule warms up over.
        nesterov: Nesterov momentum.
        label_smoothing: cross-entropy label smoothing of the shard training loss.
        augment: random crop (4 px zero padding) and horizontal flip, seeded per epoch.
        cutout: with ``augment``, also zero a random square of this side (0: none).
        test_flip: predictions average the logits of each image and of its mirror image.
        precision: ``bf16`` runs forward and loss under bfloat16 autocast (meant for CUDA;
            off by default, and on CPU not shown to help); ``fp32``: full precision.
        channels_last: train in channels-last memory format (helps convolutions on recent
            GPUs and with oneDNN on some CPUs; measured in BENCHMARKS.md).
        compile: ``torch.compile`` the shard model (pays on GPUs for long runs; its first
            step compiles for tens of seconds).
        seed: seed of the initial weights and of every epoch's shuffle.
        threads: torch CPU threads per shard. Part of the fingerprint, since the thread
            count can change floating-point summation order.
    """

    epochs: int = Field(20, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: bool = False
    cutout: int = Field(0, ge=0)
    test_flip: bool = False
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    threads: int = Field(1, ge=1, le=256)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        if self.cutout and not self.augment:
            raise ValueError("cutout is part of the augmentation: set augment: true as well")
        return self

    def identity(self) -> dict[str, Any]:
        """The fields as the fingerprint sees them: options added after the first runs
        count only when set, so runs created before they existed keep their fingerprint."""
        data = self.to_dict()
        return {k: v for k, v in data.items() if k not in _LATER_TRAIN_OPTIONS or v != _LATER_TRAIN_OPTIONS[k]}


# TrainConfig options added after runs existed, with their defaults (see TrainConfig.identity)
_LATER_TRAIN_OPTIONS: dict[str, Any] = {
    "warmup": 0.0, "nesterov": False, "label_smoothing": 0.0, "cutout": 0, "test_flip": False,
    "precision": "fp32", "channels_last": False, "compile": False,
}


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
            "train": self.train.identity(),
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
