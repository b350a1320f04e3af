"""The pure planner and the plan's stored form: no store, no Ray."""

import datetime as dt
import json

import numpy as np
import pytest

from raysisa.config import CoordinatorConfig
from raysisa.coordinator.ledger import Request
from raysisa.coordinator.plan import PLAN_FORMAT, BatchPlan, IndexRows, ShardFacts, locate, plan_batch
from raysisa.coordinator.policy import ApplyMethod, Defer, RetrainFromSlice, decide
from raysisa.coordinator.records import OverlayMeta, Receipt, ShardReceipt, Transition
from raysisa.errors import StoreError
from raysisa.sisa.cost import retrain_cost

SHARDS, SLICES, SAMPLES, EPOCHS = 100, 4, 200_000, 6
T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def stamp(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def meta(**kw):
    base = dict(batch_ids=("b0",), request_ids=("r" * 32,), ids=(1, 2), updates=2, method="neggrad_plus", args={"epochs": 2},
                ohs_slices=1, ohs_epochs=1, base="k" * 64, model_sha256="s" * 64, exact_accuracy=90.0, accuracy=88.5,
                created_at=stamp(0))
    return OverlayMeta(**{**base, **kw})


@pytest.fixture(scope="module")
def world():
    """A run of 200,000 samples over 100 shards x 4 slices, 5% of them already deleted,
    and 10,000 requests of 1-7 ids (ids may repeat across requests)."""
    rng = np.random.default_rng(7)
    shard_of = rng.integers(0, SHARDS, SAMPLES)
    slice_of = rng.integers(1, SLICES + 1, SAMPLES)
    dead = rng.random(SAMPLES) < 0.05
    live = np.flatnonzero(~dead)
    rows = IndexRows(live.astype(np.int64), shard_of[live].astype(np.int64), slice_of[live].astype(np.int64))
    sizes = np.zeros((SHARDS, SLICES), np.int64)
    np.add.at(sizes, (rows.shards, rows.slices - 1), 1)
    # shards 50.. lose samples of their last two slices only: light work there, heavy elsewhere
    pool = np.flatnonzero((shard_of < 50) | (slice_of >= 3))
    requests = []
    for n in range(10_000):
        ids = sorted({int(i) for i in rng.choice(pool, rng.integers(1, 8))})
        requests.append(Request(f"{n:032x}", ids, stamp(n * 0.01), "0" * 64))
    return {"rows": rows, "sizes": sizes, "requests": requests, "shard_of": shard_of, "slice_of": slice_of, "dead": dead}


def facts(world, **kw):
    base = dict(slice_sizes={k: world["sizes"][k].tolist() for k in range(SHARDS)}, epochs=EPOCHS,
                stale={7: [2, 3, 4]}, overlays={7: meta()}, throughput={3: 1000.0}, ohs_budget=0.5, ohs_epochs=1)
    return ShardFacts(**{**base, **kw})


def test_planning_ten_thousand_requests_over_a_hundred_shards(world):
    config = CoordinatorConfig(policy="hs", rho=0.5, max_request_ids=6, defer_seconds=600)
    now = (T0 + dt.timedelta(seconds=120)).timestamp()
    requests = world["requests"]
    plan = plan_batch(requests, world["rows"], facts(world), config, batch_id="b1", created_at=stamp(120), now=now)

    # the policy refused exactly the requests over the limit, and took the others in order
    too_big = [r.request_id for r in requests if len(r.ids) > 6]
    assert too_big and [r.request_id for r in plan.rejected] == too_big
    assert all("max_request_ids" in r.reason for r in plan.rejected)
    accepted = [r for r in requests if len(r.ids) <= 6]
    assert plan.requests == tuple(r.request_id for r in accepted)

    # every live id of an accepted request is in exactly one shard plan: its own shard's
    shard_of, slice_of, dead = world["shard_of"], world["slice_of"], world["dead"]
    wanted = {i for r in accepted for i in r.ids if not dead[i]}
    planned = [i for entry in plan.shards for i in entry.ids]
    assert len(planned) == len(set(planned)) and set(planned) == wanted
    assert all(shard_of[i] == entry.shard for entry in plan.shards for i in entry.ids)
    # the shards are exactly the affected ones, in order
    assert [e.shard for e in plan.shards] == sorted({int(shard_of[i]) for i in wanted})

    oldest: dict[int, float] = {}
    for r in accepted:
        for i in r.ids:
            if not dead[i]:
                k = int(shard_of[i])
                oldest[k] = min(oldest.get(k, np.inf), dt.datetime.fromisoformat(r.submitted_at).timestamp())
    for entry in plan.shards:
        work, k = entry.work, entry.shard
        first = min(int(slice_of[i]) for i in entry.ids)
        assert work.first_slice == (min(first, 2) if k == 7 else first)  # shard 7 misses checkpoints from slice 2
        assert work.shard == entry.decision.shard == k and work.ids == len(entry.ids)
        after = world["sizes"][k] - np.bincount([slice_of[i] - 1 for i in entry.ids], minlength=SLICES)
        assert work.full_grads == retrain_cost(after.tolist(), EPOCHS, 1)
        assert work.retrain_grads == retrain_cost(after.tolist(), EPOCHS, work.first_slice)
        assert work.age_seconds == pytest.approx(now - oldest[k])
        assert work.approximate == (k == 7) and work.throughput == (1000.0 if k == 3 else None)
    assert plan.shard(7).work.approx_updates == 2 and plan.shard(7).work.drift == pytest.approx(1.5)
    # one decision per shard, the policy's
    assert [e.decision for e in plan.shards] == decide([e.work for e in plan.shards], config)
    kinds = {type(e.decision) for e in plan.shards}
    assert kinds == {RetrainFromSlice, Defer}, kinds  # light shards retrain, heavy ones wait for more

    # what it logs reads back as the same plan
    assert BatchPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan

    # each request's placement: the shards of its live ids, and the ids deleted before
    placements = locate(plan, accepted)
    deferred = {e.shard for e in plan.shards if isinstance(e.decision, Defer)}
    for r in accepted[:2000]:
        p = placements[r.request_id]
        assert p.shards == tuple(sorted({int(shard_of[i]) for i in r.ids if not dead[i]}))
        assert p.elsewhere == tuple(i for i in r.ids if dead[i])
        assert p.deferred == bool(deferred & set(p.shards))


def test_a_plan_of_nothing_live_has_no_shards(world):
    gone = [i for i in range(SAMPLES) if world["dead"][i]][:3]
    requests = [Request("a" * 32, gone, stamp(0), "0" * 64)]
    plan = plan_batch(requests, world["rows"], facts(world), CoordinatorConfig(), batch_id="b", created_at=stamp(0), now=0.0)
    assert plan.requests == ("a" * 32,) and plan.shards == () and plan.rejected == ()
    assert locate(plan, requests)["a" * 32].elsewhere == tuple(gone)
    empty = plan_batch([], world["rows"], facts(world), CoordinatorConfig(), batch_id="b", created_at=stamp(0), now=0.0)
    assert empty.requests == () and empty.shards == ()


def small_plan():
    rows = IndexRows(np.array([10, 11, 12]), np.array([0, 0, 1]), np.array([1, 2, 1]))
    requests = [Request("a" * 32, [10, 12], stamp(0), "0" * 64), Request("b" * 32, [11], stamp(1), "0" * 64)]
    facts_ = ShardFacts(slice_sizes={0: [5, 5], 1: [5, 5]}, epochs=2)
    return plan_batch(requests, rows, facts_, CoordinatorConfig(policy="ohs", rho=0.0, max_request_ids=1),
                      batch_id="b1", created_at=stamp(2), now=10.0)


@pytest.mark.parametrize(
    ("mangle", "needle"),
    [
        (lambda d: d.pop("format_version"), "no format_version"),
        (lambda d: d.update(format_version=99), "format 99"),
        (lambda d: d.pop("batch_id"), "no 'batch_id'"),
        (lambda d: d.update(requests="abc"), "'requests' should be a list"),
        (lambda d: d["shards"]["0"]["decision"].update(kind="explode"), "unknown decision kind 'explode'"),
        (lambda d: d["shards"]["0"]["work"].update(first_slice="x"), "'first_slice' should be an integer"),
        (lambda d: d["shards"]["0"].update(ids=[1, "2"]), "'ids[]' should be an integer"),
        (lambda d: d["shards"].update(x={}), "shard key 'x'"),
        (lambda d: d["shards"]["0"]["decision"].update(shard=1), "another shard"),
        (lambda d: d["rejected"].append({"kind": "reject"}), "no 'request_id'"),
    ],
)
def test_a_malformed_plan_is_a_store_error_naming_it(mangle, needle):
    data = json.loads(json.dumps(small_plan().to_dict()))
    mangle(data)
    with pytest.raises(StoreError, match="batch plan ledger/batches/b1.json") as error:
        BatchPlan.from_dict(data, "batch plan ledger/batches/b1.json")
    assert needle in str(error.value)


def test_the_stored_plan_keeps_its_fields():
    plan = small_plan()
    data = plan.to_dict()
    assert data["format_version"] == PLAN_FORMAT and data["requests"] == ["b" * 32]
    assert data["rejected"] == [{"kind": "reject", "request_id": "a" * 32, "reason": "2 ids: more than max_request_ids (1)"}]
    assert list(data["shards"]) == ["0"] and data["shards"]["0"]["ids"] == [11]
    assert data["shards"]["0"]["decision"]["kind"] == "update" and data["shards"]["0"]["work"]["first_slice"] == 2


def test_overlay_meta_and_receipts_round_trip():
    stored = {**meta().to_dict(), "format_version": 1, "shard": 3, "blob_sha256": "x", "manifest_sha256": "y"}
    assert OverlayMeta.from_dict(stored) == meta()  # the checkpoint store's own fields are not part of it
    for key in ("updates", "ids", "request_ids", "method", "accuracy", "exact_accuracy", "model_sha256"):
        assert key in meta().to_dict()  # what `inspect` reads
    with pytest.raises(StoreError, match="overlay manifest of shard 3 is malformed: it has no 'updates'"):
        OverlayMeta.from_dict({k: v for k, v in stored.items() if k != "updates"}, "overlay manifest of shard 3")

    shard = ShardReceipt(ApplyMethod(3, "neggrad_plus", {"epochs": 2}, 1, "heavy"), 2, 500, {"key": "a"}, None, 1.5)
    receipt = Receipt("a" * 32, (1, 2), "k" * 64, None, stamp(0), "pending")
    receipt = receipt.with_transition(Transition("applied_approximate", stamp(1)), batch_id="b1", policy="ohs", shards=(shard,))
    receipt = receipt.with_transition(Transition("exact", stamp(2)), exact_at=stamp(2))
    data = receipt.to_dict()
    assert data["state"] == "exact" and [h["state"] for h in data["history"]] == ["applied_approximate", "exact"]
    assert data["shards"] == [{"shard": 3, "kind": "update", "method": "neggrad_plus", "args": {"epochs": 2}, "ohs_slices": 1,
                               "reason": "heavy", "first_slice": 2, "estimated_sample_grads": 500,
                               "model_before": {"key": "a"}, "model_after": None, "seconds": 1.5}]
    assert "decision" not in data and "applied_at" not in data  # fields that do not apply are left out
    assert Receipt.from_dict(json.loads(json.dumps(data))) == receipt
    # a replayed transition replaces its record rather than adding one
    again = receipt.with_transition(Transition("exact", stamp(3)), exact_at=stamp(3))
    assert [h.at for h in again.history] == [stamp(1), stamp(3)]
