"""Evaluate single models and SISA ensembles on one forget set.

An :class:`Evaluator` decodes a run's forget, retain and test sets once; a model (or an
ensemble: one state dict per shard, aggregated by mean softmax, SPEC 7.11) is then scored
on all of them. Per-shard predictions are cached by weight hash, so shards an unlearning
method did not touch are predicted once for all methods.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from raysisa.data.poison import apply_trigger
from raysisa.data.samples import decode_images
from raysisa.data.tensors import normalize, to_tensors
from raysisa.evaluation.metrics import Metrics, accuracy, mia_efficacy
from raysisa.models import build_model
from raysisa.quant import export_integers, is_quantized, model_from_integers
from raysisa.sisa.run import SisaRun
from raysisa.sisa.shard import model_tensors, shard_refs
from raysisa.store import tensors_sha256
from raysisa.training import predict_proba

__all__ = ["Evaluator", "load_states"]

State = dict[str, torch.Tensor]


def load_states(run: SisaRun) -> list[State]:
    """The current model weights of every shard of ``run`` (verified checkpoints)."""
    states = []
    for shard in range(run.store.spec.sharding.num_shards):
        ref = shard_refs(run.store, shard)[-1]
        states.append(model_tensors(run.store.checkpoints.get(ref).tensors))
    return states


class Evaluator:
    """The evaluation sets of ``run`` for one forget set.

    Args:
        run: the run whose training data the forget set is drawn from.
        forget_ids: the forget set.
        exclude_classes: classes left out of the test set (class-wise forgetting).
    """

    def __init__(self, run: SisaRun, forget_ids: np.ndarray, exclude_classes: Sequence[int] = ()) -> None:
        self.run = run
        self.info = run.store.info
        self.model_config = run.store.spec.model
        spec = run.store.spec
        tables = [run.store.read_partition(k, r) for k in range(spec.sharding.num_shards) for r in range(1, spec.sharding.num_slices + 1)]
        train = pa.concat_tables(tables)
        train = train.take(pc.sort_indices(train, [("id", "ascending")]))
        x, y = to_tensors(train, self.info)
        ids = train["id"].to_numpy()
        forget = np.isin(ids, forget_ids)
        test = run.store.read_test()
        if exclude_classes:
            test = test.filter(pc.invert(pc.is_in(test["label"], value_set=pa.array(list(exclude_classes), pa.int64()))))
        tx, ty = to_tensors(test, self.info)
        self.sets: dict[str, tuple[torch.Tensor, np.ndarray]] = {
            "forget": (x[torch.from_numpy(forget)], y[torch.from_numpy(forget)].numpy()),
            "retain": (x[torch.from_numpy(~forget)], y[torch.from_numpy(~forget)].numpy()),
            "test": (tx, ty.numpy()),
        }
        poison = spec.data.poison
        if poison is not None:
            victims = test.filter(pc.not_equal(test["label"], poison.target))
            triggered = normalize(apply_trigger(decode_images(victims, self.info.channels), poison), self.info)
            self.sets["triggered"] = (triggered, np.full(len(victims), poison.target))
        self.num_members = min(len(self.sets["test"][1]), len(self.sets["retain"][1]))
        self._cache: dict[str, dict[str, np.ndarray]] = {}
        self.seconds = 0.0  # time spent predicting and scoring

    def sizes(self) -> dict[str, int]:
        return {name: len(labels) for name, (_, labels) in self.sets.items()}

    def _probs(self, state: State) -> dict[str, np.ndarray]:
        key = tensors_sha256(state)
        if key not in self._cache:
            model = build_model(self.info, self.model_config)
            model.load_state_dict(state, strict=True)
            if is_quantized(self.model_config):
                # score the deployed integer grid, never latent float weights (SPEC 4.7)
                export = export_integers(model, self.model_config)
                model = model_from_integers(export, build_model(self.info, self.model_config), self.model_config)
            self._cache[key] = {name: predict_proba(model, x).numpy() for name, (x, _) in self.sets.items()}
            if len(self._cache) > 64:
                self._cache.pop(next(iter(self._cache)))
        return self._cache[key]

    def metrics(self, states: Sequence[State]) -> Metrics:
        """Metrics of the ensemble of ``states`` (mean softmax; one state = a single model)."""
        started = time.perf_counter()
        per_shard = [self._probs(s) for s in states]
        probs = {name: np.mean([p[name] for p in per_shard], axis=0) for name in self.sets}
        labels = {name: labels for name, (_, labels) in self.sets.items()}
        members = slice(0, self.num_members)
        result = Metrics(
            FA=accuracy(probs["forget"], labels["forget"]),
            RA=accuracy(probs["retain"], labels["retain"]),
            TA=accuracy(probs["test"], labels["test"]),
            MIA=mia_efficacy(
                probs["retain"][members], labels["retain"][members], probs["test"], labels["test"], probs["forget"], labels["forget"]
            ),
            ASR=accuracy(probs["triggered"], labels["triggered"]) if "triggered" in probs else None,
        )
        self.seconds += time.perf_counter() - started
        return result
