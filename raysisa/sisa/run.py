"""The SISA driver: create a run, train it, unlearn samples exactly, evaluate and inspect.

:class:`SisaRun` holds no state beyond the store: what a shard must (re)train is derived
by comparing the checkpoint keys the committed state expects with the checkpoints present.
That makes every operation resumable and idempotent: after a crash, running it again (or
``raysisa train --store``) finishes the work and nothing is trained twice.

Every operation that writes holds the store's writer lease (:meth:`SisaRun.writer`) and
first finishes any transaction a crash interrupted (:mod:`raysisa.store.run`).

Exact unlearning of ids U (:meth:`SisaRun.unlearn`):

1. validate U (integers, non-negative, known) before touching anything;
2. read and verify every object the deletion reads: the affected partitions and the
   checkpoint each affected shard restarts from;
3. in one transaction, write the partitions without U, the index and the tombstones as
   new objects and commit them; then sweep the old objects and every checkpoint whose key
   no longer matches the data (all checkpoints trained on U: the affected shards' slices
   r*..R), plus leftovers of interrupted writes;
4. retrain each affected shard from checkpoint r*-1 through slice R.

Because slice training is a deterministic function of (previous checkpoint, data, seeds),
the result is bit-identical to training from scratch without U.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from raysisa import telemetry
from raysisa.config import RunSpec, StoreConfig
from raysisa.data.samples import take_ids
from raysisa.data.sources import load_source
from raysisa.data.tensors import Images
from raysisa.errors import (
    CheckpointCorruptError,
    ConfigError,
    InvalidIdsError,
    StaleStateError,
    StoreBusyError,
    StoreNotFoundError,
)
from raysisa.sisa.aggregate import aggregate
from raysisa.sisa.cost import first_slices, retrain_cost
from raysisa.sisa.pool import ShardPool
from raysisa.sisa.reports import EvalReport, TrainReport, UnlearnReport, parse_ids
from raysisa.sisa.shard import load_model
from raysisa.sisa.tasks import Predict, RunAt, SliceReport, TrainSlice
from raysisa.store import CheckpointRef, RunStore
from raysisa.store.lease import Lease, acquire_lease, current_holder
from raysisa.store.run import JOURNAL, SweepReport
from raysisa.training import predict_proba

__all__ = ["SisaRun", "TrainReport", "UnlearnReport", "EvalReport", "parse_ids"]

log = logging.getLogger(__name__)


class SisaRun:
    """One SISA run on a store. All state lives on the store; this object caches only the
    committed state it works with, re-read whenever it takes the writer lease.

    Args:
        store: where the run lives.
    """

    def __init__(self, store: StoreConfig | RunStore) -> None:
        self.store = store if isinstance(store, RunStore) else RunStore(store)
        self._lease: Lease | None = None
        self.recovered: list[str] = []  # interrupted transactions the last writer() finished

    @property
    def config(self) -> StoreConfig:
        return self.store.objects.config

    def at(self) -> RunAt:
        """This run at the committed version this object works with (what shard tasks name)."""
        return RunAt(self.config, self.store.fingerprint, self.store.state().version)

    @classmethod
    def open(cls, store: StoreConfig | RunStore) -> SisaRun:
        """The run at ``store`` for reading, after finishing any interrupted transaction."""
        run = cls(store)
        run.recover()
        return run

    # -- the writer lease ------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self, purpose: str, wait: float | None = None) -> Iterator[Lease]:
        """Hold the store's writer lease for the block (reentrant), after finishing any
        interrupted transaction (see :mod:`raysisa.store.run`).

        Raises:
            StoreBusyError: another process holds the lease after ``wait`` seconds
                (default: ``StoreConfig.lease_wait_seconds``).
        """
        if self._lease is not None:
            yield self._lease
            return
        config = self.config
        lease = acquire_lease(
            self.store.objects,
            purpose,
            ttl=config.lease_ttl_seconds,
            wait=config.lease_wait_seconds if wait is None else wait,
        )
        self._lease = lease
        try:
            self.store.forget_cache()  # another writer may have committed since we last looked
            self.recovered = self.store.recover(lease)
            yield lease
        finally:
            self._lease = None
            lease.release()

    def recover(self) -> list[str]:
        """Finish interrupted transactions, unless a live writer is still running them;
        returns what was done."""
        if not self.store.objects.list(JOURNAL):
            return []
        try:
            with self.writer("recovery", wait=0):
                return self.recovered
        except StoreBusyError:  # a live writer holds the lease: its transaction is not interrupted
            return []

    # -- creation --------------------------------------------------------------------------
    @classmethod
    def create(cls, spec: RunSpec, store: StoreConfig, exclude_ids: Iterable[Any] | None = None) -> SisaRun:
        """Ingest the data of ``spec`` into a new run at ``store`` (or reopen an identical
        one); see :meth:`ingest`."""
        run = cls(store)
        run.ingest(spec, exclude_ids)
        return run

    def ingest(self, spec: RunSpec, exclude_ids: Iterable[Any] | None = None) -> None:
        """Ingest the data of ``spec`` into this (empty) store, in one transaction.

        ``exclude_ids`` are left out of the same partition: the reference that exact
        unlearning of those ids must reproduce. They are recorded as tombstones. A store
        that already holds this run is reopened.

        Raises:
            ConfigError: the store holds a run with another config.
            StoreError: the store holds data but no run manifest (it is never ingested over).
            InvalidIdsError: an excluded id is not a training sample.
        """
        exclude_ids = [] if exclude_ids is None else list(exclude_ids)
        excluded = parse_ids(exclude_ids) if exclude_ids else np.zeros(0, np.int64)
        with self.writer("ingest") as lease:
            if self.store.exists():
                self._check_reopen(spec, excluded)
                return
            self.store.check_empty()
            data = load_source(spec.data)
            state = self.store.ingest(spec, data, excluded, lease)
            log.info("created run at %s: %d training samples, %d excluded", self.store.uri, state.index.rows, len(excluded))

    def _check_reopen(self, spec: RunSpec, excluded: np.ndarray) -> None:
        if self.store.fingerprint != spec.fingerprint():
            raise ConfigError(
                f"store {self.store.uri} holds a run with another config (fingerprint "
                f"{self.store.fingerprint[:12]} vs {spec.fingerprint()[:12]}); use a new store, or the same config"
            )
        tombstoned = self.store.tombstones()["id"].to_numpy()
        missing = np.setdiff1d(excluded, tombstoned)
        if len(missing):
            raise ConfigError(
                f"store {self.store.uri} already holds this run without excluding {len(missing)} of the given ids; "
                "delete them with `raysisa unlearn`, or train into a new store"
            )

    # -- state -----------------------------------------------------------------------------
    def _latest(self) -> None:
        """Read the latest commit, unless this object holds the lease (then the state changes
        only by its own commits, which update it)."""
        if self._lease is None:
            self.store.refresh()

    def expected_refs(self) -> dict[int, list[CheckpointRef]]:
        """For every shard, the checkpoint refs (slices 0..R) its current data calls for."""
        self._latest()
        return self.store.expected_refs()

    def pending_work(
        self, expected: dict[int, list[CheckpointRef]] | None = None, shards: Iterable[int] | None = None
    ) -> dict[int, list[int]]:
        """Slices each shard (or each of ``shards``) must (re)train: from its first missing
        checkpoint to R.

        Checkpoints are listed per shard when that takes fewer requests than listing them
        all (a listing returns 1,000 keys per request; a checkpoint is two objects)."""
        expected = expected if expected is not None else self.expected_refs()
        if shards is not None:
            shards = sorted(set(shards))
            expected = {shard: expected[shard] for shard in shards}
        objects = 2 * self.store.state().num_shards * (self.store.spec.sharding.num_slices + 1)
        if shards is not None and len(shards) < math.ceil(objects / 1000):
            present = {ref for shard in shards for ref in self.store.checkpoints.list(shard)}
        else:
            present = set(self.store.checkpoints.list())
        work = {}
        for shard, refs in expected.items():
            missing = [r.slice for r in refs if r not in present]
            if missing:
                work[shard] = list(range(missing[0], len(refs)))
        return work

    def purge_stale(self) -> int:
        """Delete old data objects, checkpoints that no longer match the data, and
        interrupted writes (the sweep of :mod:`raysisa.store.run`); returns the number of
        checkpoints deleted."""
        with self.writer("sweep") as lease:
            return self.store.sweep(lease).checkpoints

    # -- training --------------------------------------------------------------------------
    def train(self, pool: ShardPool, progress: bool = False, verify: bool = False) -> TrainReport:
        """Train every slice that has no checkpoint for the current data (resumes).

        Args:
            pool: where shards train.
            progress: show a progress bar.
            verify: first check every checkpoint's sha256 and delete corrupt ones, so they
                are rebuilt (bit-identically) from the last intact checkpoint before them.
        """
        started = time.perf_counter()
        with self.writer("train") as lease:
            self.store.sweep(lease)
            rebuilt = self.delete_corrupt() if verify else 0
            reports = self._run_work(pool, self.pending_work(), progress, "training")
        report = self._train_report(reports, time.perf_counter() - started)
        report.checkpoints_rebuilt = rebuilt
        return report

    def delete_corrupt(self, expected: dict[int, list[CheckpointRef]] | None = None) -> int:
        """Verify every current checkpoint; delete (and log) the corrupt ones."""
        expected = expected if expected is not None else self.expected_refs()
        present = set(self.store.checkpoints.list())
        corrupt = []
        for refs in expected.values():
            for ref in refs:
                problem = self.store.checkpoints.verify(ref) if ref in present else None
                if problem:
                    log.error("%s; deleting it so it is rebuilt", problem)
                    corrupt.append(ref)
        with self.writer("verify"):
            self.store.checkpoints.delete(corrupt)
        return len(corrupt)

    def _train_report(self, reports: list[SliceReport], wall: float) -> TrainReport:
        sharding = self.store.spec.sharding
        trained = [r for r in reports if r.trained]
        return TrainReport(
            store=self.store.uri,
            num_shards=sharding.num_shards,
            num_slices=sharding.num_slices,
            slices_trained=sum(1 for r in trained if r.slice > 0),
            slices_skipped=sum(1 for r in reports if not r.trained),
            sample_grads=sum(r.sample_grads for r in trained),
            compute_seconds=sum(r.seconds for r in trained),
            wall_seconds=wall,
            slices=reports,
        )

    def _run_work(self, pool: ShardPool, work: dict[int, list[int]], progress: bool, what: str) -> list[SliceReport]:
        """Run each shard's slices in order, shards in parallel up to the pool's concurrency."""
        queues = {shard: list(slices) for shard, slices in work.items() if slices}
        pool.start(sorted(queues))
        limit = pool.concurrency(self.store.spec.train.threads)
        at = self.at()
        reports: list[SliceReport] = []
        in_flight: dict[Any, int] = {}
        waiting = sorted(queues)
        # the bar counts trained slices as the report does: slice 0 (the initial model) is not one
        total = sum(1 for slices in queues.values() for s in slices if s > 0)
        with tqdm(total=total, desc=what, unit="slice", disable=not progress) as bar:
            while waiting or in_flight:
                while waiting and len(in_flight) < limit:
                    shard = waiting.pop(0)
                    in_flight[pool.submit(shard, TrainSlice(at, queues[shard].pop(0)))] = shard
                for handle in pool.wait(list(in_flight)):
                    shard = in_flight.pop(handle)
                    reports.append(pool.result(handle))
                    bar.update(1 if reports[-1].slice > 0 else 0)
                    if queues[shard]:
                        in_flight[pool.submit(shard, TrainSlice(at, queues[shard].pop(0)))] = shard
        return reports

    def _retrained(self, reports: list[SliceReport]) -> list[SliceReport]:
        """``reports`` of retraining after a deletion, counted in the metrics."""
        trained = [r for r in reports if r.trained and r.slice > 0]
        telemetry.slices_retrained(telemetry.run_label(self.store.uri), len(trained), sum(r.sample_grads for r in trained))
        return reports

    # -- unlearning ------------------------------------------------------------------------
    def check_ids(self, ids: Iterable[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validate ids for deletion: (all requested, to delete now, already deleted).

        Raises:
            InvalidIdsError: malformed ids, or ids that never existed in the training data.
        """
        wanted = parse_ids(ids)
        self._latest()  # also a clear error if there is no run here
        live_mask = np.isin(wanted, self.store.read_index()["id"].to_numpy())
        tombstoned = np.isin(wanted, self.store.tombstones()["id"].to_numpy())
        unknown = wanted[~live_mask & ~tombstoned]
        if len(unknown):
            raise InvalidIdsError(
                f"{len(unknown)} id(s) never existed in this run's training data, e.g. "
                f"{', '.join(map(str, unknown[:10].tolist()))}; nothing was changed"
            )
        return wanted, wanted[live_mask], wanted[~live_mask & tombstoned]

    def shards_of(self, ids: np.ndarray) -> set[int]:
        """Shards that hold (or held, before their deletion) ``ids``."""
        live = take_ids(self.store.read_index(), ids)["shard"].to_numpy()
        gone = take_ids(self.store.tombstones(), ids)["shard"].to_numpy()
        return {int(k) for k in np.concatenate([live, gone])}

    def commit_deletion(self, ids: np.ndarray, reason: str = "unlearn") -> dict[int, int]:
        """Delete the data of live ``ids`` in one transaction: new partitions, index and
        tombstones committed at once, then the old objects and every checkpoint trained on
        the ids swept. Returns the earliest affected slice per shard. Idempotent: ids already
        deleted are skipped.

        Everything it reads is verified first (the affected partitions, and the checkpoint
        each affected shard will restart from); a problem raises before anything is written.
        """
        return self._delete(ids, reason)[0]

    def _delete(self, ids: np.ndarray, reason: str) -> tuple[dict[int, int], SweepReport | None]:
        with self.writer(f"delete ({reason})") as lease:
            plan = self.store.plan_delete(np.asarray(ids, dtype=np.int64))
            if not len(plan.ids):
                return {}, None
            first = first_slices(plan.rows["shard"].to_numpy(), plan.rows["slice"].to_numpy())
            self._verify_restart_points(first)
            return first, self.store.commit_delete(plan, reason, lease)

    def _verify_restart_points(self, first: dict[int, int]) -> None:
        """The checkpoint before each shard's earliest affected slice must be intact."""
        expected = self.expected_refs()
        for shard, slice_ in first.items():
            ref = expected[shard][slice_ - 1]
            try:
                problem = self.store.checkpoints.verify(ref)
            except StoreNotFoundError:  # missing: retraining rebuilds it from an earlier one
                problem = None
            if problem:
                raise CheckpointCorruptError(
                    f"{problem}. Shard {shard} would restart from it, so nothing was deleted: rebuild it with "
                    f"`raysisa train --store {self.store.uri} --verify`, then retry"
                )

    def retrain_shards(self, pool: ShardPool, shards: Iterable[int] | None = None, progress: bool = False) -> list[SliceReport]:
        """Train the pending slices of ``shards`` (default: all, after a sweep of the store).

        Checkpoints a deletion made stale are already gone (its commit swept them), so
        retraining named shards lists only their checkpoints."""
        with self.writer("retrain") as lease:
            if shards is None:
                self.store.sweep(lease)
            work = self.pending_work(shards=shards)
            return self._retrained(self._run_work(pool, work, progress, "retraining"))

    def unlearn(self, ids: Iterable[Any], pool: ShardPool, progress: bool = False) -> UnlearnReport:
        """Exactly unlearn ``ids`` (see the module docstring).

        Raises:
            InvalidIdsError: malformed or unknown ids; the store is left unchanged.
        """
        started = time.perf_counter()
        with self.writer("unlearn") as lease:
            wanted, deleting, already = self.check_ids(ids)
            shards = self.shards_of(wanted)  # read before the deletion changes the index
            first, sweep = self._delete(deleting, "unlearn")
            sweep = sweep or self.store.sweep(lease)
            # the shards holding the ids: those just deleted, and those of ids deleted before
            # (a re-run after a crash finishes their retraining)
            reports = self._retrained(self._run_work(pool, self.pending_work(shards=shards), progress, "retraining"))
        if len(deleting):
            message = f"deleted {len(deleting)} sample(s) from {len(first)} shard(s)"
            if len(already):
                message += f"; {len(already)} id(s) were already deleted"
        else:
            message = f"all {len(already)} id(s) were already deleted; nothing to do"
        trained = [r for r in reports if r.trained]
        return UnlearnReport(
            store=self.store.uri,
            requested=len(wanted),
            deleted=deleting.tolist(),
            already_deleted=already.tolist(),
            message=message,
            shards_affected=sorted(first),
            first_slice=first,
            slices_retrained=sum(1 for r in trained if r.slice > 0),
            sample_grads=sum(r.sample_grads for r in trained),
            compute_seconds=sum(r.seconds for r in trained),
            wall_seconds=time.perf_counter() - started,
            checkpoints_deleted=sweep.checkpoints,
            slices=reports,
        )

    # -- evaluation ------------------------------------------------------------------------
    def served_refs(
        self, expected: dict[int, list[CheckpointRef]] | None = None, shards: Iterable[int] | None = None
    ) -> dict[int, CheckpointRef]:
        """The model each shard (or each of ``shards``) serves: its latest exact checkpoint,
        or, while a shard is approximate (its exact checkpoints await retraining), its
        approximate overlay.

        Raises:
            StaleStateError: a shard has neither.
        """
        expected = expected if expected is not None else self.expected_refs()
        if shards is not None:
            expected = {shard: expected[shard] for shard in sorted(set(shards))}
        stale = self.pending_work(expected, shards=None if shards is None else list(expected))
        overlays = {ref.shard: ref for ref in self.store.overlays.list()}
        served, missing = {}, []
        for shard, refs in expected.items():
            if shard not in stale:
                served[shard] = refs[-1]
            elif shard in overlays:
                served[shard] = overlays[shard]
            else:
                missing.append(shard)
        if missing:
            raise StaleStateError(
                f"shard(s) {', '.join(map(str, missing))} are not trained on their current data; "
                f"finish with `raysisa train --store {self.store.uri}`"
            )
        return served

    def shard_probs(self, x: torch.Tensor | None = None, pool: ShardPool | None = None) -> np.ndarray:
        """(S, N, C) softmax outputs of every shard's current model on ``x`` (default: the
        test split).

        With a ``pool``, each shard predicts in its own worker (in parallel on Ray; the test
        split is read there from the store); otherwise the models are loaded into this
        process one after another.
        """
        served = self.served_refs()
        if pool is not None:
            pool.start(sorted(served))
            handles = [pool.submit(shard, Predict(self.at(), ref, x)) for shard, ref in served.items()]
            return np.stack([pool.result(h).numpy() for h in handles])
        if x is None:
            x = Images.of(self.store.read_test_pixels().images, self.store.info)
        train = self.store.spec.train
        return np.stack(
            [predict_proba(load_model(self.store, ref), x, flip_tta=train.test_flip, channels_last=train.channels_last).numpy() for ref in served.values()]
        )

    def evaluate(self, aggregation: str = "vote", weights: list[float] | None = None, pool: ShardPool | None = None) -> EvalReport:
        """Ensemble and per-shard accuracy on the test split.

        Shards left without samples (every one deleted) get weight 0 unless ``weights`` is given.
        """
        self._latest()  # also a clear error if there is no run here
        labels = self.store.read_test()["label"].to_numpy()
        probs = self.shard_probs(None, pool)
        if weights is None:
            sizes = np.bincount(self.store.read_index()["shard"].to_numpy(), minlength=len(probs))
            weights = None if sizes.all() else (sizes > 0).astype(float).tolist()
        predictions, _ = aggregate(probs, aggregation, weights)
        return EvalReport(
            store=self.store.uri,
            aggregation=aggregation,
            test_samples=len(labels),
            accuracy=100.0 * float((predictions == labels).mean()),
            shard_accuracy=[100.0 * float((p.argmax(axis=1) == labels).mean()) for p in probs],
        )

    # -- inspection ------------------------------------------------------------------------
    def inspect(self, verify: bool = True) -> dict[str, Any]:
        """Config, shards, slices, checkpoints and per-shard ``model_sha256``."""
        self._latest()
        manifest = self.store.manifest()
        spec = self.store.spec
        state = self.store.state()
        holder = current_holder(self.store.objects)
        present = set(self.store.checkpoints.list())
        overlays = {ref.shard: ref for ref in self.store.overlays.list()}
        shards, expected_all = [], set()
        for shard, refs in self.expected_refs().items():
            sizes = state.slice_sizes(shard)
            expected_all.update(refs)
            checkpoints = []
            for ref in refs:
                status = "missing"
                if ref in present:
                    problem = self.store.checkpoints.verify(ref) if verify else None
                    status = "ok" if problem is None else "corrupt"
                checkpoints.append({"slice": ref.slice, "key": ref.key, "status": status})
            latest = refs[-1]
            model_sha = None
            if checkpoints[-1]["status"] == "ok" or (not verify and latest in present):
                model_sha = self.store.checkpoints.manifest(latest)["model_sha256"]
            up_to_date = all(c["status"] == "ok" for c in checkpoints)
            approximate = None
            if shard in overlays:
                meta = self.store.overlays.manifest(overlays[shard])
                approximate = {
                    "key": overlays[shard].key,
                    "updates": meta["updates"],
                    "pending_ids": len(meta["ids"]),
                    "requests": len(meta["request_ids"]),
                    "method": meta["method"],
                    "accuracy": meta["accuracy"],
                    "exact_accuracy": meta["exact_accuracy"],
                    "model_sha256": meta.get("model_sha256"),
                }
            shards.append(
                {
                    "shard": shard,
                    "state": "exact" if up_to_date else ("approximate" if approximate else "stale"),
                    "approximate": approximate,
                    "samples": sum(sizes),
                    "slice_sizes": sizes,
                    "up_to_date": up_to_date,
                    "full_retrain_sample_grads": retrain_cost(sizes, spec.train.epochs),
                    "model_sha256": model_sha,
                    "checkpoints": checkpoints,
                }
            )
        return {
            "store": self.store.uri,
            "fingerprint": manifest["fingerprint"],
            "created_at": manifest["created_at"],
            "version": state.version,
            "last_change": state.txn,
            "writer": holder.describe() if holder is not None and not holder.free() else None,
            "config": spec.to_dict(),
            "data": {
                **self.store.info.to_dict(),
                "train_samples": sum(s["samples"] for s in shards),
                "test_samples": manifest.get("num_test"),
                "tombstones": self.store.tombstones().num_rows,
            },
            "shards": shards,
            "stale_checkpoints": len(present - expected_all),
        }
