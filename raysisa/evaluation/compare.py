"""``raysisa compare``: retraining and approximate methods on the same forget set.

Layout under the comparison's store::

    original/                    the SISA run every method starts from (S = R = 1: one model)
    forget_sets/<...>.parquet    the forget set of every seed, by id
    retrain/<forget-sha>/        the exact reference: the same recipe without the forget set
    reports/<name>/              report.md, report.json, gaps.png

For each seed: draw the forget set; train (or reuse, thanks to content-addressed
checkpoints) the retrain reference; apply every method to the affected shard models
(forget = U ∩ D_k, retain = D_k \\ U); score original, retrain and every method on the
same sets; report each metric's gap to retrain. The stored original is never modified.

With ``compare.prune`` (prune first, SPEC 3.2) every method starts from the pruned original
(OMP, then rewind-and-retrain by default) and keeps its pruned weights at zero, and the
reference is the same masked architecture trained from the initial weights on the retain set.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import numpy as np
import torch

from raysisa.config import CompareConfig, JobConfig, PruneConfig, StoreConfig
from raysisa.data.samples import take_ids
from raysisa.errors import ConfigError
from raysisa.evaluation.evaluator import Evaluator, load_states
from raysisa.evaluation.metrics import GAP_METRICS, Metrics
from raysisa.evaluation.report import write_report
from raysisa.evaluation.results import CompareReport, MethodResult
from raysisa.models import build_model
from raysisa.evaluation.scenarios import draw_forget_set, excluded_test_classes, save_forget_set
from raysisa.sisa.cost import first_slices
from raysisa.sisa.pool import ShardPool
from raysisa.sisa.run import SisaRun
from raysisa.sisa.shard import model_tensors, shard_refs
from raysisa.sisa.tasks import ApplyUpdate, MethodCall, RewindRetrain
from raysisa.store import ObjectStore
from raysisa.methods import UnlearnMethod, get_method, list_methods, omp_prune
from raysisa.methods.tuned import Setting, tuned_args
from raysisa.methods.masks import sparsity
from raysisa.sisa.approximate import approximate_unlearn, shard_groups

__all__ = ["MethodResult", "CompareReport", "compare", "resolve_methods"]

log = logging.getLogger(__name__)
State = dict[str, torch.Tensor]


def resolve_methods(config: CompareConfig, names: list[str] | None = None, setting: Setting | None = None) -> dict[str, UnlearnMethod]:
    """The approximate methods to compare, by report label (``retrain`` excluded).

    A label is a registered method (hyperparameters from ``compare.method_args``, over the
    tuned values for ``setting`` when ``compare.tuned_defaults`` and the method was tuned
    there) or a ``compare.variants`` entry (a method with its own arguments, e.g. an ablation).

    Raises:
        ConfigError: an unknown name or invalid hyperparameters.
    """
    labels = names if names is not None else (config.methods or [m for m in list_methods() if m != "retrain"])
    chosen = {}
    for label in labels:
        if label == "retrain":
            continue
        if label in config.variants:
            variant = config.variants[label]
            chosen[label] = get_method(variant.method, variant.args)
        else:
            tuned = tuned_args(label, setting) if setting is not None and config.tuned_defaults else None
            if tuned is not None:
                log.info("%s: hyperparameters tuned for %s (%s) under compare.method_args", label, setting, tuned.source.get("study", "?"))
            args = {**(tuned.params if tuned else {}), **(config.method_args.get(label) or {})}
            chosen[label] = get_method(label, args)  # unknown names fail here
    unknown = set(config.method_args) - set(list_methods())
    if unknown:
        raise ConfigError(f"compare.method_args names unknown method(s): {', '.join(sorted(unknown))}")
    for variant in config.variants.values():
        get_method(variant.method, variant.args)
    return chosen


def _sub(store: StoreConfig, name: str) -> StoreConfig:
    return store.model_copy(update={"uri": f"{store.uri.rstrip('/')}/{name}"})


def _result(name: str, seed: int, args: dict, metrics: Metrics, reference: Metrics | None, **extra: Any) -> MethodResult:
    gaps = metrics.gaps(reference) if reference else {m: 0.0 for m in GAP_METRICS}
    return MethodResult(name, seed, args, metrics.to_dict(), gaps, float(np.mean(list(gaps.values()))), **extra)


def _shard_slices(run: SisaRun, ids: np.ndarray) -> dict[int, int]:
    """Earliest affected slice per shard (the SISA rule's r*)."""
    rows = take_ids(run.store.read_index(), ids)
    return first_slices(rows["shard"].to_numpy(), rows["slice"].to_numpy())


def _sisa_retrain_seconds(reference: SisaRun, first_slice: dict[int, int]) -> float:
    """Training time of exactly the slices SISA retrains for this forget set."""
    total = 0.0
    for shard, first in first_slice.items():
        for ref in shard_refs(reference.store, shard)[first:]:
            total += reference.store.checkpoints.manifest(ref).get("train_seconds", 0.0)
    return total


def _prune_first(original: SisaRun, prune: PruneConfig, states: list[State], pool: ShardPool) -> tuple[list[State], list[State], float]:
    """OMP every converged shard model (global magnitude over its conv weights), then recover
    it with the mask held: ``rewind`` (the reference) rewinds the survivors to the end of
    epoch ``prune.rewind_epoch`` of the shard's training and retrains with the run's recipe,
    LR schedule fast-forwarded; ``finetune`` fine-tunes the pruned converged model."""
    started = time.perf_counter()
    spec = original.store.spec
    recover = get_method("finetune", {"epochs": prune.epochs, "lr": prune.lr, "batch_size": spec.train.batch_size})
    retrain_epochs = spec.train.epochs if prune.retrain_epochs is None else prune.retrain_epochs
    masks, handles = [], []
    for shard, state in enumerate(states):
        model = build_model(original.store.info, spec.model)
        model.load_state_dict({k: v.clone() for k, v in state.items()})
        mask = omp_prune(model, prune.sparsity)
        masks.append(mask)
        if prune.mode == "rewind":
            task = RewindRetrain(original.at(), mask, prune.rewind_epoch, retrain_epochs)
        else:
            task = ApplyUpdate(original.at(), MethodCall.of(recover), np.zeros(0, np.int64), 0, base=model.state_dict(), prune_mask=mask)
        handles.append(pool.submit(shard, task))
    results = [pool.result(h) for h in handles]
    pruned = results if prune.mode == "rewind" else [r.tensors for r in results]
    return pruned, masks, time.perf_counter() - started


def _masked_retrain(original: SisaRun, forget: np.ndarray, masks: list[State], pool: ShardPool, seed: int) -> tuple[dict[int, State], float]:
    """The prune-first reference: the masked architecture trained from each affected shard's
    initial weights (slice 0, pruned weights zeroed) on its retain data, with the run's own
    recipe (no slicing), as the reference retrains the masked network from an init on D_r."""
    train = original.store.spec.train
    recipe = get_method(
        "finetune",
        {
            "epochs": train.epochs,
            "lr": train.lr,
            "momentum": train.momentum,
            "weight_decay": train.weight_decay,
            "batch_size": train.batch_size,
            "schedule": train.lr_schedule,
            "augment": train.augment,
        },
    )
    started = time.perf_counter()
    handles = {}
    for shard, ids in shard_groups(original, forget).items():
        init = model_tensors(original.store.checkpoints.get(shard_refs(original.store, shard)[0]).tensors)
        handles[shard] = pool.submit(shard, ApplyUpdate(original.at(), MethodCall.of(recipe), ids, seed, base=init, prune_mask=masks[shard]))
    states = {shard: pool.result(h).tensors for shard, h in handles.items()}
    return states, time.perf_counter() - started


def _conv_sparsity(run: SisaRun, states: list[State]) -> float:
    """The lowest conv-weight sparsity among the shard models (prune-first reports it)."""
    model = build_model(run.store.info, run.store.spec.model)
    values = []
    for state in states:
        model.load_state_dict(state)
        values.append(sparsity(model))
    return min(values)


def compare(
    job: JobConfig,
    store: StoreConfig,
    pool: ShardPool,
    methods: list[str] | None = None,
    seeds: list[int] | None = None,
    progress: bool = False,
) -> CompareReport:
    """Run a comparison (see the module docstring) and write its report to the store."""
    config = job.compare
    spec = job.spec
    chosen = resolve_methods(config, methods, Setting.of(spec))
    seeds = seeds if seeds is not None else list(config.seeds)
    root = ObjectStore(store)
    original = SisaRun.create(spec, _sub(store, "original"))
    original.train(pool, progress)
    original_states = load_states(original)
    base_states, masks, prune_seconds = original_states, None, 0.0
    if config.prune is not None:
        base_states, masks, prune_seconds = _prune_first(original, config.prune, original_states, pool)

    results: list[MethodResult] = []
    forget_sets: dict[int, dict[str, Any]] = {}
    sizes: dict[str, int] = {}
    for seed in seeds:
        forget = draw_forget_set(config.scenario, original, seed)
        key = save_forget_set(root, config.scenario, seed, forget, spec.data)
        forget_sets[seed] = {"key": key, "count": int(len(forget))}
        evaluator = Evaluator(original, forget, excluded_test_classes(config.scenario))
        sizes = evaluator.sizes()
        first_slice = _shard_slices(original, forget)

        started = time.perf_counter()
        if masks is None:
            digest = hashlib.sha256(forget.tobytes()).hexdigest()[:16]
            reference = SisaRun.create(spec, _sub(store, f"retrain/{digest}"), exclude_ids=forget)
            reference.train(pool, progress)
            retrain_states, retrain_compute = load_states(reference), _sisa_retrain_seconds(reference, first_slice)
        else:
            updated, retrain_compute = _masked_retrain(original, forget, masks, pool, seed)
            retrain_states = [updated.get(k, s) for k, s in enumerate(base_states)]
        retrain_wall = time.perf_counter() - started
        retrain_metrics = evaluator.metrics(retrain_states)
        sparse = (lambda states: {"conv_sparsity": _conv_sparsity(original, states)}) if masks else (lambda states: {})
        results.append(_result("original", seed, {"prune": config.prune.to_dict() if config.prune else None},
                               evaluator.metrics(base_states), retrain_metrics,
                               notes={**sparse(base_states), **({"prune_seconds": prune_seconds} if masks else {})}))
        results.append(_result("retrain", seed, spec.train.to_dict(), retrain_metrics, retrain_metrics,
                               unlearn_seconds=retrain_compute, wall_seconds=retrain_wall, shards_updated=sorted(first_slice),
                               notes=sparse(retrain_states)))
        for name, method in chosen.items():
            started = time.perf_counter()
            updates = approximate_unlearn(original, forget, method, pool, seed, dict(enumerate(base_states)), dict(enumerate(masks)) if masks else None)
            wall = time.perf_counter() - started
            states = [updates[k].tensors if k in updates else s for k, s in enumerate(base_states)]
            eval_started = time.perf_counter()
            metrics = evaluator.metrics(states)
            outcomes = [u.outcome for u in updates.values()]
            results.append(
                _result(
                    name, seed, method.args.to_dict(), metrics, retrain_metrics,
                    setup_seconds=sum(o.setup_seconds for o in outcomes),
                    unlearn_seconds=sum(o.unlearn_seconds for o in outcomes),
                    eval_seconds=time.perf_counter() - eval_started,
                    wall_seconds=wall,
                    shards_updated=sorted(updates),
                    notes={**{str(k): u.outcome.notes for k, u in updates.items() if u.outcome.notes}, **sparse(states)},
                )
            )
            log.info("compare seed %d: %s avg gap %.2f", seed, name, results[-1].avg_gap)
    report = CompareReport(config.name, store.uri, job.to_dict(), forget_sets, results, sizes)
    write_report(report, root)
    return report
