"""The models every trial of a study shares: the original and the retrained reference of
each (bits, seed), trained once, stored, and reused by every trial and by later sweeps.

Layout under the models store (keys depend only on what determines their content)::

    originals/<fp>/                     the original: the run spec's fingerprint <fp>
                                        (data, model with its quantization, recipe, seed)
    references/<fp>-<forget>/           the same recipe without the forget set (sha <forget>)
    forget_sets/<kind>-seed<s>-<sha>.parquet
    evaluations/<fp>-<forget>-<scn>.json  the original's and the reference's metrics on this
                                        forget set (<scn>: the scenario); written last, so
                                        its presence means both models are complete

A second sweep over the same scenario finds the evaluation and opens both runs without
writing anything. A hybrid study keeps its scenario (ensemble, stream, PRS baseline) under
``hybrid/`` of the same store (:mod:`raysisa.tune.hybrid`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from raysisa.config import RunSpec, StoreConfig
from raysisa.evaluation.evaluator import Evaluator, load_states
from raysisa.evaluation.metrics import Metrics
from raysisa.evaluation.scenarios import draw_forget_set, excluded_test_classes, save_forget_set
from raysisa.sisa.pool import LocalPool
from raysisa.sisa.run import SisaRun
from raysisa.sisa.shard import shard_refs
from raysisa.store import ObjectStore
from raysisa.tune.spec import StudySpec

__all__ = ["Prepared", "prepare", "substore", "trained_run"]

log = logging.getLogger(__name__)


def substore(store: StoreConfig, name: str) -> StoreConfig:
    return store.model_copy(update={"uri": f"{store.uri.rstrip('/')}/{name}"})


@dataclass(frozen=True)
class Prepared:
    """One (bits, seed): where its models are, what they score, what preparing them cost."""

    bits: int
    seed: int
    original: StoreConfig
    reference: StoreConfig
    forget_key: str
    forget_count: int
    original_metrics: dict[str, Any]
    reference_metrics: dict[str, Any]
    retrain_seconds: float  # training time of the reference (the RTE to beat)
    slices_trained: int = 0  # by this call; 0 when everything was on the store
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["original"], out["reference"] = self.original.to_dict(), self.reference.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Prepared:
        return cls(**{**data, "original": StoreConfig.from_dict(data["original"]), "reference": StoreConfig.from_dict(data["reference"])})

    def reference_scores(self) -> Metrics:
        return Metrics(**{k: v for k, v in self.reference_metrics.items() if k != "UA"})


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _train_seconds(run: SisaRun) -> float:
    return float(sum(run.store.checkpoints.manifest(ref).get("train_seconds", 0.0) for ref in shard_refs(run.store, 0)[1:]))


def trained_run(spec: RunSpec, store: StoreConfig, exclude_ids: np.ndarray | None = None) -> tuple[SisaRun, int]:
    """The run of ``spec`` at ``store``, trained; (run, slices trained now). A complete run
    is only read (no lease, no writes)."""
    run = SisaRun(store)
    if run.store.exists():
        run.recover()
        if run.store.fingerprint == spec.fingerprint() and not run.pending_work():
            return run, 0
    run = SisaRun.create(spec, store, exclude_ids=exclude_ids)
    return run, run.train(LocalPool()).slices_trained


def prepare(study: StudySpec, bits: int, seed: int, models: StoreConfig) -> Prepared:
    """Train (or find) the original and reference of ``(bits, seed)`` on ``models`` and score
    both on the seed's forget set. Idempotent; a complete pair is only read."""
    spec = study.spec(bits, seed)
    fp = spec.fingerprint()[:16]
    root = ObjectStore(models)
    original, trained = trained_run(spec, substore(models, f"originals/{fp}"))
    forget = draw_forget_set(study.scenario.forget, original, seed)
    forget_sha = hashlib.sha256(np.asarray(forget, np.int64).tobytes()).hexdigest()[:16]
    evaluation_key = f"evaluations/{fp}-{forget_sha}-{_digest(study.scenario.forget.to_dict())}.json"
    reference_store = substore(models, f"references/{fp}-{forget_sha}")
    if root.exists(evaluation_key):
        saved = root.get_json(evaluation_key)
        return Prepared(**{**saved, "original": original.config, "reference": reference_store, "slices_trained": trained})

    forget_key = save_forget_set(root, study.scenario.forget, seed, forget, spec.data)
    reference, more = trained_run(spec, reference_store, forget)
    trained += more
    started = time.perf_counter()
    evaluator = Evaluator(original, forget, excluded_test_classes(study.scenario.forget))
    original_metrics = evaluator.metrics(load_states(original)).to_dict()
    reference_metrics = evaluator.metrics(load_states(reference)).to_dict()
    saved = {
        "bits": bits,
        "seed": seed,
        "forget_key": forget_key,
        "forget_count": int(len(forget)),
        "original_metrics": original_metrics,
        "reference_metrics": reference_metrics,
        "retrain_seconds": _train_seconds(reference),
        "notes": {"fingerprint": fp, "forget_sha": forget_sha, "eval_seconds": time.perf_counter() - started, "sizes": evaluator.sizes()},
    }
    root.put_json(evaluation_key, saved)
    log.info("prepared w%d seed %d: original and reference on %s (%d slices trained)", bits, seed, models.uri, trained)
    return Prepared(**{**saved, "original": original.config, "reference": reference_store, "slices_trained": trained})
