"""``raysisa sweep``: a study as Ray Tune experiments, one per (method, bits) cell.

Layout under ``--storage`` (a folder, or any URI Ray Tune accepts, e.g.
``s3://bucket/sweeps?endpoint_override=127.0.0.1:9000&scheme=http``)::

    <study>/study.json            the validated study (a resume must match it)
    <study>/_log/lease/           the lease of the sweep running the study (one at a time)
    <study>/prepared.json         where each (bits, seed)'s original and reference live
    <study>/<method>-w<bits>/     one Tune experiment per cell (Tune's own layout)
    <study>/report/               trials.md, trials.parquet, best.md, best.json, *.png
    models/                       originals and references (shared by every study here)

A hybrid study (``kind: hybrid``) has one Tune experiment, ``<study>/hybrid/``, and its
prepared scenario (the ensemble, the recorded stream, the PRS baseline) lives under
``models/hybrid/`` (:mod:`raysisa.tune.hybrid`); ``prepared.json`` records where.

A cell is independent of the others: its search algorithm and scheduler see only its own
trials (ASHA would otherwise stop one method for being worse than another), and a resumed
sweep restores each cell with ``Tuner.restore``: finished trials are not run again, and a
cell that finished is only read.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

from raysisa.config import ClusterConfig, StoreConfig
from raysisa.errors import ConfigError, StoreBusyError
from raysisa.tune.artifacts import Prepared, prepare
from raysisa.tune.hybrid import HybridPrepared, HybridSetup, prepare_hybrid, run_hybrid_trial
from raysisa.tune.hybrid_report import HYBRID_EXPERIMENT
from raysisa.tune.paths import SweepPaths
from raysisa.tune.spec import AnyStudy, Cell, HybridStudySpec, StudySpec
from raysisa.tune.trial import TrialSetup, run_trial

__all__ = ["SweepResult", "sweep", "cell_tuner", "hybrid_tuner"]

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    """What a sweep did: per cell, its trials' outcome counts; the report's location."""

    study: str
    storage: str
    cells: dict[str, dict[str, int]] = field(default_factory=dict)
    slices_trained: int = 0  # originals and references (a hybrid study: its ensemble) trained by this sweep
    interrupted: bool = False  # stopped (Ctrl-C) with trials not run: continue with --resume
    baseline_replayed: bool = False  # a hybrid study: whether this sweep replayed the PRS baseline
    report: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _check_study(paths: SweepPaths, study: AnyStudy, resume: bool) -> None:
    """Record the study in ``study.json`` (a conditional create: of two sweeps that start the
    same new study, one records it), or check that a stored one is this study and resumed."""
    files = paths.files
    if not files.exists("study.json") and files.create_json("study.json", study.to_dict()):
        if resume:
            log.info("nothing to resume at %s: starting the study", paths.root)
        return
    stored = files.get_json("study.json")
    if stored != study.to_dict():
        raise ConfigError(
            f"the study at {paths.root} was started from a different spec; use another --storage or study name "
            "(a resumed study must be the same file)"
        )
    if not resume:
        raise ConfigError(f"study {study.name!r} already exists at {paths.root}; pass --resume to continue it")


def _prepare_all(study: StudySpec, models: StoreConfig) -> list[Prepared]:
    """Every (bits, seed)'s original and reference, as parallel Ray tasks with a trial's resources."""
    import ray

    resources = study.resources
    task = ray.remote(num_cpus=resources.cpu, num_gpus=resources.gpu, max_retries=1)(prepare)
    refs = [task.remote(study, bits, seed, models) for bits in study.quantization.bits for seed in study.scenario.seeds]
    return ray.get(refs)


def _tuner(study: AnyStudy, paths: SweepPaths, name: str, trainable, resume: bool, *,
           param_space: dict[str, Any], num_samples: int, scheduler):
    """The Tune experiment ``name`` of ``study`` running ``trainable``: restored from storage
    when ``resume`` and present (Tune keeps its space, samples and scheduler), else a new one
    that minimises the reported ``objective``."""
    from ray import tune

    trainable = tune.with_resources(trainable, {"cpu": study.resources.cpu, "gpu": study.resources.gpu})
    path = paths.experiment(name)
    if resume and tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable=trainable)
    tune_config = tune.TuneConfig(
        metric="objective", mode="min", num_samples=num_samples, search_alg=_search(study), scheduler=scheduler,
        max_concurrent_trials=study.resources.max_concurrent,
    )
    run_config = tune.RunConfig(name=name, storage_path=paths.root, verbose=0, log_to_file=True)
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def _function(run: Callable[[dict[str, Any], Any, Callable], Any], setup: Any, name: str):
    """Tune's function trainable: ``run(config, setup, tune.report)``."""
    from ray import tune

    def trial(config: dict[str, Any]) -> None:
        run(config, setup, tune.report)

    trial.__name__ = name
    return trial


def cell_tuner(study: StudySpec, cell: Cell, paths: SweepPaths, setup: TrialSetup, resume: bool):
    """The Tune experiment of one cell: restored from storage when ``resume`` and present."""
    method = study.methods[cell.method]
    epochs = method.space["epochs"].largest() if "epochs" in method.space else _default_epochs(cell.method, method.fixed)
    return _tuner(
        study, paths, cell.name, _function(run_trial, setup, f"{setup.method}_w{setup.bits}"), resume,
        param_space={name: domain.to_tune() for name, domain in method.space.items()},
        num_samples=study.trials_of(cell.method),
        scheduler=_scheduler(study, max(1, epochs)),
    )


def hybrid_tuner(study: HybridStudySpec, paths: SweepPaths, setup: HybridSetup, resume: bool):
    """The Tune experiment of a hybrid study (FIFO: a trial reports once, after the stream),
    restored from storage when ``resume`` and present."""
    from ray.tune.schedulers import FIFOScheduler

    return _tuner(
        study, paths, HYBRID_EXPERIMENT, _function(run_hybrid_trial, setup, "hybrid"), resume,
        param_space={name: domain.to_tune() for name, domain in study.space.items()},
        num_samples=study.trials,
        scheduler=FIFOScheduler(),
    )


def _default_epochs(method: str, fixed: dict[str, Any]) -> int:
    from raysisa.methods import get_method

    return get_method(method, fixed).args.epochs


def _search(study: AnyStudy):
    if study.search.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=study.search.seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=study.search.seed)


def _scheduler(study: StudySpec, max_epochs: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    spec = study.scheduler
    if spec.kind == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", max_t=max_epochs, grace_period=min(spec.grace_period, max_epochs), reduction_factor=spec.reduction_factor)


def sweep(study: AnyStudy, storage: str, *, resume: bool = False, cluster: ClusterConfig | None = None) -> SweepResult:
    """Run (or ``resume``) ``study`` with its Tune experiments under ``storage``; write its report.

    Raises:
        ConfigError: the study exists and ``resume`` is off, or it was started from another spec.
        StoreBusyError: another process is sweeping this study now.
    """
    from raysisa.sisa.actors import ray_session

    started = time.perf_counter()
    paths = SweepPaths.of(storage, study.name)
    result = SweepResult(study.name, paths.root)
    lease = _study_lease(paths, study)
    try:
        with ray_session(cluster):
            _run(study, paths, resume, result)
    finally:
        lease.release()
    result.seconds = time.perf_counter() - started
    return result


def _study_lease(paths: SweepPaths, study: AnyStudy):
    """One sweep of a study at a time: the study folder's writer lease (two Tune drivers on
    one experiment would overwrite each other's state). A killed sweep's lease is free at
    once on this machine and expires by itself elsewhere."""
    from raysisa.store.lease import acquire_lease

    try:
        return acquire_lease(paths.files, f"sweep {study.name}", wait=0)
    except StoreBusyError as exc:
        raise StoreBusyError(f"study {study.name!r} is being swept by another process; {exc}") from None


def _run(study: AnyStudy, paths: SweepPaths, resume: bool, result: SweepResult) -> None:
    from raysisa.tune.report import write_report

    _check_study(paths, study, resume)
    if isinstance(study, HybridStudySpec):
        _run_hybrid(study, paths, resume, result)
        result.report = write_report(study, paths)
        return
    models = paths.models
    prepared = _prepare_all(study, models)
    result.slices_trained = sum(p.slices_trained for p in prepared)
    paths.files.put_json("prepared.json", [p.to_dict() for p in prepared])
    for cell in study.cells():
        setup = TrialSetup.of(study, cell.method, cell.bits, models, prepared)
        cell_tuner(study, cell, paths, setup, resume).fit()
        result.cells[cell.name] = _outcome(paths.cell(cell))
        if _stopped(study, result, cell.name):
            break
        log.info("sweep %s: cell %s done (%s)", study.name, cell.name, result.cells[cell.name])
    result.report = write_report(study, paths)


def _outcome(experiment: str) -> dict[str, int]:
    """Trial counts of one experiment by status: Tune's ``fit`` returns early on Ctrl-C
    (SIGINT), leaving trials pending, which a resume runs."""
    from raysisa.tune.tables import experiment_trials

    statuses = [t.status for t in experiment_trials(experiment)]
    finished, errors = statuses.count("TERMINATED"), statuses.count("ERROR")
    return {"trials": len(statuses), "errors": errors, "finished": finished, "pending": len(statuses) - finished - errors}


def _stopped(study: AnyStudy, result: SweepResult, name: str) -> bool:
    """Whether the experiment ``name`` was interrupted; then the sweep stops there (the
    next cells would start only to be interrupted one by one)."""
    if not result.cells[name]["pending"]:
        return False
    result.interrupted = True
    log.warning("sweep %s interrupted in %s with %d trials not run; continue with --resume", study.name, name, result.cells[name]["pending"])
    return True


def _run_hybrid(study: HybridStudySpec, paths: SweepPaths, resume: bool, result: SweepResult) -> None:
    """Prepare the scenario once (a Ray task with a trial's resources), then run the study's
    one Tune experiment."""
    import ray

    models = paths.models
    resources = study.resources
    task = ray.remote(num_cpus=resources.cpu, num_gpus=resources.gpu, max_retries=1)(prepare_hybrid)
    prepared: HybridPrepared = ray.get(task.remote(study, models, resources.threads, resources.device))
    result.slices_trained = prepared.slices_trained
    result.baseline_replayed = prepared.replayed
    paths.files.put_json("prepared.json", prepared.to_dict())
    hybrid_tuner(study, paths, HybridSetup.of(study, models, prepared), resume).fit()
    result.cells[HYBRID_EXPERIMENT] = _outcome(paths.experiment(HYBRID_EXPERIMENT))
    if not _stopped(study, result, HYBRID_EXPERIMENT):
        log.info("sweep %s: done (%s)", study.name, result.cells[HYBRID_EXPERIMENT])
