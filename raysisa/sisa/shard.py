"""One shard's training, slice by slice, as a plain class (Ray wraps it in ``actors.py``).

:class:`ShardWorker` trains shard ``k`` of any run it is pointed at. Every call is
idempotent and reads all it needs from the store, so a worker restarted by Ray (which
re-runs ``__init__`` with nothing in memory) resumes from the last checkpoint and produces
bit-identical weights:

- slice 0 is the initial model, built from a seed derived from (train seed, shard);
- slice r (1..R) restores checkpoint r-1 (model *and* optimiser state), trains
  ``slice_epochs(e, R)[r-1]`` epochs on the cumulative data of slices 1..r, each epoch
  seeded by (train seed, shard, r, epoch), and writes checkpoint r.
"""

from __future__ import annotations

import importlib
import logging
import os
import resource
import sys
import time
from importlib.metadata import version
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from raysisa import telemetry
from raysisa.config import RunSpec, StoreConfig, slice_epochs
from raysisa.crashpoints import crash_point
from raysisa.data.samples import DatasetInfo
from raysisa.data.tensors import Augment, Images
from raysisa.errors import ConfigError, StoreError
from raysisa.models import build_model
from raysisa.store import Checkpoint, CheckpointRef, RunStore, slice_keys, tensors_sha256
from raysisa.sisa.tasks import ApplyUpdate, Predict, RewindRetrain, RunAt, ShardTask, SliceReport, TrainSlice, UpdateResult
from raysisa.training import (
    EpochStats,
    build_optimizer,
    configure_torch,
    derive_seed,
    load_optimizer_tensors,
    lr_at,
    optimizer_tensors,
    predict_proba,
    shard_loss,
    train_epoch,
)

if TYPE_CHECKING:
    from raysisa.methods.base import UnlearnContext, UnlearnMethod

__all__ = ["ShardWorker", "shard_refs", "load_model", "model_tensors"]

log = logging.getLogger(__name__)
_VERSION = version("raysisa")  # recorded in checkpoint manifests


def shard_refs(run: RunStore, shard: int, slice_ids: list | None = None) -> list[CheckpointRef]:
    """Checkpoint refs of slices 0..R of ``shard``: those the committed state expects, or,
    given ``slice_ids`` (each slice's ids in training order), those of that data."""
    if slice_ids is None:
        return run.expected_refs()[shard]
    keys = slice_keys(run.fingerprint, shard, slice_ids)
    return [CheckpointRef(shard, r, key) for r, key in enumerate(keys)]


def model_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's state dict inside a checkpoint's tensors (prefix ``model/`` removed)."""
    return {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}


def load_state(run: RunStore, ref: CheckpointRef) -> dict[str, torch.Tensor]:
    """The model tensors of a verified checkpoint (or approximate overlay)."""
    checkpoint = (run.overlays if ref.prefix == run.overlays.prefix else run.checkpoints).get(ref)
    return model_tensors(checkpoint.tensors)


def load_model(run: RunStore, ref: CheckpointRef, device: str = "cpu") -> nn.Module:
    """Build the run's model and load a verified checkpoint (or approximate overlay) into it."""
    return model_with_state(run.info, run.spec, load_state(run, ref), device)


def model_with_state(info: DatasetInfo, spec: RunSpec, state: dict[str, torch.Tensor], device: str = "cpu") -> nn.Module:
    """The recipe's model with ``state`` loaded, on ``device``, in the recipe's memory format."""
    model = build_model(info, spec.model)
    model.load_state_dict(state, strict=True)
    model.to(device)
    if spec.train.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


class _Run:
    """What a worker caches about one run: its store handle, spec and data info."""

    def __init__(self, store: StoreConfig) -> None:
        self.store = RunStore(store)
        self.spec: RunSpec = self.store.spec
        self.info: DatasetInfo = self.store.info
        self.fingerprint = self.store.fingerprint
        self.label = telemetry.run_label(store.uri)  # the metrics' run label


@dataclass(frozen=True)
class _Part:
    """One partition's rows: ids in training order, uint8 images, labels."""

    ids: np.ndarray
    x: Images
    y: torch.Tensor


class ShardWorker:
    """Runs the tasks of :mod:`raysisa.sisa.tasks` for shard ``shard`` of whichever run a
    task names (:meth:`run`).

    A worker keeps the partitions it loaded (uint8 pixels, see :mod:`raysisa.data.pixels`),
    keyed by their sha256 in the commit, so a long-lived worker (a Ray actor) reads from the
    store only the partitions a deletion rewrote since its last task, and never decodes an
    image unless a pixels object is missing.

    Args:
        shard: the shard index this worker owns.
        device: ``cpu`` or ``cuda``.
        warm: import what the first training step would, now.
    """

    def __init__(self, shard: int, device: str = "cpu", warm: bool = False) -> None:
        self.shard = shard
        self.device = device
        self._runs: dict[str, _Run] = {}
        self._parts: dict[str, _Part] = {}  # partition sha256 -> its rows
        self._test: dict[str, Images] = {}  # test split sha256 -> its images
        self._written: Checkpoint | None = None  # the last checkpoint this worker wrote
        if warm:
            # torch's optimiser imports its compiler (torch._dynamo, ~2 s) on its first step:
            # a long-lived worker (a Ray actor, started with the others) pays it now instead
            importlib.import_module("torch._dynamo")

    def pid(self) -> int:
        return os.getpid()

    def run(self, task: ShardTask) -> SliceReport | UpdateResult | torch.Tensor:
        """Execute one task (see :mod:`raysisa.sisa.tasks`); a failure is counted in the
        ``raysisa_errors`` metric and raised."""
        try:
            match task:
                case TrainSlice():
                    return self._train_slice(task)
                case ApplyUpdate():
                    return self._apply_update(task)
                case Predict():
                    return self._predict(task)
                case RewindRetrain():
                    return self._rewind_retrain(task)
            raise TypeError(f"not a shard task: {type(task).__name__}")
        except Exception as exc:
            telemetry.error("shard", exc)
            raise

    def _run(self, at: RunAt) -> _Run:
        """The run ``at`` names, at the committed version it names (the driver holds the
        lease and has committed before sending the task)."""
        key = f"{at.store.model_dump_json()}|{at.fingerprint}"
        if key not in self._runs:
            if len(self._runs) >= 8:  # a long-lived actor serves few runs at a time
                self._runs.pop(next(iter(self._runs)))
            run = _Run(at.store)
            if run.fingerprint != at.fingerprint:  # the store URI was reused for another run
                raise StoreError(
                    f"the run at {run.store.uri} has fingerprint {run.fingerprint[:12]}, the task was for "
                    f"{at.fingerprint[:12]}: the store was replaced"
                )
            self._runs[key] = run
        run = self._runs[key]
        run.store.use_version(at.version)
        configure_torch(run.spec.train.threads, deterministic=self.device == "cpu")
        return run

    def _slices(self, run: _Run) -> tuple[list[_Part], list[CheckpointRef]]:
        """(partitions of slices 1..R, checkpoint refs 0..R) of this shard.

        Partitions are read (their pixels objects, sha256-verified) only when not held
        already. The refs are
        computed from the partitions' ids and must equal the committed state's: a mismatch
        means the store was modified outside raysisa, and nothing is trained on it."""
        state = run.store.state()
        digests = [state.partitions[(self.shard, r)].sha256 for r in range(1, run.spec.sharding.num_slices + 1)]
        for r, digest in enumerate(digests, start=1):
            if digest not in self._parts:
                pixels = run.store.read_pixels(self.shard, r)
                self._parts[digest] = _Part(pixels.ids, Images.of(pixels.images, run.info), torch.from_numpy(pixels.labels))
        # keep this run's current partitions only (a deletion's rewrite replaces one)
        self._parts = {d: self._parts[d] for d in digests}
        parts = [self._parts[d] for d in digests]
        refs = shard_refs(run.store, self.shard, [p.ids for p in parts])
        if refs != run.store.expected_refs()[self.shard]:
            raise StoreError(
                f"shard {self.shard}: the partitions of commit {state.version} at {run.store.uri} do not "
                "match the checkpoint keys it records; the store was modified outside raysisa"
            )
        return parts, refs

    # -- TrainSlice ------------------------------------------------------------------------
    def _train_slice(self, task: TrainSlice) -> SliceReport:
        """Make sure checkpoint ``task.slice`` exists for the current data; train it if not."""
        run = self._run(task.run)
        refs = run.store.expected_refs()[self.shard]
        ref = refs[task.slice]
        if run.store.checkpoints.exists(ref):
            return SliceReport(self.shard, task.slice, ref.key, trained=False)
        if task.slice == 0:
            report = self._write_init(run, ref)
        else:
            parts, refs = self._slices(run)
            report = self._train(run, refs, parts, task.slice)
        crash_point("train.slice")
        return report

    def _write_init(self, run: _Run, ref: CheckpointRef) -> SliceReport:
        torch.manual_seed(derive_seed(run.spec.train.seed, self.shard, 0, 0))
        model = build_model(run.info, run.spec.model)
        tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
        run.store.checkpoints.put(ref, tensors, self._manifest(run, ref, [], tensors, {}))
        return SliceReport(self.shard, 0, ref.key, trained=True)

    def _train(self, run: _Run, refs: list[CheckpointRef], parts: list[_Part], r: int) -> SliceReport:
        spec = run.spec
        if self._written is not None and self._written.ref == refs[r - 1]:
            previous = self._written  # slices r-1 and r retrain back to back: no read
        else:
            previous = run.store.checkpoints.get(refs[r - 1])  # verified; raises if corrupt
        model = self._model(run, model_tensors(previous.tensors))
        optimizer = build_optimizer(model, spec.train)
        if "optimizer" in previous.manifest:
            load_optimizer_tensors(optimizer, previous.tensors, previous.manifest["optimizer"])

        x = Images.cat([p.x for p in parts[:r]])
        y = torch.cat([p.y for p in parts[:r]])
        plan = slice_epochs(spec.train.epochs, spec.sharding.num_slices)
        offset = sum(plan[: r - 1])
        started, cpu_started = time.perf_counter(), time.process_time()
        loss_sum, seen = 0.0, 0
        for epoch in range(plan[r - 1]):
            stats = self._epoch(run, model, optimizer, x, y, r, epoch, offset + epoch)
            loss_sum, seen = loss_sum + stats.loss_sum, seen + stats.samples
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started

        opt_tensors, opt_meta = optimizer_tensors(optimizer)
        tensors = {**{f"model/{k}": v.contiguous() for k, v in model.state_dict().items()}, **opt_tensors}
        extra = {
            "optimizer": opt_meta,
            "epochs": plan[r - 1],
            "samples": len(x),
            "sample_grads": plan[r - 1] * len(x),
            "train_seconds": seconds,
            "train_cpu_seconds": cpu_seconds,  # steadier than wall time on a loaded machine
            "peak_rss_bytes": _peak_rss(),  # this worker process's high-water mark so far
            "parent": refs[r - 1].key,
        }
        lineage = [p.ids for p in parts[:r]]
        manifest = run.store.checkpoints.put(refs[r], tensors, self._manifest(run, refs[r], lineage, tensors, extra))
        self._written = Checkpoint(refs[r], {k: v.detach().clone() for k, v in tensors.items()}, manifest)
        telemetry.shard_trained(run.label, self.shard, plan[r - 1] * len(x), seconds)
        log.info("shard %d slice %d trained: %d samples x %d epochs in %.2fs", self.shard, r, len(x), plan[r - 1], seconds)
        return SliceReport(
            self.shard, r, refs[r].key, True, plan[r - 1], len(x), plan[r - 1] * len(x), seconds, loss_sum / max(seen, 1)
        )

    def _model(self, run: _Run, state: dict[str, torch.Tensor]) -> nn.Module:
        """The run's model with ``state`` loaded, on this worker's device (compiling, when
        the recipe says so, happens in :meth:`_epoch`)."""
        return model_with_state(run.info, run.spec, state, self.device)

    def _epoch(
        self, run: _Run, model: nn.Module, optimizer: torch.optim.Optimizer, x: Images, y: torch.Tensor,
        r: int, epoch: int, position: int, hooks: tuple = (),
    ) -> EpochStats:
        """Epoch ``epoch`` of slice ``r`` of the run's recipe, at LR-schedule position
        ``position`` (the shard's global epoch)."""
        train = run.spec.train
        for group in optimizer.param_groups:
            group["lr"] = lr_at(train, position, train.epochs)
        step_lr = (lambda progress: lr_at(train, position + progress, train.epochs)) if train.lr_schedule == "linear" else None
        return train_epoch(
            _compiled(model) if train.compile else model,
            optimizer,
            x,
            y,
            batch_size=train.batch_size,
            seed=derive_seed(train.seed, self.shard, r, epoch),
            augment=Augment(cutout=train.cutout) if train.augment else False,
            loss_fn=shard_loss(train.label_smoothing),
            hooks=hooks,
            device=self.device,
            lr=step_lr,
            channels_last=train.channels_last,
            autocast=torch.bfloat16 if train.precision == "bf16" else None,
        )

    def _manifest(self, run: _Run, ref: CheckpointRef, lineage: list, tensors: dict, extra: dict) -> dict[str, Any]:
        return {
            "fingerprint": run.fingerprint,
            "model_sha256": tensors_sha256(model_tensors(tensors)),
            "lineage": {"slice_sizes": [len(s) for s in lineage], "ids": [int(i) for s in lineage for i in s]},
            "raysisa_version": _VERSION,
            **extra,
        }

    # -- ApplyUpdate -----------------------------------------------------------------------
    def _apply_update(self, task: ApplyUpdate) -> UpdateResult:
        """Apply an approximate unlearning method to this shard's model; the stored
        checkpoints are not touched."""
        from raysisa.methods.engine import run_method

        unlearner, ctx = self.update_context(task)
        outcome = run_method(unlearner, ctx)
        return UpdateResult({k: v.detach().cpu() for k, v in ctx.model.state_dict().items()}, outcome)

    def update_context(self, task: ApplyUpdate) -> tuple[UnlearnMethod, UnlearnContext]:
        """The method of ``task`` and its context (this shard's model, forget and retain
        splits), ready for :func:`~raysisa.methods.engine.run_method` or, one epoch at a
        time, :func:`~raysisa.methods.engine.iterate_method` (a Tune trial's path)."""
        from raysisa.methods import get_method
        from raysisa.methods.base import Need
        from raysisa.methods.engine import make_context

        run = self._run(task.run)
        parts, refs = self._slices(run)
        if task.retain_slices is not None:
            parts = [parts[r - 1] for r in sorted(set(task.retain_slices))]
        unlearner = get_method(task.method.name, task.method.args)
        model = build_model(run.info, run.spec.model)
        base = refs[-1] if task.base is None else task.base
        if isinstance(base, CheckpointRef):
            base = load_state(run.store, base)
        model.load_state_dict(base, strict=True)
        init = load_state(run.store, refs[0]) if Need.INIT_WEIGHTS in unlearner.needs else None
        ctx = make_context(
            unlearner,
            model,
            run.info,
            run.spec.model,
            task.seed,
            x=Images.cat([p.x for p in parts]).normalized(),  # the methods work on float tensors
            y=torch.cat([p.y for p in parts]),
            ids=np.concatenate([p.ids for p in parts]),
            forget_ids=np.asarray(task.forget_ids, dtype=np.int64),
            init_state=init,
            prune_mask=task.prune_mask,
            augment=run.spec.train.augment,
            device=self.device,
        )
        return unlearner, ctx

    # -- RewindRetrain ----------------------------------------------------------------------
    def _rewind_retrain(self, task: RewindRetrain) -> dict[str, torch.Tensor]:
        """Prune-first's OMP recovery (see :class:`RewindRetrain`); the store is not touched."""
        from raysisa.methods.masks import MaskHook

        run = self._run(task.run)
        if run.spec.sharding.num_slices != 1:
            raise ConfigError(f"rewinding needs one slice per shard; the run at {run.store.uri} has {run.spec.sharding.num_slices}")
        if task.rewind_epoch >= run.spec.train.epochs:
            raise ConfigError(f"rewind epoch {task.rewind_epoch} is not before the end of the run's {run.spec.train.epochs} epochs")
        parts, refs = self._slices(run)
        x, y = parts[0].x, parts[0].y
        model = self._model(run, load_state(run.store, refs[0]))
        optimizer = build_optimizer(model, run.spec.train)  # slice 1 starts with a fresh one, as here
        for epoch in range(task.rewind_epoch):  # the shard's own first epochs, replayed exactly
            self._epoch(run, model, optimizer, x, y, 1, epoch, epoch)
        zeros = {name: torch.zeros_like(keep, dtype=torch.float32) for name, keep in task.mask.items()}
        hook = MaskHook(model, task.mask, zeros)
        hook.apply()  # the survivors keep their rewind-epoch values, the rest is zero
        optimizer = build_optimizer(model, run.spec.train)  # the reference builds a new SGD after rewinding
        for step in range(task.epochs):
            position = task.rewind_epoch + step  # the LR schedule fast-forwarded by the rewind
            self._epoch(run, model, optimizer, x, y, 1, position, position, hooks=(hook,))
        model.eval()
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    # -- Predict ---------------------------------------------------------------------------
    def _predict(self, task: Predict) -> torch.Tensor:
        """Softmax probabilities of ``task.ref`` (default: the latest exact checkpoint)."""
        run = self._run(task.run)
        ref = task.ref if task.ref is not None else run.store.expected_refs()[self.shard][-1]
        x = task.x
        if x is None:
            digest = run.store.state().test.sha256
            if digest not in self._test:
                self._test = {digest: Images.of(run.store.read_test_pixels().images, run.info)}
            x = self._test[digest]
        model = load_model(run.store, ref, self.device)
        train = run.spec.train
        return predict_proba(model, x, device=self.device, flip_tta=train.test_flip, channels_last=train.channels_last)


def _compiled(model: nn.Module) -> nn.Module:
    """``torch.compile`` of ``model``, made once per model object (the recipe's ``compile``).
    :meth:`ShardWorker._train` builds a model per slice, so each slice compiles its own
    (torch's compile caches may reuse the generated code); with one slice per shard, as in
    the CIFAR recipe, that is once per shard."""
    compiled = getattr(model, "_raysisa_compiled", None)
    if compiled is None:
        compiled = torch.compile(model)
        object.__setattr__(model, "_raysisa_compiled", compiled)
    return compiled


def _peak_rss() -> int:
    """This process's peak resident memory in bytes (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
