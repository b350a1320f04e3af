"""The coordinator: from logged deletion requests to unlearned shards, exactly once.

:class:`Coordinator` is a plain class; :mod:`raysisa.coordinator.actor` runs it in a
named, detached Ray actor. Each :meth:`Coordinator.step` that has work takes the store's
writer lease (or returns ``busy`` when another writer holds it), finishes any transaction a
crash interrupted, and then:

1. finishes any batch plan a crash left unfinished;
2. once the oldest pending request has waited ``window_seconds``, plans a batch: the cost
   of each affected shard (:class:`~raysisa.coordinator.policy.ShardWork`) and one policy
   decision per shard, written to the ledger *before* anything executes;
3. executes the plan (idempotently, so a restart simply executes it again):
   a. approximate shards: DPUS (+ OHS) in the shard's worker, then the result is written
      as the shard's overlay — skipped when the overlay already records this batch;
   b. the data of every decided id is deleted in one transaction (partitions, index,
      tombstones committed at once), and checkpoints trained on it are purged;
   c. exact shards are retrained from their earliest affected slice;
4. records each request's new state and writes its receipt, then marks the plan done;
5. when idle for ``idle_seconds``, or when a shard hits the debt bound, restores the
   exactness of approximate shards by SISA retraining, then drops their overlays and
   marks the requests they carried exact; applied requests a crash left unmarked are
   marked (after retraining any shard they still wait for).
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections import Counter
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from raysisa.config import CoordinatorConfig, StoreConfig
from raysisa.coordinator.ledger import Ledger, Request, now, parse_time
from raysisa.crashpoints import crash_point
from raysisa.coordinator.policy import ShardWork, debt_reason, decide, ohs_slices
from raysisa.data.samples import take_ids
from raysisa.data.tensors import to_tensors
from raysisa.errors import StaleStateError, StoreBusyError
from raysisa.evaluation.metrics import accuracy
from raysisa.methods import get_method
from raysisa.quant import is_quantized
from raysisa.sisa.cost import retrain_cost
from raysisa.sisa.pool import ShardPool
from raysisa.sisa.run import SisaRun
from raysisa.sisa.shard import load_model
from raysisa.sisa.tasks import ApplyUpdate, MethodCall, UpdateResult
from raysisa.store import CheckpointRef, tensors_sha256
from raysisa.training import derive_seed, predict_proba

__all__ = ["Coordinator"]

log = logging.getLogger(__name__)


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: np.ndarray) -> float:
    return accuracy(predict_proba(model, x).numpy(), y)


class Coordinator:
    """Applies deletion requests from the ledger of the run at ``store``.

    Args:
        store: the SISA run.
        config: batching, policy and debt settings.
        pool: where shard work runs (Ray actors in production, in-process in tests).
    """

    def __init__(self, store: StoreConfig, config: CoordinatorConfig, pool: ShardPool) -> None:
        self.run = SisaRun(store)
        self.store = self.run.store
        self.ledger = Ledger(self.store.objects)
        self.config = config
        self.pool = pool
        self.last_activity = time.time()
        self._test: tuple[torch.Tensor, np.ndarray] | None = None
        self._requests: dict[str, Request] = {}  # requests are immutable: read each once
        self.store.manifest()  # fails clearly when there is no run

    # -- the loop ---------------------------------------------------------------------------
    def step(self) -> str:
        """Do the next piece of work; returns what was done: ``resumed``, ``batch``,
        ``restored``, ``settled`` (applied requests marked exact), or ``waiting`` / ``idle``
        / ``busy`` (another writer holds the store)."""
        action, _ = self._next()
        if action in ("waiting", "idle"):
            return action
        try:
            with self.run.writer("coordinator", wait=0):
                action, arg = self._next()  # again under the lease: another writer may have done it
                if action == "resumed":
                    self.execute(arg)
                elif action == "batch":
                    self.execute(self.plan(arg))
                elif action == "restored":
                    self.restore_exactness(arg)
                elif action == "settled":
                    self.settle()
                return action
        except StoreBusyError:
            return "busy"

    def _next(self) -> tuple[str, Any]:
        """What :meth:`step` should do now (reads only)."""
        plans = self.ledger.unfinished_plans()
        if plans:
            return "resumed", plans[0]
        states = self.ledger.states()  # one listing of the ledger per decision
        pending = self.pending(states)
        if pending:
            oldest = min(parse_time(r.submitted_at) for r in pending)
            if time.time() - oldest >= self.config.window_seconds or len(pending) >= self.config.max_batch:
                return "batch", pending[: self.config.max_batch]
            return "waiting", None
        approximate = self.approximate_shards()
        if not approximate:
            # applied requests a crash left unmarked: retrain what they wait for, or mark them
            open_ = self._open_requests(states)
            if not open_:
                return "idle", None
            stale = self._shards_of(open_) & set(self.run.pending_work())
            return ("restored", sorted(stale)) if stale else ("settled", None)
        indebted = self._debt_shards()
        if indebted:
            return "restored", indebted
        idle = self.config.idle_seconds
        if idle is not None and time.time() - self.last_activity >= idle:
            return "restored", approximate
        return "idle", None

    def run_until_settled(self, timeout: float = 600.0, exact: bool = True) -> None:
        """Step until nothing is pending (and, with ``exact``, no shard is approximate)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.step()
            if not self.pending() and not self.ledger.unfinished_plans():
                if not exact or not (self.approximate_shards() or self._open_requests()):
                    return
                if self.approximate_shards():
                    self.restore_exactness()
            time.sleep(min(self.config.poll_seconds, 0.05))
        raise TimeoutError(f"the coordinator did not settle within {timeout}s")

    def pending(self, states: dict[str, str] | None = None) -> list[Request]:
        """Pending requests, oldest first (from ``states``, else a fresh listing of the ledger)."""
        states = self.ledger.states() if states is None else states
        requests = [self._request(rid) for rid, state in states.items() if state == "pending"]
        return sorted(requests, key=lambda r: (r.submitted_at, r.request_id))

    def _request(self, request_id: str) -> Request:
        if request_id not in self._requests:
            self._requests[request_id] = self.ledger.request(request_id)
        return self._requests[request_id]

    # -- planning ---------------------------------------------------------------------------
    def plan(self, requests: list[Request]) -> dict[str, Any]:
        """Decide every affected shard of a batch and log the plan (nothing executes yet)."""
        with self.run.writer("coordinator"):
            return self._plan(requests)

    def _plan(self, requests: list[Request]) -> dict[str, Any]:
        limit = self.config.max_request_ids
        accepted = [r for r in requests if limit is None or len(r.ids) <= limit]
        rejected = [r.request_id for r in requests if r not in accepted]
        index = self.store.read_index()
        wanted = np.unique(np.concatenate([np.asarray(r.ids, np.int64) for r in accepted])) if accepted else np.zeros(0, np.int64)
        rows = take_ids(index, wanted)
        live_ids, shards, slices = rows["id"].to_numpy(), rows["shard"].to_numpy(), rows["slice"].to_numpy()
        stale = self.run.pending_work()  # shards serving an overlay already miss checkpoints from some slice on
        works = [
            self._work(int(k), live_ids[shards == k], slices[shards == k], index, accepted, stale.get(int(k)))
            for k in np.unique(shards)
        ]
        decisions = decide(works, self.config)
        stamp = time.time()
        batch_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(stamp))}{int(stamp * 1000) % 1000:03d}-{uuid.uuid4().hex[:8]}"
        plan = {
            "batch_id": batch_id,
            "created_at": now(),
            "requests": [r.request_id for r in accepted],
            "rejected": rejected,
            "shards": {
                str(w.shard): {"ids": live_ids[shards == w.shard].tolist(), "work": asdict(w), "decision": asdict(d)}
                for w, d in zip(works, decisions, strict=True)
            },
            "policy": self.config.policy,
        }
        self.ledger.write_plan(plan)
        crash_point("batch.planned")
        log.info("batch %s: %d request(s), %d shard(s): %s", batch_id, len(accepted), len(works), Counter(d.kind for d in decisions))
        return plan

    def _work(
        self, shard: int, ids: np.ndarray, slices: np.ndarray, index: pa.Table, requests: list[Request], stale: list[int] | None
    ) -> ShardWork:
        """The shard's retraining work W: from the batch's earliest slice, or from the shard's
        earliest missing checkpoint when that is earlier (``stale``: its pending slices)."""
        spec = self.store.spec
        in_shard = index["shard"].to_numpy() == shard
        sizes = np.bincount(index["slice"].to_numpy()[in_shard], minlength=spec.sharding.num_slices + 1)[1:]
        after = (sizes - np.bincount(slices, minlength=spec.sharding.num_slices + 1)[1:]).tolist()
        first = int(slices.min()) if not stale else min(int(slices.min()), max(1, stale[0]))
        full = retrain_cost(after, spec.train.epochs, 1)
        overlay = self.overlay(shard)
        meta = self.store.overlays.manifest(overlay) if overlay else {}
        drift = meta["exact_accuracy"] - meta["accuracy"] if meta else None
        touched = [r for r in requests if np.isin(np.asarray(r.ids), ids).any()]
        age = time.time() - min(parse_time(r.submitted_at) for r in touched) if touched else 0.0
        return ShardWork(
            shard=shard,
            first_slice=first,
            ids=len(ids),
            retrain_grads=retrain_cost(after, spec.train.epochs, first),
            full_grads=full,
            throughput=self.throughput(shard),
            approximate=overlay is not None,
            approx_updates=int(meta.get("updates", 0)),
            drift=drift,
            quantized=is_quantized(spec.model),
            ohs_slices=ohs_slices(after, full, self._ohs_budget(), self._ohs_epochs()),
            age_seconds=age,
        )

    def throughput(self, shard: int) -> float | None:
        """Measured sample-gradients per CPU-second of ``shard``'s slice training (τ).

        CPU time, not wall time: it does not count the time a loaded machine made the
        shard wait, so W/τ estimates the compute a retrain needs when it has its CPUs.
        """
        grads = seconds = 0.0
        for ref in self.store.checkpoints.list(shard):
            if ref.slice == 0:
                continue
            meta = self.store.checkpoints.manifest(ref)
            grads += meta.get("sample_grads", 0)
            seconds += meta.get("train_cpu_seconds", meta.get("train_seconds", 0.0))
        return grads / seconds if seconds > 0 else None

    def _ohs_budget(self) -> float:
        budget = self.config.ohs.budget
        return self.config.rho if budget is None else budget

    def _ohs_epochs(self) -> int:
        spec = self.store.spec
        if self.config.ohs.max_epochs is not None:
            return self.config.ohs.max_epochs
        return max(1, round(2 * spec.train.epochs / (spec.sharding.num_slices + 1)))  # ē

    # -- execution --------------------------------------------------------------------------
    def execute(self, plan: dict[str, Any]) -> None:
        """Carry out a logged plan; safe to repeat after a crash at any point."""
        with self.run.writer("coordinator"):
            self._execute(plan)

    def _execute(self, plan: dict[str, Any]) -> None:
        started = time.perf_counter()
        batch_id = plan["batch_id"]
        decisions = {int(k): v["decision"] for k, v in plan["shards"].items()}
        ids = {int(k): np.asarray(v["ids"], np.int64) for k, v in plan["shards"].items()}
        before = {k: self._served_key(k) for k in decisions}
        timings: dict[int, float] = {}
        updates = {k: d for k, d in decisions.items() if d["kind"] == "update"}
        retrains = [k for k, d in decisions.items() if d["kind"] == "retrain"]
        todo = {}
        for shard, decision in updates.items():  # a. direct updates, written as overlays
            overlay = self.overlay(shard)
            if not (overlay and batch_id in self.store.overlays.manifest(overlay).get("batch_ids", [])):
                todo[shard] = decision
        carried = {k: [r for r in plan["requests"] if set(self._request(r).ids) & set(ids[k].tolist())] for k in todo}
        timings |= self._apply_updates(todo, ids, batch_id, carried)
        decided = [ids[k] for k, d in decisions.items() if d["kind"] in ("update", "retrain")]
        if decided:  # b. the data goes, and every checkpoint trained on it
            self.run.commit_deletion(np.concatenate(decided), reason=f"batch {batch_id}")  # sweeps too
        if retrains:  # c. exact shards retrain from their earliest affected slice
            reports = self.run.retrain_shards(self.pool, retrains)
            for report in reports:
                timings[report.shard] = timings.get(report.shard, 0.0) + report.seconds
            self._drop_overlays(retrains)
        crash_point("batch.retrained")
        after = {k: self._served_key(k) for k in decisions}
        self._record(plan, before, after, timings, time.perf_counter() - started)
        crash_point("batch.recorded")
        self.ledger.finish_plan(batch_id)  # after recording: a replay records again (idempotently)
        self.last_activity = time.time()
        self.settle()

    def _apply_updates(
        self, decisions: dict[int, dict[str, Any]], ids: dict[int, np.ndarray], batch_id: str, carried: dict[int, list[str]]
    ) -> dict[int, float]:
        """DPUS (+ OHS) on each shard's served model, shards in parallel; each result becomes
        the shard's overlay. Returns the compute seconds per shard."""
        spec = self.store.spec
        bases = {shard: self._served_ref(shard) for shard in decisions}
        # seeded by what is forgotten, so a replayed plan (or the same request) draws the same
        seeds = {s: derive_seed(int(hashlib.sha256(np.sort(ids[s]).tobytes()).hexdigest()[:15], 16), s) for s in decisions}
        self.pool.start(sorted(decisions))
        handles = {
            shard: self.pool.submit(
                shard, ApplyUpdate(self.run.config, MethodCall(d["method"], d["args"]), ids[shard], seeds[shard], bases[shard])
            )
            for shard, d in decisions.items()
        }
        results: dict[int, UpdateResult] = {shard: self.pool.result(handle) for shard, handle in handles.items()}
        ohs = self.config.ohs
        recover = MethodCall.of(get_method(
            "ohs",
            {"lr": ohs.lr_factor * spec.train.lr, "epochs": self._ohs_epochs(), "min_delta": ohs.min_delta,
             "patience": ohs.patience, "batch_size": spec.train.batch_size, "weight_decay": spec.train.weight_decay},
        ))
        last = spec.sharding.num_slices
        handles = {
            shard: self.pool.submit(
                shard,
                ApplyUpdate(self.run.config, recover, ids[shard], seeds[shard], base=results[shard].tensors,
                            retain_slices=tuple(range(last - d["ohs_slices"] + 1, last + 1))),
            )
            for shard, d in decisions.items()
            if d["ohs_slices"]
        }
        tuned: dict[int, UpdateResult] = {shard: self.pool.result(handle) for shard, handle in handles.items()}
        seconds = {}
        for shard, decision in decisions.items():
            steps = [results[shard], *([tuned[shard]] if shard in tuned else [])]
            seconds[shard] = sum(r.seconds for r in steps)
            self._write_overlay(shard, decision, steps[-1].tensors, bases[shard], ids[shard], batch_id, carried[shard],
                                tuned[shard].outcome.epochs if shard in tuned else 0)
            crash_point("batch.overlay")
        return seconds

    def _write_overlay(
        self, shard: int, decision: dict[str, Any], tensors: dict[str, torch.Tensor], base: CheckpointRef,
        ids: np.ndarray, batch_id: str, request_ids: list[str], ohs_epochs: int,
    ) -> None:
        spec = self.store.spec
        previous = self.overlay(shard)
        meta = self.store.overlays.manifest(previous) if previous else {}
        x, y = self._test_split()
        model = load_model(self.store, base)
        # the accuracy of the last exact model, against which drift is measured
        exact_accuracy = meta["exact_accuracy"] if meta else _accuracy(model, x, y)
        model.load_state_dict(tensors)
        ref = CheckpointRef(shard, spec.sharding.num_slices, _key(batch_id, shard), prefix=self.store.overlays.prefix)
        self.store.overlays.put(
            ref,
            {f"model/{k}": v for k, v in tensors.items()},
            {
                "batch_ids": [*meta.get("batch_ids", []), batch_id],
                "request_ids": sorted({*meta.get("request_ids", []), *request_ids}),
                "ids": sorted({*meta.get("ids", []), *(int(i) for i in ids)}),
                "updates": int(meta.get("updates", 0)) + 1,
                "method": decision["method"],
                "args": decision["args"],
                "ohs_slices": decision["ohs_slices"],
                "ohs_epochs": ohs_epochs,
                "base": base.key,
                "model_sha256": tensors_sha256(tensors),
                "exact_accuracy": exact_accuracy,
                "accuracy": _accuracy(model, x, y),
                "created_at": now(),
            },
        )
        if previous and previous != ref:
            self.store.overlays.delete([previous])

    # -- exactness --------------------------------------------------------------------------
    def overlay(self, shard: int) -> CheckpointRef | None:
        refs = self.store.overlays.list(shard)
        return refs[-1] if refs else None

    def approximate_shards(self) -> list[int]:
        return sorted({ref.shard for ref in self.store.overlays.list()})

    def _debt_shards(self) -> list[int]:
        out = []
        for ref in self.store.overlays.list():
            meta = self.store.overlays.manifest(ref)
            if debt_reason(meta["updates"], meta["exact_accuracy"] - meta["accuracy"], self.config):
                out.append(ref.shard)
        return out

    def restore_exactness(self, shards: list[int] | None = None) -> list[int]:
        """SISA-retrain approximate shards; their overlays go and their requests turn exact."""
        with self.run.writer("coordinator"):
            shards = self.approximate_shards() if shards is None else shards
            if shards:
                log.info("restoring exactness of shard(s) %s", shards)
                self.run.retrain_shards(self.pool, shards)
                crash_point("restore.retrained")
                self._drop_overlays(shards)
                crash_point("restore.dropped")
                self.settle()
            self.last_activity = time.time()
            return shards

    def _drop_overlays(self, shards: list[int]) -> None:
        pending = self.run.pending_work()
        for shard in shards:
            if shard not in pending:
                self.store.overlays.delete(self.store.overlays.list(shard))

    def _open_requests(self, states: dict[str, str] | None = None) -> list[str]:
        """Requests applied but not yet exact."""
        states = self.ledger.states() if states is None else states
        return [rid for rid, s in states.items() if s in ("applied_approximate", "applied_exact")]

    def _shard_of(self) -> dict[int, int]:
        tombstones = self.store.tombstones()
        return dict(zip(tombstones["id"].to_pylist(), tombstones["shard"].to_pylist(), strict=True))

    def _shards_of(self, request_ids: list[str]) -> set[int]:
        shard_of = self._shard_of()
        return {shard_of[i] for rid in request_ids for i in self._request(rid).ids if i in shard_of}

    def settle(self) -> None:
        """Mark exact every applied request whose shards no longer hold anything of it."""
        open_ = self._open_requests()
        if not open_:
            return
        approximate = set(self.approximate_shards()) | set(self.run.pending_work())
        shard_of = self._shard_of()
        for rid in open_:
            request = self._request(rid)
            if not approximate & {shard_of.get(i) for i in request.ids}:
                self.ledger.record(rid, "exact")
                if request.subject_sha256:
                    self.ledger.forget_subject(request.subject_sha256)
                self._update_receipt(rid, {"exact_at": now()})

    # -- bookkeeping ------------------------------------------------------------------------
    def _served_ref(self, shard: int) -> CheckpointRef:
        return self.run.served_refs()[shard]

    def _served_key(self, shard: int) -> dict[str, str] | None:
        try:
            ref = self._served_ref(shard)
        except StaleStateError:  # a shard mid-retrain serves nothing yet
            return None
        return {"kind": "approximate" if ref.prefix == "approx" else "exact", "slice": ref.slice, "key": ref.key}

    def _record(self, plan: dict[str, Any], before: dict, after: dict, timings: dict[int, float], seconds: float) -> None:
        tombstones = self.store.tombstones()
        shard_of = dict(zip(tombstones["id"].to_pylist(), tombstones["shard"].to_pylist(), strict=True))
        approximate = set(self.approximate_shards())
        for rid in plan["rejected"]:
            self.ledger.record(rid, "rejected", {"batch_id": plan["batch_id"], "reason": "request larger than max_request_ids"})
            self._update_receipt(rid, {"batch_id": plan["batch_id"], "decision": "rejected"})
        for rid in plan["requests"]:
            request = self._request(rid)
            if any(i not in shard_of for i in request.ids):
                continue  # some of its ids were deferred: a later batch applies them
            shards = sorted({shard_of[i] for i in request.ids})
            state = "applied_approximate" if approximate & set(shards) else "applied_exact"
            self.ledger.record(rid, state, {"batch_id": plan["batch_id"]})
            touched = [
                {
                    "shard": k,
                    **{key: value for key, value in plan["shards"][str(k)]["decision"].items() if key != "shard"},
                    "first_slice": plan["shards"][str(k)]["work"]["first_slice"],
                    "estimated_sample_grads": plan["shards"][str(k)]["work"]["retrain_grads"],
                    "model_before": before.get(k),
                    "model_after": after.get(k),
                    "seconds": timings.get(k, 0.0),
                }
                for k in shards
                if str(k) in plan["shards"]
            ]
            self._update_receipt(
                rid,
                {"batch_id": plan["batch_id"], "policy": plan["policy"], "shards": touched, "batch_seconds": seconds,
                 "applied_at": now(), "state": state},
            )

    def _update_receipt(self, request_id: str, fields: dict[str, Any]) -> None:
        request = self._request(request_id)
        receipt = self.ledger.receipt(request_id) or {
            "request_id": request_id,
            "ids": request.ids,
            "idempotency_key_sha256": request.key_sha256,
            "subject_sha256": request.subject_sha256,
            "submitted_at": request.submitted_at,
        }
        receipt.update(fields)
        receipt["state"] = self.ledger.state(request_id)
        receipt["history"] = [{"state": e["state"], "at": e["at"]} for e in self.ledger.events(request_id)]
        self.ledger.write_receipt(request_id, receipt)

    def _test_split(self) -> tuple[torch.Tensor, np.ndarray]:
        if self._test is None:
            x, y = to_tensors(self.store.read_test(), self.store.info)
            self._test = (x, y.numpy())
        return self._test

    def summary(self) -> dict[str, Any]:
        states = Counter(self.ledger.states().values())
        return {"requests": dict(states), "approximate_shards": self.approximate_shards(), "batches": len(self.ledger.batches())}


def _key(batch_id: str, shard: int) -> str:
    return hashlib.sha256(f"overlay|{batch_id}|{shard}".encode()).hexdigest()
