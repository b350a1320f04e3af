"""The coordinator: from logged deletion requests to unlearned shards, exactly once.

:class:`Coordinator` is a plain class; :mod:`raysisa.coordinator.actor` runs it in a
named, detached Ray actor. Each :meth:`Coordinator.step` that has work takes the store's
writer lease (or returns ``busy`` when another writer holds it), finishes any transaction a
crash interrupted, and then:

1. finishes any batch plan a crash left unfinished;
2. once the oldest pending request has waited ``window_seconds``, plans a batch
   (:func:`~raysisa.coordinator.plan.plan_batch`, pure: the policy screens the requests,
   estimates each affected shard's work and decides it), and logs the
   :class:`~raysisa.coordinator.plan.BatchPlan` *before* anything executes;
3. executes the plan (idempotently, so a restart simply executes it again), by the type
   of each shard's decision:
   a. :class:`~raysisa.coordinator.policy.ApplyMethod`: DPUS (+ OHS) in the shard's
      worker, then the result is written as the shard's overlay — skipped when the overlay
      already records this batch;
   b. the data of every decided id is deleted in one transaction (partitions, index,
      tombstones committed at once), and checkpoints trained on it are purged;
   c. :class:`~raysisa.coordinator.policy.RetrainFromSlice`: the shard is retrained from
      its earliest affected slice; :class:`~raysisa.coordinator.policy.Defer`: nothing;
4. records each request's new state, writes its receipt (built from the plan in memory)
   and the ledger snapshot, then marks the plan done;
5. when idle for ``idle_seconds``, or when a shard hits the debt bound, restores the
   exactness of approximate shards by SISA retraining, then drops their overlays and
   marks the requests they carried exact; applied requests a crash left unmarked are
   marked (after retraining any shard they still wait for).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from raysisa import telemetry
from raysisa.config import CoordinatorConfig, StoreConfig
from raysisa.coordinator.ledger import Ledger, LedgerView, Request, now, parse_time
from raysisa.coordinator.plan import (
    BatchPlan,
    IndexRows,
    Placement,
    ShardFacts,
    ShardPlan,
    flat_ids,
    locate,
    new_batch_id,
    plan_batch,
)
from raysisa.coordinator.policy import ApplyMethod, Defer, RetrainFromSlice, debt_reason, screen
from raysisa.coordinator.records import OverlayMeta, Receipt, ShardReceipt, Transition
from raysisa.crashpoints import crash_point
from raysisa.data.samples import take_ids
from raysisa.data.tensors import Images
from raysisa.errors import StaleStateError, StoreBusyError
from raysisa.evaluation.metrics import accuracy
from raysisa.methods import get_method
from raysisa.quant import is_quantized
from raysisa.sisa.pool import ShardPool
from raysisa.sisa.run import SisaRun
from raysisa.sisa.shard import load_model
from raysisa.sisa.tasks import ApplyUpdate, MethodCall, UpdateResult
from raysisa.store import CheckpointRef, tensors_sha256
from raysisa.training import derive_seed, predict_proba

__all__ = ["Coordinator"]

log = logging.getLogger(__name__)
APPLIED = ("applied_approximate", "applied_exact")


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
        self.ledger = Ledger(self.store.objects)  # it keeps the requests it has read (they never change)
        self.config = config
        self.pool = pool
        self.last_activity = time.time()
        self._test: tuple[torch.Tensor, np.ndarray] | None = None
        self.store.manifest()  # fails clearly when there is no run
        # approximate updates per shard (the debt), published with every look at the ledger
        self._debt = {shard: self._overlay_meta(ref).updates for shard, ref in self._overlays().items()}

    # -- the loop ---------------------------------------------------------------------------
    def step(self) -> str:
        """Do the next piece of work; returns what was done: ``resumed``, ``batch``,
        ``restored``, ``settled`` (applied requests marked exact), or ``waiting`` / ``idle``
        / ``busy`` (another writer holds the store)."""
        action, _ = self._next()
        if action in ("waiting", "idle"):
            return action
        try:
            with self.run.writer("coordinator", wait=0) as lease:
                action, arg = self._next()  # again under the lease: another writer may have done it
                if action == "resumed":
                    # a batch its runner did not finish (it died): its shard actors may have
                    # died mid-write too; the listing sweep removes what they left
                    self.store.sweep(lease)
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
        """What :meth:`step` should do now (reads only: open plans, the ledger's snapshot)."""
        plans = self.ledger.unfinished_plans()
        if plans:
            return "resumed", plans[0]
        view = self.ledger.view()
        self._report(view)
        pending = view.in_state("pending")
        if pending:
            oldest = min(parse_time(e.submitted_at) for e in pending)
            if time.time() - oldest >= self.config.window_seconds or len(pending) >= self.config.max_batch:
                return "batch", [self.ledger.request(e.request_id) for e in pending[: self.config.max_batch]]
            return "waiting", None
        approximate = self.approximate_shards()
        if not approximate:
            # applied requests a crash left unmarked: retrain what they wait for, or mark them
            open_ = self._open_requests(view)
            if not open_:
                return "idle", None
            held = set().union(*self._shards_of(open_).values())
            waiting = set(self.run.pending_work(shards=held))
            return ("restored", sorted(waiting)) if waiting else ("settled", None)
        indebted = self._debt_shards()
        if indebted:
            return "restored", indebted
        idle = self.config.idle_seconds
        if idle is not None and time.time() - self.last_activity >= idle:
            return "restored", approximate
        return "idle", None

    def _report(self, view: LedgerView) -> None:
        """Publish what the ledger says now: open requests by state, the oldest one's age."""
        open_ = [e for e in view.entries.values() if e.state in ("pending", *APPLIED)]
        oldest = min((parse_time(e.submitted_at) for e in open_), default=None)
        age = 0.0 if oldest is None else time.time() - oldest
        telemetry.ledger_read(self.ledger.run, Counter(e.state for e in open_), age, self.config.exact_deadline_seconds,
                              self.config.max_approx_updates)
        for shard, updates in self._debt.items():
            telemetry.shard_debt(self.ledger.run, shard, updates)

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

    def pending(self, view: LedgerView | None = None) -> list[Request]:
        """Pending requests, oldest first (from ``view``, else a fresh read of the ledger)."""
        view = self.ledger.view() if view is None else view
        return [self.ledger.request(e.request_id) for e in view.in_state("pending")]

    # -- planning ---------------------------------------------------------------------------
    def plan(self, requests: list[Request]) -> BatchPlan:
        """Decide every affected shard of a batch and log the plan (nothing executes yet)."""
        with self.run.writer("coordinator"):
            return self._plan(requests)

    def _plan(self, requests: list[Request]) -> BatchPlan:
        accepted, _ = screen(requests, self.config)
        index = self.store.read_index()
        wanted, _ = flat_ids(accepted)
        rows = IndexRows.of(take_ids(index, np.unique(wanted)))
        stamp = time.time()
        plan = plan_batch(
            requests, rows, self._facts(index, np.unique(rows.shards).tolist()), self.config,
            batch_id=new_batch_id(stamp), created_at=now(), now=stamp,
        )
        self.ledger.write_plan(plan)
        for entry in plan.shards:
            telemetry.shard_decision(self.ledger.run, plan.policy, entry.decision.kind)
        crash_point("batch.planned")
        log.info("batch %s: %d request(s), %d rejected, %d shard(s): %s", plan.batch_id, len(plan.requests),
                 len(plan.rejected), len(plan.shards), Counter(s.decision.kind for s in plan.shards))
        return plan

    def _facts(self, index: pa.Table, shards: list[int]) -> ShardFacts:
        """What planning needs to know of ``shards`` (the index, overlays, checkpoints)."""
        spec = self.store.spec
        slices = spec.sharding.num_slices + 1
        cells = index["shard"].to_numpy().astype(np.int64) * slices + index["slice"].to_numpy()
        sizes = np.bincount(cells, minlength=spec.sharding.num_shards * slices).reshape(-1, slices)[:, 1:]
        stale = self.run.pending_work(shards=shards)  # shards serving an overlay miss checkpoints from some slice on
        overlays = self._overlays()
        return ShardFacts(
            slice_sizes={k: sizes[k].tolist() for k in shards},
            epochs=spec.train.epochs,
            quantized=is_quantized(spec.model),
            stale=stale,
            overlays={k: self._overlay_meta(overlays[k]) for k in shards if k in overlays},
            throughput={k: self.throughput(k) for k in shards},
            ohs_budget=self._ohs_budget(),
            ohs_epochs=self._ohs_epochs(),
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
    def execute(self, plan: BatchPlan) -> None:
        """Carry out a logged plan; safe to repeat after a crash at any point."""
        with self.run.writer("coordinator"):
            self._execute(plan)

    def _execute(self, plan: BatchPlan) -> None:
        started = time.perf_counter()
        before = self._served_keys(decided_shards := [entry.shard for entry in plan.shards])
        overlays = self._overlays()
        updates: dict[int, tuple[ShardPlan, ApplyMethod]] = {}
        retrains: list[int] = []
        decided: list[tuple[int, ...]] = []
        for entry in plan.shards:
            match entry.decision:
                case ApplyMethod() as decision:  # a. direct updates, written as overlays (unless a replay finds them)
                    decided.append(entry.ids)
                    if not (entry.shard in overlays and plan.batch_id in self._overlay_meta(overlays[entry.shard]).batch_ids):
                        updates[entry.shard] = (entry, decision)
                case RetrainFromSlice():
                    decided.append(entry.ids)
                    retrains.append(entry.shard)
                case Defer():
                    pass
                case other:
                    raise TypeError(f"batch {plan.batch_id}: shard {entry.shard} has no executable decision: {other!r}")
        requests = [self.ledger.request(rid) for rid in plan.requests]
        placements = locate(plan, requests)
        timings: dict[int, float] = {}
        if updates:
            carried: dict[int, list[str]] = defaultdict(list)
            for rid, placement in placements.items():
                for shard in placement.shards:
                    carried[shard].append(rid)
            timings |= self._apply_updates(updates, plan.batch_id, carried)
        if decided:  # b. the data goes, and every checkpoint trained on it
            ids = np.fromiter((i for group in decided for i in group), np.int64)
            self.run.commit_deletion(ids, reason=f"batch {plan.batch_id}")  # sweeps too
        if retrains:  # c. exact shards retrain from their earliest affected slice
            for report in self.run.retrain_shards(self.pool, retrains):
                timings[report.shard] = timings.get(report.shard, 0.0) + report.seconds
            self._drop_overlays(retrains)
        crash_point("batch.retrained")
        self._record(plan, requests, placements, before, self._served_keys(decided_shards), timings, time.perf_counter() - started)
        crash_point("batch.recorded")
        self.ledger.finish_plan(plan.batch_id)  # after recording: a replay records again (idempotently)
        self.last_activity = time.time()
        self.settle()

    def _apply_updates(
        self, updates: dict[int, tuple[ShardPlan, ApplyMethod]], batch_id: str, carried: dict[int, list[str]]
    ) -> dict[int, float]:
        """DPUS (+ OHS) on each shard's served model, shards in parallel; each result becomes
        the shard's overlay. Returns the compute seconds per shard."""
        spec = self.store.spec
        bases = self.run.served_refs(shards=updates)
        at = self.run.at()
        ids = {shard: np.asarray(entry.ids, np.int64) for shard, (entry, _) in updates.items()}
        # seeded by what is forgotten, so a replayed plan (or the same request) draws the same
        seeds = {s: derive_seed(int(hashlib.sha256(np.sort(ids[s]).tobytes()).hexdigest()[:15], 16), s) for s in updates}
        self.pool.start(sorted(updates))
        handles = {
            shard: self.pool.submit(
                shard, ApplyUpdate(at, MethodCall(d.method, d.args), ids[shard], seeds[shard], bases[shard])
            )
            for shard, (_, d) in updates.items()
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
                ApplyUpdate(at, recover, ids[shard], seeds[shard], base=results[shard].tensors,
                            retain_slices=tuple(range(last - d.ohs_slices + 1, last + 1))),
            )
            for shard, (_, d) in updates.items()
            if d.ohs_slices
        }
        tuned: dict[int, UpdateResult] = {shard: self.pool.result(handle) for shard, handle in handles.items()}
        seconds = {}
        for shard, (_, decision) in updates.items():
            steps = [results[shard], *([tuned[shard]] if shard in tuned else [])]
            seconds[shard] = sum(r.seconds for r in steps)
            telemetry.update_applied(self.ledger.run, decision.method, sum(r.outcome.sample_grads for r in steps))
            self._write_overlay(shard, decision, steps[-1].tensors, bases[shard], ids[shard], batch_id, carried[shard],
                                tuned[shard].outcome.epochs if shard in tuned else 0)
            crash_point("batch.overlay")
        return seconds

    def _write_overlay(
        self, shard: int, decision: ApplyMethod, tensors: dict[str, torch.Tensor], base: CheckpointRef,
        ids: np.ndarray, batch_id: str, request_ids: list[str], ohs_epochs: int,
    ) -> None:
        spec = self.store.spec
        previous = self.overlay(shard)
        meta = self._overlay_meta(previous) if previous else None
        x, y = self._test_split()
        model = load_model(self.store, base)
        # the accuracy of the last exact model, against which drift is measured
        exact_accuracy = meta.exact_accuracy if meta else _accuracy(model, x, y)
        model.load_state_dict(tensors)
        ref = CheckpointRef(shard, spec.sharding.num_slices, _key(batch_id, shard), prefix=self.store.overlays.prefix)
        new = OverlayMeta(
            batch_ids=(*(meta.batch_ids if meta else ()), batch_id),
            request_ids=tuple(sorted({*(meta.request_ids if meta else ()), *request_ids})),
            ids=tuple(sorted({*(meta.ids if meta else ()), *(int(i) for i in ids)})),
            updates=(meta.updates if meta else 0) + 1,
            method=decision.method,
            args=dict(decision.args),
            ohs_slices=decision.ohs_slices,
            ohs_epochs=ohs_epochs,
            base=base.key,
            model_sha256=tensors_sha256(tensors),
            exact_accuracy=exact_accuracy,
            accuracy=_accuracy(model, x, y),
            created_at=now(),
        )
        self.store.overlays.put(ref, {f"model/{k}": v for k, v in tensors.items()}, new.to_dict())
        self._debt[shard] = new.updates
        if previous and previous != ref:
            self.store.overlays.delete([previous])

    # -- exactness --------------------------------------------------------------------------
    def _overlays(self) -> dict[int, CheckpointRef]:
        """The overlay each approximate shard serves (one listing)."""
        return {ref.shard: ref for ref in self.store.overlays.list()}  # sorted: the last one per shard wins

    def _overlay_meta(self, ref: CheckpointRef) -> OverlayMeta:
        return OverlayMeta.from_dict(self.store.overlays.manifest(ref), f"overlay manifest of {ref.short()}")

    def overlay(self, shard: int) -> CheckpointRef | None:
        refs = self.store.overlays.list(shard)
        return refs[-1] if refs else None

    def approximate_shards(self) -> list[int]:
        return sorted(self._overlays())

    def _debt_shards(self) -> list[int]:
        out = []
        for shard, ref in sorted(self._overlays().items()):
            meta = self._overlay_meta(ref)
            if debt_reason(meta.updates, meta.drift, self.config):
                out.append(shard)
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
        pending = self.run.pending_work(shards=shards)
        for shard in shards:
            if shard not in pending:
                self.store.overlays.delete(self.store.overlays.list(shard))
                self._debt[shard] = 0

    def _open_requests(self, view: LedgerView | None = None) -> list[str]:
        """Requests applied but not yet exact."""
        view = self.ledger.view() if view is None else view
        return [e.request_id for e in view.in_state(*APPLIED)]

    def _shards_of(self, request_ids: list[str]) -> dict[str, set[int]]:
        """The shards each request's deleted ids were in (from the tombstones)."""
        out: dict[str, set[int]] = {rid: set() for rid in request_ids}
        if not request_ids:
            return out
        ids, owner = flat_ids([self.ledger.request(rid) for rid in request_ids])
        tombstones = self.store.tombstones()
        dead, shard = tombstones["id"].to_numpy(), tombstones["shard"].to_numpy()
        order = np.argsort(dead, kind="stable")
        dead, shard = dead[order], shard[order]
        if len(dead):
            pos = np.minimum(np.searchsorted(dead, ids), len(dead) - 1)
            found = dead[pos] == ids
            width = int(shard.max()) + 1
            for pair in np.unique(owner[found] * width + shard[pos[found]]).tolist():
                out[request_ids[pair // width]].add(pair % width)
        return out

    def settle(self) -> None:
        """Mark exact every applied request whose shards no longer hold anything of it."""
        view = self.ledger.view()
        open_ = self._open_requests(view)
        if not open_:
            return
        held = self._shards_of(open_)
        # the shards these requests wait for: serving an overlay, or still missing checkpoints
        approximate = set(self.approximate_shards()) | set(self.run.pending_work(shards=set().union(*held.values())))
        done = [rid for rid, shards in held.items() if not approximate & shards]
        if not done:
            return
        for rid, recorded in zip(done, self.ledger.append(view, [(rid, "exact", None) for rid in done]), strict=True):
            request = self.ledger.request(rid)
            if request.subject_sha256:
                self.ledger.forget_subject(request.subject_sha256)
            if recorded is None:
                continue
            # the receipt written when it was applied, now with its exact transition
            receipt = self.ledger.read_receipt(rid) or self._receipt(request, self.ledger.events(rid))
            if recorded.new or receipt.exact_at is None:
                self.ledger.write_receipt(receipt.with_transition(Transition(recorded.state, recorded.at), exact_at=recorded.at))
        self.ledger.commit(view)  # after the receipts: a crash before it settles these requests again
        self._report(view)

    # -- bookkeeping ------------------------------------------------------------------------
    def _served_keys(self, shards: list[int]) -> dict[int, dict[str, Any]]:
        """The model each of ``shards`` serves (none while a shard is mid-retrain)."""
        try:
            refs = self.run.served_refs(shards=shards)
        except StaleStateError:  # a shard mid-retrain serves nothing yet
            return {}
        return {
            shard: {"kind": "approximate" if ref.prefix == "approx" else "exact", "slice": ref.slice, "key": ref.key}
            for shard, ref in refs.items()
        }

    @staticmethod
    def _receipt(request: Request, events: list[dict[str, Any]] | None = None) -> Receipt:
        """A request's receipt before this batch (a new one, unless ``events`` give its history)."""
        history = tuple(Transition(e["state"], e["at"]) for e in events or [])
        return Receipt(
            request_id=request.request_id,
            ids=tuple(request.ids),
            idempotency_key_sha256=request.key_sha256,
            subject_sha256=request.subject_sha256,
            submitted_at=request.submitted_at,
            state=history[-1].state if history else "pending",
            history=history,
        )

    def _record(
        self, plan: BatchPlan, requests: list[Request], placements: dict[str, Placement], before: dict[int, Any], after: dict[int, Any],
        timings: dict[int, float], seconds: float,
    ) -> None:
        """Log each request's new state and write its receipt, built from the plan and the
        transitions just recorded; then the ledger snapshot."""
        view = self.ledger.view()
        approximate = set(self.approximate_shards())
        applied = [r for r in requests if not placements[r.request_id].deferred]  # deferred ids: a later batch applies them
        earlier = self._shards_of([r.request_id for r in applied if placements[r.request_id].elsewhere])
        transitions: list[tuple[str, str, dict[str, Any] | None]] = [
            (reject.request_id, "rejected", {"batch_id": plan.batch_id, "reason": reject.reason}) for reject in plan.rejected
        ]
        for request in applied:
            shards = set(placements[request.request_id].shards) | earlier.get(request.request_id, set())
            state = "applied_approximate" if approximate & shards else "applied_exact"
            transitions.append((request.request_id, state, {"batch_id": plan.batch_id}))
        shard_receipts = {
            entry.shard: ShardReceipt(entry.decision, entry.work.first_slice, entry.work.retrain_grads,
                                      before.get(entry.shard), after.get(entry.shard), timings.get(entry.shard, 0.0))
            for entry in plan.shards
        }
        by_id = {r.request_id: r for r in requests}
        reasons = {reject.request_id: reject.reason for reject in plan.rejected}
        for (rid, state, _), recorded in zip(transitions, self.ledger.append(view, transitions), strict=True):
            if recorded is None:  # the request has moved past this state (a replay after it settled)
                continue
            if not recorded.new and self._recorded(rid, plan.batch_id, state):
                continue  # a replay: keep the receipt the first execution wrote (its models before and after)
            done = Transition(recorded.state, recorded.at)
            request = by_id.get(rid) or self.ledger.request(rid)
            if state == "rejected":
                receipt = self._receipt(request).with_transition(done, batch_id=plan.batch_id, decision="rejected", reason=reasons[rid])
            else:
                receipt = self._receipt(request).with_transition(
                    done, batch_id=plan.batch_id, policy=plan.policy, batch_seconds=seconds, applied_at=done.at,
                    shards=tuple(shard_receipts[k] for k in placements[rid].shards),
                )
            self.ledger.write_receipt(receipt)
        self.ledger.commit(view)  # after the receipts: a crash before it records this batch again
        self._report(view)

    def _recorded(self, request_id: str, batch_id: str, state: str) -> bool:
        """Whether the request's receipt already records ``state`` from batch ``batch_id``."""
        receipt = self.ledger.read_receipt(request_id)
        return receipt is not None and receipt.batch_id == batch_id and any(h.state == state for h in receipt.history)

    def _test_split(self) -> tuple[torch.Tensor, np.ndarray]:
        if self._test is None:
            pixels = self.store.read_test_pixels()
            self._test = (Images.of(pixels.images, self.store.info).normalized(), pixels.labels)
        return self._test

    def summary(self) -> dict[str, Any]:
        states = Counter(self.ledger.states().values())
        return {"requests": dict(states), "approximate_shards": self.approximate_shards(), "batches": len(self.ledger.batches())}


def _key(batch_id: str, shard: int) -> str:
    return hashlib.sha256(f"overlay|{batch_id}|{shard}".encode()).hexdigest()
