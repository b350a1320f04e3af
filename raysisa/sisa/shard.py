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

import hashlib
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from raysisa.config import RunSpec, StoreConfig, slice_epochs
from raysisa.crashpoints import crash_point
from raysisa.data.samples import DatasetInfo
from raysisa.data.tensors import to_tensors
from raysisa.errors import StoreError
from raysisa.models import build_model
from raysisa.store import CheckpointRef, RunStore, slice_keys, tensors_sha256
from raysisa.store.run import MANIFEST, parquet_table
from raysisa.training import (
    build_optimizer,
    derive_seed,
    load_optimizer_tensors,
    lr_at,
    optimizer_tensors,
    predict_proba,
    train_epoch,
)

__all__ = ["SliceReport", "ShardWorker", "shard_refs", "load_model", "model_tensors"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SliceReport:
    """What one ``train_slice`` call did. ``trained`` is False when the checkpoint existed."""

    shard: int
    slice: int
    key: str
    trained: bool
    epochs: int = 0
    samples: int = 0
    sample_grads: int = 0
    seconds: float = 0.0
    mean_loss: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def load_model(run: RunStore, ref: CheckpointRef, device: str = "cpu") -> nn.Module:
    """Build the run's model and load a verified checkpoint (or approximate overlay) into it."""
    checkpoint = (run.overlays if ref.prefix == run.overlays.prefix else run.checkpoints).get(ref)
    model = build_model(run.info, run.spec.model)
    model.load_state_dict(model_tensors(checkpoint.tensors), strict=True)
    return model.to(device)


class _Run:
    """What a worker caches about one run: its store handle, spec and data info."""

    def __init__(self, store: StoreConfig) -> None:
        self.store = RunStore(store)
        self.spec: RunSpec = self.store.spec
        self.info: DatasetInfo = self.store.info
        self.fingerprint = self.store.fingerprint


class ShardWorker:
    """Trains and serves shard ``shard`` of whichever run a call names.

    Args:
        shard: the shard index this worker owns.
        device: ``cpu`` or ``cuda``.
    """

    def __init__(self, shard: int, device: str = "cpu") -> None:
        self.shard = shard
        self.device = device
        self._runs: dict[str, _Run] = {}
        self._decoded: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # partition sha256 -> (x, y)
        self._test: dict[str, torch.Tensor] = {}  # test split sha256 -> x

    def pid(self) -> int:
        return os.getpid()

    def _run(self, store: StoreConfig) -> _Run:
        """The run at ``store``, with its latest committed state (the driver holds the lease
        and has committed before calling, so this is the state it works with)."""
        # Keyed by the manifest's content too: a store URI reused for a new run is a new run.
        key = store.model_dump_json() + hashlib.sha256(RunStore(store).objects.get_bytes(MANIFEST)).hexdigest()
        if key not in self._runs:
            if len(self._runs) >= 8:  # a long-lived actor serves few runs at a time
                self._runs.pop(next(iter(self._runs)))
            self._runs[key] = _Run(store)
        run = self._runs[key]
        run.store.refresh()
        return run

    def _configure_torch(self, spec: RunSpec) -> None:
        torch.set_num_threads(spec.train.threads)
        if self.device == "cpu":
            torch.use_deterministic_algorithms(True)

    def _slices(self, run: _Run) -> tuple[list, list[bytes], list[CheckpointRef]]:
        """(ids per slice, raw partition bytes per slice, checkpoint refs) of this shard.

        The refs are computed from the partitions' ids and must equal the committed
        state's: a mismatch means the store was modified outside raysisa, and nothing
        is trained on it."""
        blobs = [run.store.read_partition_bytes(self.shard, r) for r in range(1, run.spec.sharding.num_slices + 1)]
        tables = [parquet_table(b, f"shard {self.shard} slice {r}") for r, b in enumerate(blobs, start=1)]
        ids = [t["id"].to_numpy() for t in tables]
        refs = shard_refs(run.store, self.shard, ids)
        if refs != run.store.expected_refs()[self.shard]:
            raise StoreError(
                f"shard {self.shard}: the partitions of commit {run.store.state().version} at {run.store.uri} do not "
                "match the checkpoint keys it records; the store was modified outside raysisa"
            )
        return ids, blobs, refs

    def _tensors(self, blob: bytes, run: _Run) -> tuple[torch.Tensor, torch.Tensor]:
        digest = hashlib.sha256(blob).hexdigest()
        if digest not in self._decoded:
            self._decoded[digest] = to_tensors(parquet_table(blob, "partition"), run.info)
        return self._decoded[digest]

    def _keep_decoded(self, blobs: list[bytes]) -> None:
        """Forget decoded partitions that are no longer current (e.g. rewritten by a deletion)."""
        current = {hashlib.sha256(b).hexdigest() for b in blobs}
        for digest in set(self._decoded) - current:
            del self._decoded[digest]

    def train_slice(self, store: StoreConfig, slice_: int) -> SliceReport:
        """Make sure checkpoint ``slice_`` exists for the current data; train it if not."""
        run = self._run(store)
        self._configure_torch(run.spec)
        ids, blobs, refs = self._slices(run)
        ref = refs[slice_]
        if run.store.checkpoints.exists(ref):
            return SliceReport(self.shard, slice_, ref.key, trained=False)
        report = self._write_init(run, ref) if slice_ == 0 else self._train(run, refs, ids, blobs, slice_)
        crash_point("train.slice")
        return report

    def _write_init(self, run: _Run, ref: CheckpointRef) -> SliceReport:
        torch.manual_seed(derive_seed(run.spec.train.seed, self.shard, 0, 0))
        model = build_model(run.info, run.spec.model)
        tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
        run.store.checkpoints.put(ref, tensors, self._manifest(run, ref, [], tensors, {}))
        return SliceReport(self.shard, 0, ref.key, trained=True)

    def _train(self, run: _Run, refs: list[CheckpointRef], ids: list, blobs: list[bytes], r: int) -> SliceReport:
        spec = run.spec
        previous = run.store.checkpoints.get(refs[r - 1])  # verified; raises if corrupt
        model = build_model(run.info, spec.model)
        model.load_state_dict(model_tensors(previous.tensors), strict=True)
        model.to(self.device)
        optimizer = build_optimizer(model, spec.train)
        if "optimizer" in previous.manifest:
            load_optimizer_tensors(optimizer, previous.tensors, previous.manifest["optimizer"])

        parts = [self._tensors(blobs[i], run) for i in range(r)]
        self._keep_decoded(blobs)
        x = torch.cat([p[0] for p in parts])
        y = torch.cat([p[1] for p in parts])
        plan = slice_epochs(spec.train.epochs, spec.sharding.num_slices)
        offset = sum(plan[: r - 1])
        started, cpu_started = time.perf_counter(), time.process_time()
        loss_sum, seen = 0.0, 0
        for epoch in range(plan[r - 1]):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(spec.train, offset + epoch, spec.train.epochs)
            stats = train_epoch(
                model,
                optimizer,
                x,
                y,
                batch_size=spec.train.batch_size,
                seed=derive_seed(spec.train.seed, self.shard, r, epoch),
                augment=spec.train.augment,
                device=self.device,
            )
            loss_sum, seen = loss_sum + stats.loss_sum, seen + stats.samples
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started

        opt_tensors, opt_meta = optimizer_tensors(optimizer)
        tensors = {**{f"model/{k}": v for k, v in model.state_dict().items()}, **opt_tensors}
        extra = {
            "optimizer": opt_meta,
            "epochs": plan[r - 1],
            "samples": len(x),
            "sample_grads": plan[r - 1] * len(x),
            "train_seconds": seconds,
            "train_cpu_seconds": cpu_seconds,  # steadier than wall time on a loaded machine
            "parent": refs[r - 1].key,
        }
        run.store.checkpoints.put(refs[r], tensors, self._manifest(run, refs[r], ids[:r], tensors, extra))
        log.info("shard %d slice %d trained: %d samples x %d epochs in %.2fs", self.shard, r, len(x), plan[r - 1], seconds)
        return SliceReport(
            self.shard, r, refs[r].key, True, plan[r - 1], len(x), plan[r - 1] * len(x), seconds, loss_sum / max(seen, 1)
        )

    def _manifest(self, run: _Run, ref: CheckpointRef, lineage: list, tensors: dict, extra: dict) -> dict[str, Any]:
        from raysisa import __version__

        return {
            "fingerprint": run.fingerprint,
            "model_sha256": tensors_sha256(model_tensors(tensors)),
            "lineage": {"slice_sizes": [len(s) for s in lineage], "ids": [int(i) for s in lineage for i in s]},
            "raysisa_version": __version__,
            **extra,
        }

    def apply_method(
        self,
        store: StoreConfig,
        method: dict[str, Any],
        forget_ids: Any,
        seed: int,
        base: dict[str, torch.Tensor] | CheckpointRef | None = None,
        prune_mask: dict[str, torch.Tensor] | None = None,
        retain_slices: list[int] | None = None,
    ) -> dict[str, Any]:
        """Apply an approximate unlearning method to this shard's current model.

        Args:
            method: ``{"method": name, "args": {...}}`` (``UnlearnMethod.describe()``).
            forget_ids: ids of this shard's samples to forget (the rest are retained).
            seed: the method's seed.
            base: start from these model weights, or this checkpoint/overlay, instead of
                the latest checkpoint.
            prune_mask: weights that must stay zero (prune-first).
            retain_slices: use only these slices' samples (1-based) as data (OHS).

        Returns:
            ``{"tensors": new state dict, "outcome": UnlearnOutcome dict}``. The stored
            checkpoints are not touched.
        """
        from raysisa.methods import get_method
        from raysisa.methods.base import Need
        from raysisa.methods.engine import make_context, run_method

        run = self._run(store)
        self._configure_torch(run.spec)
        ids, blobs, refs = self._slices(run)
        parts = [self._tensors(b, run) for b in blobs]
        self._keep_decoded(blobs)
        if retain_slices is not None:
            keep = [r - 1 for r in sorted(set(retain_slices))]
            ids, parts = [ids[i] for i in keep], [parts[i] for i in keep]
        unlearner = get_method(method["method"], method.get("args"))
        model = build_model(run.info, run.spec.model)
        if base is None:
            base = refs[-1]
        if isinstance(base, CheckpointRef):
            base = load_model(run.store, base).state_dict()
        model.load_state_dict(base, strict=True)
        init = model_tensors(run.store.checkpoints.get(refs[0]).tensors) if Need.INIT_WEIGHTS in unlearner.needs else None
        ctx = make_context(
            unlearner,
            model,
            run.info,
            run.spec.model,
            seed,
            x=torch.cat([p[0] for p in parts]),
            y=torch.cat([p[1] for p in parts]),
            ids=np.concatenate(ids),
            forget_ids=np.asarray(forget_ids, dtype=np.int64),
            init_state=init,
            prune_mask=prune_mask,
            augment=run.spec.train.augment,
            device=self.device,
        )
        outcome = run_method(unlearner, ctx)
        return {"tensors": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "outcome": outcome.to_dict()}

    def predict(self, store: StoreConfig, x: torch.Tensor, ref: CheckpointRef | None = None) -> torch.Tensor:
        """Softmax probabilities on ``x`` of checkpoint ``ref`` (default: the latest)."""
        run = self._run(store)
        ref = ref if ref is not None else shard_refs(run.store, self.shard)[-1]
        model = load_model(run.store, ref, self.device)
        return predict_proba(model, x, device=self.device)

    def predict_test(self, store: StoreConfig, ref: CheckpointRef | None = None) -> torch.Tensor:
        """Softmax probabilities of checkpoint ``ref`` (default: the latest) on the test split."""
        run = self._run(store)
        digest = run.store.state().test.sha256
        if digest not in self._test:
            self._test = {digest: to_tensors(run.store.read_test(), run.info)[0]}
        return self.predict(store, self._test[digest], ref)
