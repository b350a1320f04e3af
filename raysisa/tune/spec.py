"""A sweep study as data (``tune_configs/*.yaml``), validated on load, before any trial starts.

A study names a scenario (the recipe of the original model, the forget set, the seeds), a
quantization grid, the methods with their search spaces, the objective, the search
algorithm and scheduler, and the resources of one trial::

    name: digits
    scenario:
      job: {data: {source: digits}, model: {width: 8}, train: {epochs: 8}}
      forget: {kind: random, fraction: 0.1}
      seeds: [0]
    quantization: {scheme: lsq, bits: [4, 32]}
    methods:
      qmul:
        space: {lr: {loguniform: [0.005, 0.05]}, epochs: {choice: [2, 4]}}
    trials: 2

Every (method, bits) pair is one cell: a Tune experiment of ``trials`` trials. Errors name
the bad field, e.g. ``methods.qmul.space.lrr: unknown parameter of qmul``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from raysisa.config import ConfigModel, JobConfig, RandomForget, RunSpec, Scenario, parse_config
from raysisa.config.base import registered, validate
from raysisa.config.job import read_yaml
from raysisa.config.recipe import SUPPORTED_BITS
from raysisa.errors import ConfigError
from raysisa.methods import METHODS, get_method
from raysisa.registry import SCHEMES

__all__ = [
    "Domain",
    "MethodSpace",
    "QuantGrid",
    "ScenarioSpec",
    "Objective",
    "SearchSpec",
    "SchedulerSpec",
    "TrialResources",
    "StudySpec",
    "Cell",
    "load_study",
    "parse_study",
    "FULL_PRECISION",
]

FULL_PRECISION = 32  # in the bit grid: the model without quantization
BIT_WIDTHS = SUPPORTED_BITS  # 32 = FULL_PRECISION
DOMAIN_KINDS = ("uniform", "loguniform", "randint", "choice")


class Domain(ConfigModel):
    """One hyperparameter's search domain, written ``{kind: values}`` in YAML:

    - ``{uniform: [low, high]}`` and ``{loguniform: [low, high]}``: floats in [low, high);
    - ``{randint: [low, high]}``: integers in [low, high) (Tune's convention: high excluded);
    - ``{choice: [a, b, ...]}``: one of the listed values.
    """

    kind: Literal["uniform", "loguniform", "randint", "choice"]
    values: list[Any]

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        if isinstance(data, dict) and len(data) == 1 and next(iter(data)) in DOMAIN_KINDS:
            kind, values = next(iter(data.items()))
            return {"kind": kind, "values": values}
        if isinstance(data, dict) and "kind" not in data:
            raise ValueError(f"a search domain is one of {{{', '.join(f'{k}: [...]' for k in DOMAIN_KINDS)}}}, got {data!r}")
        if not isinstance(data, dict):
            raise ValueError(f"a search domain is a mapping like {{choice: [1, 2]}}; put constants under 'fixed' (got {data!r})")
        return data

    @model_validator(mode="after")
    def _bounds(self) -> Domain:
        if not self.values:
            raise ValueError("empty search space: give at least one value")
        if self.kind == "choice":
            return self
        if len(self.values) != 2 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in self.values):
            raise ValueError(f"{self.kind} takes [low, high], two numbers (got {self.values!r})")
        low, high = self.values
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise ValueError(f"empty search space: {self.kind} needs low < high, both finite (got {self.values!r})")
        if self.kind == "loguniform" and low <= 0:
            raise ValueError(f"loguniform needs low > 0 (got {low!r})")
        if self.kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
            raise ValueError(f"randint takes two integers (got {self.values!r})")
        return self

    def extremes(self) -> list[Any]:
        """Values that bound the domain (every value, for a choice): checked against the method."""
        if self.kind == "choice":
            return list(self.values)
        low, high = self.values
        return [low, high - 1] if self.kind == "randint" else [low, high]

    def largest(self) -> Any:
        return max(self.extremes())

    def to_tune(self) -> Any:
        from ray import tune

        if self.kind == "choice":
            return tune.choice(self.values)
        return getattr(tune, self.kind)(*self.values)


class MethodSpace(ConfigModel):
    """A method's search space.

    Args:
        space: the hyperparameters to search, each a :class:`Domain`.
        fixed: hyperparameters set to one value for every trial.
        trials: trials per bit width (default: the study's ``trials``).
    """

    space: dict[str, Domain]
    fixed: dict[str, Any] = Field(default_factory=dict)
    trials: int | None = Field(None, ge=1, le=10_000)

    @field_validator("space")
    @classmethod
    def _not_empty(cls, value: dict[str, Domain]) -> dict[str, Domain]:
        if not value:
            raise ValueError("empty search space: name at least one hyperparameter (a one-value choice pins one)")
        return value


class QuantGrid(ConfigModel):
    """The bit widths to sweep under one quantization ``scheme`` (32: full precision; weights
    at ``bits``, activations at ``a_bits``)."""

    scheme: str = "lsq"
    bits: list[int] = Field(default_factory=lambda: [4, FULL_PRECISION], min_length=1)
    a_bits: int = 8

    @field_validator("scheme")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        return registered(SCHEMES, value)

    @field_validator("bits")
    @classmethod
    def _supported(cls, value: list[int]) -> list[int]:
        bad = [b for b in value if b not in BIT_WIDTHS]
        if bad:
            raise ValueError(f"bits must be among {list(BIT_WIDTHS)} (32 = full precision), got {bad}")
        if len(set(value)) != len(value):
            raise ValueError(f"bits are listed twice: {value}")
        return value

    @field_validator("a_bits")
    @classmethod
    def _supported_a(cls, value: int) -> int:
        if value not in BIT_WIDTHS:
            raise ValueError(f"a_bits must be one of {list(BIT_WIDTHS)}, got {value}")
        return value


class ScenarioSpec(ConfigModel):
    """What every trial unlearns from.

    Args:
        job: the original model's recipe, a raysisa config (``data``, ``model``, ``train``;
            sharding is one shard of one slice, quantization comes from the grid).
        forget: the forget set (random, classwise, noniid, backdoor).
        seeds: one original, forget set and reference per seed; trials report the mean.
    """

    job: dict[str, Any] = Field(default_factory=dict)
    forget: Scenario = Field(default_factory=RandomForget)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)

    @field_validator("job")
    @classmethod
    def _valid_job(cls, value: dict[str, Any]) -> dict[str, Any]:
        allowed = {"data", "model", "train"}
        extra = set(value) - allowed
        if extra:
            raise ValueError(f"scenario.job takes only {sorted(allowed)} (got {sorted(extra)}): sharding is 1 x 1 in a sweep")
        if isinstance(value.get("model"), dict) and value["model"].get("quant") is not None:
            raise ValueError("set bit widths in quantization.bits, not scenario.job.model.quant")
        try:
            parse_config(value)
        except ConfigError as exc:
            raise ValueError(str(exc).replace("invalid configuration: ", "")) from None
        return _absolute_data_paths(value)

    @field_validator("seeds")
    @classmethod
    def _unique(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds are listed twice: {value}")
        return value


def _absolute_data_paths(job: dict[str, Any]) -> dict[str, Any]:
    """A relative local ``data.uri``/``data.data_dir`` made absolute (from the directory the
    study is loaded in), so Ray workers elsewhere read the same files."""
    data = job.get("data")
    if not isinstance(data, dict):
        return job
    fixed = dict(data)
    for key in ("uri", "data_dir"):
        value = fixed.get(key)
        if isinstance(value, str) and value and "://" not in value:
            fixed[key] = os.path.abspath(os.path.expanduser(value))
    return {**job, "data": fixed}


class Objective(ConfigModel):
    """Minimise the mean Avg Gap to the retrained reference at the same bit width (over the
    seeds). A trial whose mean TA falls below ``ta_floor`` (in %) scores
    ``100 + avg_gap + (ta_floor − TA)``: worse than any trial above the floor, and still
    ordered by how far it missed."""

    metric: Literal["avg_gap"] = "avg_gap"
    ta_floor: float = Field(0.0, ge=0, le=100)

    def score(self, avg_gap: float, ta: float) -> float:
        if not math.isfinite(avg_gap) or not math.isfinite(ta):
            return 1e9  # a diverged model: the worst score there is (NaN would break the search)
        if ta < self.ta_floor:
            return 100.0 + avg_gap + (self.ta_floor - ta)
        return avg_gap


class SearchSpec(ConfigModel):
    """The search algorithm: ``optuna`` (TPE through Tune's integration) or ``random``."""

    algorithm: Literal["optuna", "random"] = "optuna"
    seed: int = 0


class SchedulerSpec(ConfigModel):
    """The trial scheduler: ``asha`` (stops bad trials after ``grace_period`` epochs, keeping
    1/``reduction_factor`` at each rung) or ``fifo`` (every trial runs to the end)."""

    kind: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class TrialResources(ConfigModel):
    """What one trial reserves; trials run in parallel up to the cluster's resources (and at
    most ``max_concurrent`` at a time per cell, when set)."""

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)
    max_concurrent: int | None = Field(None, ge=1)

    @property
    def threads(self) -> int:
        return max(1, int(self.cpu))

    @property
    def device(self) -> str:
        return "cuda" if self.gpu > 0 else "cpu"


class StudySpec(ConfigModel):
    """One sweep study (see the module docstring)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    scenario: ScenarioSpec = Field(default_factory=ScenarioSpec)
    quantization: QuantGrid = Field(default_factory=QuantGrid)
    methods: dict[str, MethodSpace] = Field(min_length=1)
    objective: Objective = Field(default_factory=Objective)
    search: SearchSpec = Field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    trials: int = Field(4, ge=1, le=10_000)
    resources: TrialResources = Field(default_factory=TrialResources)

    @model_validator(mode="after")
    def _methods_exist(self) -> StudySpec:
        for name, method in self.methods.items():
            where = f"methods.{name}"
            if name not in METHODS:
                raise ValueError(f"{where}: {METHODS.unknown(name)}")
            cls = METHODS.get(name)
            if cls.retrains:
                raise ValueError(f"{where}: {name} retrains exactly; it is the reference every trial is scored against")
            fields = cls.Args.model_fields
            for group in ("space", "fixed"):
                for param in getattr(method, group):
                    if param not in fields:
                        raise ValueError(f"{where}.{group}.{param}: unknown parameter of {name}; valid: {', '.join(sorted(fields))}")
            both = set(method.space) & set(method.fixed)
            if both:
                raise ValueError(f"{where}.fixed.{sorted(both)[0]}: is in the search space too")
            problem = _method_problem(name, method.fixed)
            if problem:
                raise ValueError(f"{where}.fixed: {problem}")
            for param, domain in method.space.items():
                for value in domain.extremes():
                    problem = _method_problem(name, {**method.fixed, param: value})
                    if problem:
                        raise ValueError(f"{where}.space.{param}: {value!r} is not a valid value ({problem})")
        return self

    def cells(self) -> list[Cell]:
        """Every (method, bits) pair, in the order they run."""
        return [Cell(method=method, bits=bits) for method in self.methods for bits in self.quantization.bits]

    def trials_of(self, method: str) -> int:
        return self.methods[method].trials or self.trials

    def job(self, bits: int, seed: int) -> JobConfig:
        """The original model's full config at ``bits`` for ``seed`` (``train.seed = seed``)."""
        data = json.loads(json.dumps(self.scenario.job))
        data["sharding"] = {"num_shards": 1, "num_slices": 1}
        data.setdefault("train", {})["seed"] = seed
        if bits != FULL_PRECISION:
            grid = self.quantization
            data.setdefault("model", {})["quant"] = {"scheme": grid.scheme, "w_bits": bits, "a_bits": grid.a_bits}
        return parse_config(data)

    def spec(self, bits: int, seed: int) -> RunSpec:
        return self.job(bits, seed).spec

    def digest(self) -> str:
        """A short hash of the whole study (an experiment resumes only under the same study)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def _method_problem(name: str, args: dict[str, Any]) -> str | None:
    """Why ``args`` are not valid hyperparameters of method ``name`` (None: they are)."""
    try:
        get_method(name, args)
    except ValidationError as exc:  # raised raw while an outer config validates
        return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or name}: {err['msg']}" for err in exc.errors())
    except ConfigError as exc:
        return str(exc)
    return None


class Cell(ConfigModel):
    """One (method, bits) pair of a study: one Tune experiment."""

    method: str
    bits: int

    @property
    def name(self) -> str:
        return f"{self.method}-w{self.bits}"


def parse_study(data: Any) -> StudySpec:
    """Validate a study mapping (as read from YAML)."""
    if not isinstance(data, dict):
        raise ConfigError("a study must be a mapping (name, scenario, quantization, methods, ...)")
    try:
        return validate(StudySpec, data)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("invalid configuration: ", "invalid study: ", 1)) from None


def load_study(path: str | Path) -> StudySpec:
    """Read and validate ``tune_configs/FILE.yaml``.

    Raises:
        ConfigError: unreadable or invalid, naming the bad field.
    """
    return parse_study(read_yaml(path, "study file"))
