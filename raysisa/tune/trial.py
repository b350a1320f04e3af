"""One trial: a method with one sampled configuration, applied to the stored original of
every seed, scored against the stored reference after every unlearning epoch.

The seeds advance in lockstep (:func:`~raysisa.methods.engine.iterate_method`), and each
epoch is reported once with the mean over seeds, so ASHA compares trials at equal
budgets. A method without a loop (IU) reports once, after its one-shot update.
A trial whose weights turn non-finite raises :class:`~raysisa.errors.DivergedError`:
Tune records it as an errored trial and the sweep goes on.

Ray-free: :func:`run_trial` takes the reporting function (Tune's ``tune.report`` in a
sweep; a list's ``append`` in a test).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from raysisa.config import StoreConfig
from raysisa.errors import DivergedError
from raysisa.evaluation.evaluator import Evaluator
from raysisa.evaluation.metrics import GAP_METRICS
from raysisa.evaluation.scenarios import excluded_test_classes, load_forget_set
from raysisa.methods import get_method
from raysisa.methods.engine import UnlearnOutcome, iterate_method
from raysisa.sisa.run import SisaRun
from raysisa.sisa.shard import ShardWorker
from raysisa.sisa.tasks import ApplyUpdate, MethodCall
from raysisa.store import ObjectStore
from raysisa.training import configure_torch, derive_seed
from raysisa.tune.artifacts import Prepared
from raysisa.tune.spec import Objective, StudySpec

__all__ = ["TrialSetup", "run_trial", "REPORTED"]

# What every report holds besides the per-seed gaps ("avg_gap_seed<k>").
REPORTED = ("objective", "avg_gap", "avg_gap_std", "FA", "UA", "RA", "TA", "MIA", "epoch", "rte_seconds", "retrain_seconds")


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of one cell shares (plain data: it travels to Tune's trial actors)."""

    method: str
    bits: int
    fixed: dict[str, Any]
    objective: dict[str, Any]
    excluded_classes: list[int]  # test classes left out of TA (class-wise forgetting)
    models: dict[str, Any]  # the models store (StoreConfig)
    prepared: list[dict[str, Any]]  # one Prepared per seed
    threads: int = 1
    device: str = "cpu"

    @classmethod
    def of(cls, study: StudySpec, method: str, bits: int, models: StoreConfig, prepared: list[Prepared]) -> TrialSetup:
        return cls(
            method=method,
            bits=bits,
            fixed=dict(study.methods[method].fixed),
            objective=study.objective.to_dict(),
            excluded_classes=excluded_test_classes(study.scenario.forget),
            models=models.to_dict(),
            prepared=[p.to_dict() for p in prepared if p.bits == bits],
            threads=study.resources.threads,
            device=study.resources.device,
        )


@dataclass
class _Seed:
    prepared: Prepared
    evaluator: Evaluator
    model: Any
    steps: Iterator[UnlearnOutcome]
    outcome: UnlearnOutcome | None = None


def _start(setup: TrialSetup, params: dict[str, Any], prepared: Prepared) -> _Seed:
    run = SisaRun.open(prepared.original)
    forget, _ = load_forget_set(ObjectStore(StoreConfig.from_dict(setup.models)), prepared.forget_key)
    evaluator = Evaluator(run, forget, setup.excluded_classes)
    method = get_method(setup.method, params)
    worker = ShardWorker(0, setup.device)
    # the seed compare and the coordinator give shard 0 (derive_seed(seed, shard)): a trial's model is
    # bit-identical to what `raysisa compare` produces with the same hyperparameters
    task = ApplyUpdate(run.at(), MethodCall.of(method), np.asarray(forget, np.int64), derive_seed(prepared.seed, 0))
    unlearner, ctx = worker.update_context(task)
    return _Seed(prepared, evaluator, ctx.model, iterate_method(unlearner, ctx))


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None]
    return float(np.mean(finite)) if finite else math.nan


def run_trial(config: dict[str, Any], setup: TrialSetup, report: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Run the trial of sampled ``config``; call ``report`` once per epoch (after the
    one-shot update for a method without a loop). Returns the last report."""
    configure_torch(setup.threads)
    params = {**setup.fixed, **config}
    objective = Objective.from_dict(setup.objective)
    seeds = [_start(setup, params, Prepared.from_dict(p)) for p in setup.prepared]
    for seed in seeds:
        seed.outcome = next(seed.steps)  # the one-shot part (prepare); a method without a loop is done
    looped = seeds[0].outcome.args["epochs"] > 0
    if not looped:
        last = _summary(seeds, objective)
        report(last)
        return last
    last: dict[str, Any] = {}
    while True:
        moved = False
        for seed in seeds:  # one epoch of every seed; one that stopped early keeps its last state
            step = next(seed.steps, None)
            if step is not None:
                seed.outcome, moved = step, True
        if not moved:
            return last
        last = _summary(seeds, objective)
        report(last)


def _finite_state(seed: _Seed) -> dict[str, Any]:
    """The seed's model state; a trial whose weights went non-finite fails (Tune reports it
    as an errored trial and goes on) instead of scoring a broken model."""
    state = {k: v.detach().cpu() for k, v in seed.model.state_dict().items()}
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if broken:
        raise DivergedError(
            f"seed {seed.prepared.seed}, epoch {seed.outcome.epochs}: non-finite weights in {', '.join(broken[:3])}"
            f"{' and more' if len(broken) > 3 else ''}; the method diverged "
            "(its step is likely too large: learning rate, or IU's alpha)"
        )
    return state


def _summary(seeds: list[_Seed], objective: Objective) -> dict[str, Any]:
    rows = []
    for seed in seeds:
        state = _finite_state(seed)
        metrics = seed.evaluator.metrics([state])
        reference = seed.prepared.reference_scores()
        gaps = metrics.gaps(reference)
        rows.append(
            {
                "seed": seed.prepared.seed,
                "avg_gap": float(np.mean([gaps[m] for m in GAP_METRICS])),
                **{m: getattr(metrics, m) for m in GAP_METRICS},
                "UA": metrics.UA,
                "rte": seed.outcome.setup_seconds + seed.outcome.unlearn_seconds,
                "epoch": seed.outcome.epochs,
                "retrain": seed.prepared.retrain_seconds,
            }
        )
    gap = _mean([r["avg_gap"] for r in rows])
    ta = _mean([r["TA"] for r in rows])
    out = {
        "objective": objective.score(gap, ta),
        "avg_gap": gap,
        "avg_gap_std": float(np.std([r["avg_gap"] for r in rows])),
        **{m: _mean([r[m] for r in rows]) for m in ("FA", "UA", "RA", "TA", "MIA")},
        "epoch": max(r["epoch"] for r in rows),
        "rte_seconds": _mean([r["rte"] for r in rows]),
        "retrain_seconds": _mean([r["retrain"] for r in rows]),
    }
    out.update({f"avg_gap_seed{r['seed']}": r["avg_gap"] for r in rows})
    return out
