"""Typed, validated configuration (the package re-exports every config class).

A run is described by a :class:`RunSpec` (what to train: data, sharding, model, training
recipe) plus a :class:`ClusterConfig` (where to run it) and a :class:`StoreConfig` (where
to keep it). All are frozen pydantic models: they validate on construction, travel to Ray
actors as plain data (``to_dict``/``from_dict``) and are the only thing parsed from YAML.

The :meth:`RunSpec.fingerprint` hashes every field that can change trained weights; it is
part of every slice checkpoint key, so two stores trained with the same recipe share keys
and a store refuses to resume under a different recipe.
"""

from __future__ import annotations

from raysisa.config.base import ConfigModel
from raysisa.config.compare import (
    BackdoorForget,
    ClasswiseForget,
    CompareConfig,
    MethodVariant,
    NonIIDForget,
    PruneConfig,
    RandomForget,
    Scenario,
)
from raysisa.config.coordinator import CoordinatorConfig, DpusConfig, OhsConfig
from raysisa.config.job import JobConfig, load_config, parse_config
from raysisa.config.recipe import (
    DataConfig,
    ModelConfig,
    PoisonConfig,
    QuantConfig,
    RunSpec,
    ShardingConfig,
    TrainConfig,
    slice_epochs,
)
from raysisa.config.runtime import ClusterConfig, StoreConfig

__all__ = [
    "BackdoorForget",
    "ClasswiseForget",
    "ClusterConfig",
    "CompareConfig",
    "ConfigModel",
    "CoordinatorConfig",
    "DataConfig",
    "DpusConfig",
    "JobConfig",
    "MethodVariant",
    "ModelConfig",
    "NonIIDForget",
    "OhsConfig",
    "PoisonConfig",
    "PruneConfig",
    "QuantConfig",
    "RandomForget",
    "RunSpec",
    "Scenario",
    "ShardingConfig",
    "StoreConfig",
    "TrainConfig",
    "load_config",
    "parse_config",
    "slice_epochs",
]
