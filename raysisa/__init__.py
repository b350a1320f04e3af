"""raysisa: forget training data on request, exactly, with SISA on Ray.

The public API is what ``__all__`` lists; everything else is internal.

Example:
    >>> import raysisa
    >>> job = raysisa.load_config(None)          # the embedded default: digits, 5 shards x 4 slices
    >>> job.spec.data.source
    'digits'
"""

from importlib.metadata import version as _version

__version__ = _version("raysisa")  # one source: pyproject.toml

# These imports also fill the registries whose names configs validate (raysisa.registry):
# data sources (raysisa.data), models and quantization schemes (raysisa.models, raysisa.quant)
# and coordinator policies (raysisa.coordinator). Python runs this file before any submodule,
# so every built-in name is registered whichever raysisa module is imported first.
from raysisa.api import compare, evaluate, inspect, run_coordinator, train, unlearn
from raysisa.coordinator import register_subjects, requests, status, submit, wait
from raysisa.config import (
    ClusterConfig,
    DataConfig,
    JobConfig,
    ModelConfig,
    RunSpec,
    ShardingConfig,
    StoreConfig,
    TrainConfig,
    load_config,
    parse_config,
)
from raysisa.data import list_sources, register_source
from raysisa.errors import (
    CheckpointCorruptError,
    ConfigError,
    DataError,
    InvalidIdsError,
    RaysisaError,
    ShardUnavailableError,
    StaleStateError,
    StoreError,
    StoreNotFoundError,
)
from raysisa.models import list_models, register_model
from raysisa.methods import get_method, list_methods, register_method
from raysisa.sisa import (
    EvalReport,
    LocalPool,
    SisaRun,
    TrainReport,
    UnlearnReport,
    aggregate,
    list_aggregators,
    register_aggregator,
)

__all__ = [
    "__version__",
    "CheckpointCorruptError",
    "ClusterConfig",
    "ConfigError",
    "DataConfig",
    "DataError",
    "EvalReport",
    "InvalidIdsError",
    "JobConfig",
    "LocalPool",
    "ModelConfig",
    "RaysisaError",
    "RunSpec",
    "ShardUnavailableError",
    "ShardingConfig",
    "SisaRun",
    "StaleStateError",
    "StoreConfig",
    "StoreError",
    "StoreNotFoundError",
    "TrainConfig",
    "TrainReport",
    "UnlearnReport",
    "aggregate",
    "compare",
    "evaluate",
    "get_method",
    "list_methods",
    "register_method",
    "inspect",
    "list_aggregators",
    "list_models",
    "list_sources",
    "load_config",
    "parse_config",
    "register_aggregator",
    "register_model",
    "register_source",
    "register_subjects",
    "requests",
    "run_coordinator",
    "status",
    "submit",
    "train",
    "unlearn",
    "wait",
]
