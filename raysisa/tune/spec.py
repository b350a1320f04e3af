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

A second kind of study, ``kind: hybrid`` (:class:`HybridStudySpec`), tunes the
coordinator's retrain-or-update policy (ρ, the OHS budget, the DPUS method and its epochs,
the debt bounds) on a recorded stream of deletion requests, maximising requests per hour
under a floor on the final accuracy relative to pure retraining (PRS)::

    kind: hybrid
    name: hybrid-digits
    scenario:
      job: {data: {source: digits}, model: {width: 8}, sharding: {num_shards: 5, num_slices: 4}}
      stream: {singles: 12, bursts: 2, burst_share: 0.2, seed: 0}
    fixed: {max_drift_points: 100}
    space: {policy: {choice: [hs, ohs]}, rho: {uniform: [0.1, 0.9]}, dpus.epochs: {randint: [1, 4]}}
    objective: {metric: requests_per_hour, accuracy_floor: 1.0}
    trials: 8

A study without ``kind`` (or with ``kind: methods``) is a method sweep (:class:`StudySpec`);
:func:`parse_study` and :func:`load_study` return the right class.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from raysisa.config import ConfigModel, CoordinatorConfig, JobConfig, OhsConfig, RandomForget, RunSpec, Scenario, parse_config
from raysisa.config.base import registered, validate
from raysisa.config.job import read_yaml
from raysisa.config.recipe import FULL_PRECISION, SUPPORTED_BITS
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
    "StreamSpec",
    "HybridScenario",
    "HybridObjective",
    "HybridStudySpec",
    "AnyStudy",
    "coordinator_path",
    "coordinator_config",
    "load_study",
    "parse_study",
]

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
        bad = [b for b in value if b not in SUPPORTED_BITS]
        if bad:
            raise ValueError(f"bits must be among {list(SUPPORTED_BITS)} (32 = full precision), got {bad}")
        if len(set(value)) != len(value):
            raise ValueError(f"bits are listed twice: {value}")
        return value

    @field_validator("a_bits")
    @classmethod
    def _supported_a(cls, value: int) -> int:
        if value not in SUPPORTED_BITS:
            raise ValueError(f"a_bits must be one of {list(SUPPORTED_BITS)}, got {value}")
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

    def feasible(self, avg_gap: float, ta: float) -> bool:
        """Whether a trial counts: finite scores, TA at or above the floor."""
        return math.isfinite(avg_gap) and math.isfinite(ta) and ta >= self.ta_floor

    def score(self, avg_gap: float, ta: float) -> float:
        if not math.isfinite(avg_gap) or not math.isfinite(ta):
            return 1e9  # a diverged model: the worst score there is (NaN would break the search)
        if not self.feasible(avg_gap, ta):
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


# -- the hybrid study: the coordinator's policy on a recorded stream of deletion requests ------

# Coordinator settings the replay sets itself (one batch per request as it arrives, no idle
# restoration, every request taken): tuning them would measure something else.
REPLAY_SETTINGS = ("window_seconds", "idle_seconds", "poll_seconds", "max_batch", "max_request_ids", "defer_seconds")
_DPUS_FIELDS = ("method", "args", "quantized_method", "quantized_args")


def coordinator_path(name: str) -> tuple[str, ...]:
    """Where the dotted parameter ``name`` of a hybrid study sits in a coordinator config:
    ``rho`` -> ``("rho",)``, ``ohs.budget`` -> ``("ohs", "budget")``, ``dpus.method`` ->
    ``("dpus", "method")``, ``dpus.args.lr`` -> ``("dpus", "args", "lr")``, and the short
    form ``dpus.epochs`` -> ``("dpus", "args", "epochs")`` (a name under ``dpus`` that is not
    a field of the DPUS section is a hyperparameter of the DPUS method).

    Raises:
        ValueError: ``name`` is no tunable coordinator parameter (the message says why).
    """
    parts = tuple(name.split("."))
    root = parts[0]
    fields = CoordinatorConfig.model_fields
    if root not in fields:
        valid = [f for f in sorted(fields) if f not in (*REPLAY_SETTINGS, "dpus", "ohs")]
        raise ValueError(f"unknown coordinator parameter; valid: {', '.join(valid)}, dpus.<field or DPUS hyperparameter>, ohs.<field>")
    if root in REPLAY_SETTINGS:
        raise ValueError(f"not tunable: the replay sets {', '.join(REPLAY_SETTINGS)} itself (one batch per request, no idle restoration)")
    if root == "dpus":
        if len(parts) == 2 and parts[1] in ("method", "quantized_method"):
            return parts
        if len(parts) == 3 and parts[1] in ("args", "quantized_args"):
            return parts
        if len(parts) == 2 and parts[1] not in _DPUS_FIELDS:
            return ("dpus", "args", parts[1])
        raise ValueError("unknown coordinator parameter; name dpus.method, dpus.quantized_method, a hyperparameter of the "
                         "DPUS method (dpus.epochs, dpus.args.lr) or of the quantized one (dpus.quantized_args.epochs)")
    if root == "ohs":
        if len(parts) == 2 and parts[1] in OhsConfig.model_fields:
            return parts
        raise ValueError(f"unknown coordinator parameter; valid: {', '.join(f'ohs.{f}' for f in OhsConfig.model_fields)}")
    if len(parts) != 1:
        raise ValueError(f"unknown coordinator parameter; {root} has no fields")
    return parts


def coordinator_config(fixed: dict[str, Any], sampled: dict[str, Any] | None = None) -> CoordinatorConfig:
    """The coordinator config of a hybrid trial: the defaults, then ``fixed``, then the
    ``sampled`` values (both keyed by dotted names, see :func:`coordinator_path`).

    Raises:
        ConfigError: a value the coordinator config refuses (naming its field).
        ValueError: an unknown parameter name.
    """
    data = CoordinatorConfig().to_dict()
    for name, value in {**fixed, **(sampled or {})}.items():
        *parents, leaf = coordinator_path(name)
        node = data
        for part in parents:
            node = node[part]
        node[leaf] = value
    return validate(CoordinatorConfig, data)


def _dpus_method_problem(method: Any) -> str | None:
    """Why ``method`` cannot be the coordinator's direct update (None: it can)."""
    if not isinstance(method, str) or method not in METHODS:
        return METHODS.unknown(str(method))
    if METHODS.get(method).retrains:
        return f"{method} retrains exactly; DPUS is a direct update (the policy decides when to retrain)"
    return None


def _coordinator_problem(fixed: dict[str, Any], sampled: dict[str, Any]) -> str | None:
    """Why the coordinator config of ``fixed`` + ``sampled`` is invalid, its DPUS methods
    included (None: it is valid)."""
    try:
        config = coordinator_config(fixed, sampled)
    except ConfigError as exc:
        return str(exc).replace("invalid configuration: ", "")
    dpus = config.dpus
    for where, method, args in (("dpus.method", dpus.method, dpus.args), ("dpus.quantized_method", dpus.quantized_method, dpus.quantized_args)):
        problem = _dpus_method_problem(method)
        if problem:
            return f"{where}: {problem}"
        problem = _method_problem(method, args)
        if problem:
            return f"{where} {method}: {problem}"
    return None


class StreamSpec(ConfigModel):
    """The recorded stream of deletion requests
    (:func:`~raysisa.coordinator.replay.deletion_stream`): ``singles`` requests of one random
    id, with ``bursts`` class-wise requests (``burst_share`` of one class each) spread
    through them; drawn once with ``seed`` and stored, so every trial replays the same."""

    singles: int = Field(12, ge=0, le=100_000)
    bursts: int = Field(2, ge=0, le=1000)
    burst_share: float = Field(0.2, gt=0, le=1)
    seed: int = 0

    @model_validator(mode="after")
    def _some(self) -> StreamSpec:
        if self.singles + self.bursts == 0:
            raise ValueError("singles: an empty stream (singles + bursts = 0)")
        return self


class HybridScenario(ConfigModel):
    """What every hybrid trial replays.

    Args:
        job: the SISA ensemble's recipe, a raysisa config (``data``, ``model``, ``train``,
            ``sharding``: S shards x R slices), trained once.
        stream: the deletion requests.
    """

    job: dict[str, Any] = Field(default_factory=dict)
    stream: StreamSpec = Field(default_factory=StreamSpec)

    @field_validator("job")
    @classmethod
    def _valid_job(cls, value: dict[str, Any]) -> dict[str, Any]:
        allowed = {"data", "model", "train", "sharding"}
        extra = set(value) - allowed
        if extra:
            raise ValueError(f"scenario.job takes only {sorted(allowed)} (got {sorted(extra)}); the coordinator is tuned in space/fixed")
        try:
            parse_config(value)
        except ConfigError as exc:
            raise ValueError(str(exc).replace("invalid configuration: ", "")) from None
        return _absolute_data_paths(value)


class HybridObjective(ConfigModel):
    """Maximise requests per hour (Tune minimises ``objective`` = −requests/hour) among
    trials whose final served accuracy is at most ``accuracy_floor`` points below pure
    retraining's (PRS) on the same stream.

    A trial over the floor scores its excess, ``accuracy_gap − accuracy_floor`` (> 0): worse
    than every trial within the floor (those score < 0), and ordered by how far it missed.
    A trial whose numbers are not finite scores 1e9, the worst.

    Requests per hour are wall-clock, as a requester sees them: trials that share a machine
    slow each other (and PRS's baseline is replayed alone), so a study that compares times
    runs its trials one at a time (``resources.max_concurrent: 1``).
    """

    metric: Literal["requests_per_hour"] = "requests_per_hour"
    accuracy_floor: float = Field(1.0, ge=0, le=100)

    def feasible(self, accuracy_gap: float) -> bool:
        """Whether a trial with this gap (PRS final accuracy − the trial's, in points) is within the floor."""
        return math.isfinite(accuracy_gap) and accuracy_gap <= self.accuracy_floor

    def score(self, requests_per_hour: float, accuracy_gap: float) -> float:
        if not (math.isfinite(requests_per_hour) and math.isfinite(accuracy_gap)):
            return 1e9  # the worst score there is (NaN would break the search)
        if self.feasible(accuracy_gap):
            return -requests_per_hour
        return accuracy_gap - self.accuracy_floor


class HybridStudySpec(ConfigModel):
    """A hybrid study (see the module docstring): the coordinator's policy parameters,
    searched on one recorded stream, scored by requests per hour under an accuracy floor.

    Args:
        kind: ``hybrid``.
        scenario: the ensemble's recipe and the stream.
        fixed: coordinator parameters set for every trial (dotted names, see
            :func:`coordinator_path`); the rest keep the coordinator's defaults.
        space: the parameters to search, each a :class:`Domain`.
        objective: requests per hour under an accuracy floor relative to PRS.
        search: the search algorithm.
        scheduler: ``fifo`` (a trial reports once, after the whole stream).
        trials: how many configurations to try.
        resources: what one trial reserves (it runs the shards one after another, in-process).
    """

    kind: Literal["hybrid"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    scenario: HybridScenario = Field(default_factory=HybridScenario)
    fixed: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Domain] = Field(min_length=1)
    objective: HybridObjective = Field(default_factory=HybridObjective)
    search: SearchSpec = Field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = Field(default_factory=lambda: SchedulerSpec(kind="fifo"))
    trials: int = Field(8, ge=1, le=10_000)
    resources: TrialResources = Field(default_factory=TrialResources)

    @field_validator("scheduler")
    @classmethod
    def _fifo(cls, value: SchedulerSpec) -> SchedulerSpec:
        if value.kind != "fifo":
            raise ValueError("kind: a hybrid trial reports once, after the whole stream; only fifo applies")
        return value

    @model_validator(mode="after")
    def _parameters(self) -> HybridStudySpec:
        for group in ("fixed", "space"):
            for name in getattr(self, group):
                try:
                    coordinator_path(name)
                except ValueError as exc:
                    raise ValueError(f"{group}.{name}: {exc}") from None
        paths = {coordinator_path(n): n for n in self.space}
        for name in self.fixed:
            if coordinator_path(name) in paths:
                raise ValueError(f"fixed.{name}: is in the search space too ({paths[coordinator_path(name)]})")
        # every DPUS method the search may pick (the fixed one, or each choice)
        method_domain = self.space.get("dpus.method")
        methods = method_domain.extremes() if method_domain is not None else [None]
        for method in methods if method_domain is not None else []:
            problem = _dpus_method_problem(method)
            if problem:
                raise ValueError(f"space.dpus.method: {method!r} is not a valid value ({problem})")
        pinned_methods = {n: v for n, v in self.fixed.items() if coordinator_path(n) in (("dpus", "method"), ("dpus", "quantized_method"))}
        for name, value in self.fixed.items():
            path = coordinator_path(name)
            for method in methods if path[:2] == ("dpus", "args") else [None]:
                pinned = {**pinned_methods, **({"dpus.method": method} if method is not None else {})}
                problem = self._unknown_method_parameter(path, pinned)
                if problem:
                    raise ValueError(f"fixed.{name}: {problem}")
                problem = _coordinator_problem({**pinned, name: value}, {})
                if problem:
                    raise ValueError(f"fixed.{name}: {value!r} is not a valid value ({problem})")
        problem = _coordinator_problem(self.fixed, {})
        if problem:
            raise ValueError(f"fixed: {problem}")
        # the method choice first: the other parameters are checked with each method
        for name in sorted(self.space, key=lambda n: n != "dpus.method"):
            domain, path = self.space[name], coordinator_path(name)
            for method in methods if path[:2] == ("dpus", "args") else [None]:
                pinned = {"dpus.method": method} if method is not None else {}
                problem = self._unknown_method_parameter(path, pinned)
                if problem:
                    raise ValueError(f"space.{name}: {problem}")
                for value in domain.extremes():
                    problem = _coordinator_problem(self.fixed, {**pinned, name: value})
                    if problem:
                        with_method = f" with dpus.method {method!r}" if method is not None else ""
                        raise ValueError(f"space.{name}: {value!r} is not a valid value{with_method} ({problem})")
        return self

    def _unknown_method_parameter(self, path: tuple[str, ...], pinned: dict[str, Any]) -> str | None:
        """Why ``dpus.(quantized_)args.<p>`` is no hyperparameter of the DPUS method it goes to (None: it is, or
        ``path`` is no method hyperparameter)."""
        if path[:2] not in (("dpus", "args"), ("dpus", "quantized_args")):
            return None
        methods = {n: v for n, v in {**self.fixed, **pinned}.items() if coordinator_path(n) in (("dpus", "method"), ("dpus", "quantized_method"))}
        try:
            dpus = coordinator_config(methods).dpus  # only the method names: the other settings are checked on their own
        except ConfigError:
            return None  # a method name that is no string: reported with the method
        method = dpus.method if path[1] == "args" else dpus.quantized_method
        if method not in METHODS:
            return None  # reported with the method
        fields = METHODS.get(method).Args.model_fields
        if len(path) == 3 and path[2] not in fields:
            return f"unknown parameter of {method} (the DPUS method); valid: {', '.join(sorted(fields))}"
        return None

    def job(self) -> JobConfig:
        """The SISA ensemble's full config."""
        return parse_config(json.loads(json.dumps(self.scenario.job)))

    def spec(self) -> RunSpec:
        return self.job().spec

    def coordinator(self, sampled: dict[str, Any]) -> CoordinatorConfig:
        """A trial's coordinator config: defaults, ``fixed``, then the ``sampled`` values."""
        return coordinator_config(self.fixed, sampled)

    def digest(self) -> str:
        """A short hash of the whole study."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


AnyStudy = StudySpec | HybridStudySpec
STUDY_KINDS = ("methods", "hybrid")


def parse_study(data: Any) -> AnyStudy:
    """Validate a study mapping (as read from YAML): a :class:`HybridStudySpec` for
    ``kind: hybrid``, else a method sweep (:class:`StudySpec`)."""
    if not isinstance(data, dict):
        raise ConfigError("a study must be a mapping (name, scenario, quantization, methods, ...)")
    kind = data.get("kind", "methods")
    if kind not in STUDY_KINDS:
        raise ConfigError(f"invalid study: kind: must be one of {', '.join(STUDY_KINDS)} (got {kind!r})")
    try:
        if kind == "hybrid":
            return validate(HybridStudySpec, data)
        return validate(StudySpec, {k: v for k, v in data.items() if k != "kind"})  # a method study's dict has no kind
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("invalid configuration: ", "invalid study: ", 1)) from None


def load_study(path: str | Path) -> AnyStudy:
    """Read and validate ``tune_configs/FILE.yaml`` (either kind).

    Raises:
        ConfigError: unreadable or invalid, naming the bad field.
    """
    return parse_study(read_yaml(path, "study file"))
