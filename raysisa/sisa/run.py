"""The SISA driver: create a run, train it, unlearn samples exactly, evaluate and inspect.

:class:`SisaRun` holds no state beyond the store: what a shard must (re)train is derived
by comparing the content-addressed keys of its current data with the checkpoints present.
That makes every operation resumable and idempotent: after a crash, running it again (or
``raysisa train --store``) finishes the work and nothing is trained twice.

Exact unlearning of ids U (:meth:`SisaRun.unlearn`):

1. validate U (integers, non-negative, known) before touching anything;
2. rewrite each affected data partition without U, then the index, then record tombstones;
3. delete every checkpoint whose key no longer matches the data (all checkpoints trained on
   U: the affected shards' slices r* ..R), plus leftovers of interrupted writes;
4. retrain each affected shard from checkpoint r*-1 through slice R.

Because slice training is a deterministic function of (previous checkpoint, data, seeds),
the result is bit-identical to training from scratch without U.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from raysisa.config import RunSpec, StoreConfig
from raysisa.data.partition import plan_partition
from raysisa.data.samples import drop_ids, take_ids
from raysisa.data.sources import load_source
from raysisa.data.tensors import to_tensors
from raysisa.errors import ConfigError, InvalidIdsError, StaleStateError
from raysisa.sisa.aggregate import aggregate
from raysisa.sisa.cost import first_slices, retrain_cost
from raysisa.sisa.pool import ShardPool
from raysisa.sisa.reports import EvalReport, TrainReport, UnlearnReport, parse_ids
from raysisa.sisa.shard import SliceReport, load_model, shard_refs
from raysisa.store import CheckpointRef, RunStore
from raysisa.training import predict_proba

__all__ = ["SisaRun", "TrainReport", "UnlearnReport", "EvalReport", "parse_ids"]

log = logging.getLogger(__name__)


class SisaRun:
    """One SISA run on a store. All state lives on the store; this object caches nothing
    that can change.

    Args:
        store: where the run lives.
    """

    def __init__(self, store: StoreConfig | RunStore) -> None:
        self.store = store if isinstance(store, RunStore) else RunStore(store)

    @property
    def config(self) -> StoreConfig:
        return self.store.objects.config

    # -- creation --------------------------------------------------------------------------
    @classmethod
    def create(cls, spec: RunSpec, store: StoreConfig, exclude_ids: Iterable[Any] | None = None) -> SisaRun:
        """Ingest the data of ``spec`` into a new run at ``store`` (or reopen an identical one).

        ``exclude_ids`` are left out of the same partition: the reference that exact
        unlearning of those ids must reproduce. They are recorded as tombstones.

        Raises:
            ConfigError: the store holds a run with another config.
            InvalidIdsError: an excluded id is not a training sample.
        """
        run = cls(store)
        exclude_ids = [] if exclude_ids is None else list(exclude_ids)
        excluded = parse_ids(exclude_ids) if exclude_ids else np.zeros(0, np.int64)
        if run.store.exists():
            run._check_reopen(spec, excluded)
            return run
        data = load_source(spec.data)
        train_ids = data.train["id"].to_numpy()
        unknown = np.setdiff1d(excluded, train_ids)
        if len(unknown):
            raise InvalidIdsError(
                f"{len(unknown)} excluded id(s) are not training samples of {spec.data.source}, e.g. "
                f"{', '.join(map(str, unknown[:5].tolist()))}; nothing was written"
            )
        sharding = spec.sharding
        plan = plan_partition(train_ids, sharding.num_shards, sharding.num_slices, sharding.seed)
        live = ~np.isin(plan.ids, excluded)
        # Rows of the source table in plan order, minus excluded ids.
        by_id = np.argsort(train_ids)
        rows = by_id[np.searchsorted(train_ids[by_id], plan.ids[live])]
        ordered = data.train.take(pa.array(rows))
        shard_col, slice_col = plan.shard[live], plan.slice[live]
        for k in range(sharding.num_shards):
            for r in range(1, sharding.num_slices + 1):
                run.store.write_partition(k, r, ordered.filter(pa.array((shard_col == k) & (slice_col == r))))
        run.store.write_test(data.test)
        run.store.write_index(pa.table({"id": plan.ids[live], "shard": shard_col, "slice": slice_col}))
        if len(excluded):
            gone = ~live
            run.store.add_tombstones(plan.ids[gone], plan.shard[gone], plan.slice[gone], "excluded at training")
        # The manifest goes last: its presence means the data is complete.
        run.store.write_manifest(
            spec, data.info, {"num_train": int(data.train.num_rows), "num_test": int(data.test.num_rows)}
        )
        log.info("created run at %s: %d training samples, %d excluded", store.uri, live.sum(), len(excluded))
        return run

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
    def expected_refs(self) -> dict[int, list[CheckpointRef]]:
        """For every shard, the checkpoint refs (slices 0..R) its current data calls for."""
        return {k: shard_refs(self.store, k) for k in range(self.store.spec.sharding.num_shards)}

    def pending_work(self, expected: dict[int, list[CheckpointRef]] | None = None) -> dict[int, list[int]]:
        """Slices each shard must (re)train: from its first missing checkpoint to R."""
        expected = expected if expected is not None else self.expected_refs()
        present = set(self.store.checkpoints.list())
        work = {}
        for shard, refs in expected.items():
            missing = [r.slice for r in refs if r not in present]
            if missing:
                work[shard] = list(range(missing[0], len(refs)))
        return work

    def purge_stale(self, expected: dict[int, list[CheckpointRef]] | None = None) -> int:
        """Delete checkpoints that no longer match the data, and interrupted writes."""
        expected = expected if expected is not None else self.expected_refs()
        keep = {ref for refs in expected.values() for ref in refs}
        stale = [ref for ref in self.store.checkpoints.list() if ref not in keep]
        self.store.checkpoints.delete(stale)
        self.store.objects.delete(self.store.checkpoints.orphans() + self.store.objects.list_temporary(""))
        if stale:
            log.info("deleted %d stale checkpoint(s) at %s", len(stale), self.store.uri)
        return len(stale)

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
        expected = self.expected_refs()
        self.purge_stale(expected)
        rebuilt = self.delete_corrupt(expected) if verify else 0
        reports = self._run_work(pool, self.pending_work(expected), progress, "training")
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
        limit = pool.concurrency(self.store.spec.train.threads)
        store = self.config
        reports: list[SliceReport] = []
        in_flight: dict[Any, int] = {}
        waiting = sorted(queues)
        with tqdm(total=sum(map(len, queues.values())), desc=what, unit="slice", disable=not progress) as bar:
            while waiting or in_flight:
                while waiting and len(in_flight) < limit:
                    shard = waiting.pop(0)
                    in_flight[pool.submit(shard, "train_slice", store, queues[shard].pop(0))] = shard
                for handle in pool.wait(list(in_flight)):
                    shard = in_flight.pop(handle)
                    reports.append(pool.result(handle))
                    bar.update(1)
                    if queues[shard]:
                        in_flight[pool.submit(shard, "train_slice", store, queues[shard].pop(0))] = shard
        return reports

    # -- unlearning ------------------------------------------------------------------------
    def check_ids(self, ids: Iterable[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validate ids for deletion: (all requested, to delete now, already deleted).

        Raises:
            InvalidIdsError: malformed ids, or ids that never existed in the training data.
        """
        wanted = parse_ids(ids)
        self.store.manifest()  # a clear error if there is no run here
        live_mask = np.isin(wanted, self.store.read_index()["id"].to_numpy())
        tombstoned = np.isin(wanted, self.store.tombstones()["id"].to_numpy())
        unknown = wanted[~live_mask & ~tombstoned]
        if len(unknown):
            raise InvalidIdsError(
                f"{len(unknown)} id(s) never existed in this run's training data, e.g. "
                f"{', '.join(map(str, unknown[:10].tolist()))}; nothing was changed"
            )
        return wanted, wanted[live_mask], wanted[~live_mask & tombstoned]

    def commit_deletion(self, ids: np.ndarray, reason: str = "unlearn") -> dict[int, int]:
        """Delete the data of live ``ids``: rewrite their partitions, then the index, then
        add tombstones. Returns the earliest affected slice per shard. Idempotent.

        Checkpoints are not touched: :meth:`purge_stale` and training follow.
        """
        index = self.store.read_index()
        rows = take_ids(index, ids)
        shards, slices = rows["shard"].to_numpy(), rows["slice"].to_numpy()
        for shard, slice_ in sorted(set(zip(shards.tolist(), slices.tolist(), strict=True))):
            self.store.write_partition(shard, slice_, drop_ids(self.store.read_partition(shard, slice_), ids))
        if rows.num_rows:
            self.store.write_index(drop_ids(index, ids))
            self.store.add_tombstones(rows["id"].to_numpy(), shards, slices, reason)
        return first_slices(shards, slices)

    def retrain_shards(self, pool: ShardPool, shards: Iterable[int] | None = None, progress: bool = False) -> list[SliceReport]:
        """Purge stale checkpoints, then train the pending slices of ``shards`` (default: all)."""
        expected = self.expected_refs()
        self.purge_stale(expected)
        work = self.pending_work(expected)
        if shards is not None:
            chosen = set(shards)
            work = {k: v for k, v in work.items() if k in chosen}
        return self._run_work(pool, work, progress, "retraining")

    def unlearn(self, ids: Iterable[Any], pool: ShardPool, progress: bool = False) -> UnlearnReport:
        """Exactly unlearn ``ids`` (see the module docstring).

        Raises:
            InvalidIdsError: malformed or unknown ids; the store is left unchanged.
        """
        started = time.perf_counter()
        wanted, deleting, already = self.check_ids(ids)
        first = self.commit_deletion(deleting)
        expected = self.expected_refs()
        purged = self.purge_stale(expected)
        reports = self._run_work(pool, self.pending_work(expected), progress, "retraining")
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
            checkpoints_deleted=purged,
            slices=reports,
        )

    # -- evaluation ------------------------------------------------------------------------
    def served_refs(self, expected: dict[int, list[CheckpointRef]] | None = None) -> dict[int, CheckpointRef]:
        """The model each shard serves: its latest exact checkpoint, or, while a shard is
        approximate (its exact checkpoints await retraining), its approximate overlay.

        Raises:
            StaleStateError: a shard has neither.
        """
        expected = expected if expected is not None else self.expected_refs()
        stale = self.pending_work(expected)
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
            if x is None:
                handles = [pool.submit(shard, "predict_test", self.config, ref) for shard, ref in served.items()]
            else:
                handles = [pool.submit(shard, "predict", self.config, x, ref) for shard, ref in served.items()]
            return np.stack([pool.result(h).numpy() for h in handles])
        if x is None:
            x, _ = to_tensors(self.store.read_test(), self.store.info)
        return np.stack([predict_proba(load_model(self.store, ref), x).numpy() for ref in served.values()])

    def evaluate(self, aggregation: str = "vote", weights: list[float] | None = None, pool: ShardPool | None = None) -> EvalReport:
        """Ensemble and per-shard accuracy on the test split.

        Shards left without samples (every one deleted) get weight 0 unless ``weights`` is given.
        """
        self.store.manifest()  # a clear error if there is no run here
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
        manifest = self.store.manifest()
        spec = self.store.spec
        present = set(self.store.checkpoints.list())
        overlays = {ref.shard: ref for ref in self.store.overlays.list()}
        shards, expected_all = [], set()
        for shard in range(spec.sharding.num_shards):
            slice_ids = self.store.slice_ids(shard)
            sizes = [len(s) for s in slice_ids]
            refs = shard_refs(self.store, shard, slice_ids)
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
