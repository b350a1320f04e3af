"""A config file: every section in one :class:`JobConfig`, read from YAML with
``section.key=value`` overrides. The only YAML parser in raysisa."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, model_validator

from raysisa.config.base import ConfigModel, validate
from raysisa.config.compare import CompareConfig
from raysisa.config.coordinator import CoordinatorConfig
from raysisa.config.recipe import DataConfig, ModelConfig, RunSpec, ShardingConfig, TrainConfig
from raysisa.config.runtime import ClusterConfig
from raysisa.errors import ConfigError

__all__ = ["JobConfig", "parse_config", "load_config", "read_yaml"]


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

    @model_validator(mode="after")
    def _prune_fits_the_recipe(self) -> JobConfig:
        prune = self.compare.prune
        if prune is None or prune.mode != "rewind":
            return self
        if prune.rewind_epoch >= self.train.epochs:
            raise ValueError(
                f"compare.prune.rewind_epoch: must be smaller than train.epochs ({self.train.epochs}) to rewind "
                f"(got {prune.rewind_epoch}); lower it or use compare.prune.mode=finetune"
            )
        if self.sharding.num_slices != 1:
            raise ValueError(
                f"compare.prune.mode: rewind replays a shard's first epochs, which needs sharding.num_slices = 1 "
                f"(got {self.sharding.num_slices}); use compare.prune.mode=finetune for sliced shards"
            )
        return self

    @property
    def spec(self) -> RunSpec:
        return validate(RunSpec, self.model_dump(mode="json", exclude={"cluster", "compare", "coordinator"}))


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
    job: JobConfig = validate(JobConfig, data)
    job.spec  # noqa: B018 - cross-field checks of RunSpec
    return job


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    """Read a YAML config file (``None``: all defaults) and validate it."""
    if path is None:
        return parse_config({}, overrides)
    return parse_config(read_yaml(path, "config file"), overrides)


def read_yaml(path: str | Path, what: str) -> Any:
    """The YAML document in ``path`` (a config file, a sweep study).

    Raises:
        ConfigError: unreadable, not UTF-8 or not YAML, naming ``what`` and the path.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None
