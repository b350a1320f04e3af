"""The coordinator in this process (LocalPool): decisions, exactly-once, exactness, receipts."""

import pytest

from raysisa import LocalPool, SisaRun, StoreConfig, inspect, parse_config, train
from raysisa.config import CoordinatorConfig
from raysisa.coordinator import register_subjects, requests, status, submit
from raysisa.coordinator.ledger import Ledger, digest
from raysisa.coordinator.policy import Defer, RetrainFromSlice
from raysisa.coordinator.service import Coordinator
from raysisa.errors import InvalidIdsError
from raysisa.evaluation.scenarios import train_labels
from raysisa.store import ObjectStore, RunStore
from tests.sisa_checks import assert_no_residue, model_shas, pick

QUICK = dict(window_seconds=0, idle_seconds=None)
ALWAYS_RETRAIN = CoordinatorConfig(policy="hs", rho=1.0, **QUICK)
ALWAYS_UPDATE = CoordinatorConfig(policy="ohs", rho=0.0, ohs={"budget": 0.5}, **QUICK)


@pytest.fixture
def run(trained):
    return trained


def reference(tmp_path, job, ids):
    store = StoreConfig(uri=str(tmp_path / "reference"))
    train(job, store, exclude_ids=ids, pool=LocalPool())
    return store


def states(store):
    return {r["request_id"]: r["state"] for r in requests(store)}


def test_light_requests_retrain_exactly(tmp_path, tiny_job, run):
    ids = pick(run, [(0, 3, 0), (2, 2, 1)])
    ack = submit(run, ids, key="light")
    coordinator = Coordinator(run, ALWAYS_RETRAIN, LocalPool())
    assert coordinator.step() == "batch"
    assert states(run) == {ack.request_id: "exact"}
    receipt = status(run, ack.request_id)["receipt"]
    assert [s["kind"] for s in receipt["shards"]] == ["retrain", "retrain"]
    assert [s["first_slice"] for s in receipt["shards"]] == [3, 2]
    assert all(s["model_before"]["key"] != s["model_after"]["key"] for s in receipt["shards"])
    assert [h["state"] for h in receipt["history"]] == ["applied_exact", "exact"] and receipt["exact_at"]
    assert model_shas(run) == model_shas(reference(tmp_path, tiny_job, ids))
    assert_no_residue(run, ids)


def test_heavy_requests_update_then_become_exact(tmp_path, tiny_job, run):
    ids = pick(run, [(1, 1, 0), (1, 2, 3)])
    ack = submit(run, ids)
    coordinator = Coordinator(run, ALWAYS_UPDATE, LocalPool())
    coordinator.step()
    assert states(run) == {ack.request_id: "applied_approximate"}
    shards = {s["shard"]: s for s in inspect(run)["shards"]}
    assert shards[1]["state"] == "approximate" and shards[1]["approximate"]["pending_ids"] == 2
    assert shards[0]["state"] == shards[2]["state"] == "exact"
    # the overlay stands in for shard 1: evaluation scores it, as its manifest recorded
    overlay = RunStore(run).overlays.list(1)[0]
    assert SisaRun(run).served_refs()[1] == overlay
    assert SisaRun(run).evaluate().shard_accuracy[1] == pytest.approx(RunStore(run).overlays.manifest(overlay)["accuracy"])
    receipt = status(run, ack.request_id)["receipt"]
    [touched] = receipt["shards"]
    assert touched["kind"] == "update" and touched["method"] == "neggrad_plus" and touched["ohs_slices"] > 0
    assert touched["model_after"]["kind"] == "approximate"
    # the deleted samples' data is gone at once, and with it every checkpoint trained on it
    store = RunStore(run)
    assert not set(ids) & set(store.read_index()["id"].to_pylist())
    assert all(not set(ids) & set(store.checkpoints.manifest(r)["lineage"]["ids"]) for r in store.checkpoints.list())

    assert coordinator.restore_exactness() == [1]
    assert states(run) == {ack.request_id: "exact"}
    assert inspect(run)["shards"][1]["state"] == "exact" and not RunStore(run).overlays.list()
    assert model_shas(run) == model_shas(reference(tmp_path, tiny_job, ids))
    assert_no_residue(run, ids)


class CrashOnce:
    """Raise on the first call of ``target`` (a simulated crash at that point)."""

    def __init__(self, obj, name):
        self.obj, self.name, self.original = obj, name, getattr(obj, name)
        setattr(obj, name, self)

    def __call__(self, *args, **kwargs):
        setattr(self.obj, self.name, self.original)
        raise KeyboardInterrupt(f"crash in {self.name}")


CRASHES = [
    # (path, object holding the step, the step): crash before it completes
    ("update", "overlays", "put"),  # mid-DPUS: nothing persisted yet
    ("update", "run", "commit_deletion"),  # the overlay is written, the data not yet deleted
    ("update", "ledger", "finish_plan"),  # everything done but the plan's done marker
    ("retrain", "run", "commit_deletion"),
    ("retrain", "run", "retrain_shards"),  # the data is deleted, no shard retrained
    ("retrain", "ledger", "finish_plan"),
]


@pytest.mark.parametrize(("path", "holder", "step"), CRASHES)
def test_a_crash_mid_batch_resumes_and_applies_everything_once(tmp_path, tiny_job, run, path, holder, step):
    config = ALWAYS_UPDATE if path == "update" else ALWAYS_RETRAIN
    ids = [pick(run, [(0, 2, 0)]), pick(run, [(1, 1, 1), (2, 3, 0)])]
    acks = [submit(run, i) for i in ids]
    first = Coordinator(run, config, LocalPool())
    CrashOnce({"overlays": first.store.overlays, "run": first.run, "ledger": first.ledger}[holder], step)
    with pytest.raises(KeyboardInterrupt):
        first.step()
    assert len(Ledger(RunStore(run).objects).unfinished_plans()) == 1

    restarted = Coordinator(run, config, LocalPool())  # a fresh process: state comes from the store
    assert restarted.step() == "resumed"
    overlays = RunStore(run).overlays
    for ref in overlays.list():  # each shard updated exactly once, by that one batch
        meta = overlays.manifest(ref)
        assert meta["updates"] == 1 and len(meta["batch_ids"]) == 1
    assert len(overlays.list()) == (3 if path == "update" else 0)
    restarted.run_until_settled(timeout=300)
    ledger = Ledger(RunStore(run).objects)
    for ack in acks:
        assert ledger.state(ack.request_id) == "exact"
        assert len([e for e in ledger.events(ack.request_id) if e["state"].startswith("applied")]) == 1
    assert not ledger.unfinished_plans() and len(ledger.batches()) == 1
    tombstones = RunStore(run).tombstones()["id"].to_pylist()
    assert sorted(tombstones) == sorted(i for group in ids for i in group)  # each id deleted once
    everything = [i for group in ids for i in group]
    assert model_shas(run) == model_shas(reference(tmp_path, tiny_job, everything))
    assert_no_residue(run, everything)


def test_ohs_fine_tuning_recovers_accuracy_over_plain_dpus(tmp_path):
    job = parse_config({}, ["data.limit=600", "sharding.num_shards=3", "sharding.num_slices=3", "train.epochs=12", "model.width=16"])
    dpus = {"method": "neggrad_plus", "args": {"epochs": 3, "lr": 0.05, "beta": 0.7, "batch_size": 32}}
    accuracy = {}
    for policy in ("hs", "ohs"):
        store = StoreConfig(uri=str(tmp_path / policy))
        train(job, store, pool=LocalPool())
        ids, labels = train_labels(SisaRun(store))
        submit(store, ids[labels == 3])  # a class-wise burst: every shard, heavy
        config = CoordinatorConfig(policy=policy, rho=0.0, dpus=dpus, ohs={"lr_factor": 1.0, "budget": 0.5}, **QUICK)
        Coordinator(store, config, LocalPool()).step()
        assert {s["state"] for s in inspect(store)["shards"]} == {"approximate"}
        accuracy[policy] = SisaRun(store).evaluate("mean_softmax").accuracy
    assert accuracy["ohs"] > accuracy["hs"], accuracy


def test_cost_estimates_match_measured_work(tmp_path):
    job = parse_config({}, ["sharding.num_shards=2", "sharding.num_slices=4", "train.epochs=20", "model.width=16"])
    store = StoreConfig(uri=str(tmp_path / "cost"))
    train(job, store, pool=LocalPool())
    coordinator = Coordinator(store, ALWAYS_RETRAIN, LocalPool())
    for where in ([(0, 2, 0)], [(1, 1, 0)], [(0, 4, 3)]):
        ack = submit(store, pick(store, where))
        plan = coordinator.plan(coordinator.pending())
        [entry] = plan.shards
        coordinator.execute(plan)
        retrained = [s for s in SisaRun(store).store.checkpoints.list(entry.shard) if s.slice >= entry.work.first_slice]
        manifests = [SisaRun(store).store.checkpoints.manifest(r) for r in retrained]
        measured_grads = sum(m["sample_grads"] for m in manifests)
        measured_seconds = sum(m["train_cpu_seconds"] for m in manifests)
        work = entry.work
        assert work.retrain_grads == measured_grads  # the sample-gradient estimate is exact
        estimate = work.retrain_grads / work.throughput
        # stated tolerance: within a factor of 2 of the measured CPU seconds
        assert 0.5 * measured_seconds <= estimate <= 2.0 * measured_seconds, (estimate, measured_seconds)
        assert status(store, ack.request_id)["state"] == "exact"


def test_bad_input_is_refused_before_anything_is_logged(run):
    ledger = Ledger(RunStore(run).objects)
    for ids, needle in (([], "no sample ids"), ([-1], "negative"), (["x"], "not integers"), ([77_777_777], "never existed")):
        with pytest.raises(InvalidIdsError, match=needle):
            submit(run, ids)
    with pytest.raises(InvalidIdsError, match="either sample ids or a data-subject key"):
        submit(run)
    with pytest.raises(InvalidIdsError, match="unknown data subject"):
        submit(run, subject="nobody")
    assert ledger.request_ids() == []
    good = pick(run, [(0, 1, 0)])
    first = submit(run, good, key="same")
    assert submit(run, good, key="same").duplicate
    with pytest.raises(InvalidIdsError, match="already used"):
        submit(run, pick(run, [(0, 1, 1)]), key="same")
    assert ledger.request_ids() == [first.request_id]


def test_already_deleted_ids_are_an_exact_no_op(run):
    ids = pick(run, [(2, 3, 0)])
    coordinator = Coordinator(run, ALWAYS_RETRAIN, LocalPool())
    submit(run, ids)
    coordinator.step()
    listing = {k: v for k, v in RunStore(run).listing().items() if not k.startswith(("ledger/", "receipts/"))}
    again = submit(run, ids)
    coordinator.step()
    assert states(run)[again.request_id] == "exact"
    assert {k: v for k, v in RunStore(run).listing().items() if not k.startswith(("ledger/", "receipts/"))} == listing


def test_oversized_requests_are_rejected_and_young_heavy_work_deferred(run):
    big = submit(run, pick(run, [(0, 1, 0), (0, 1, 1), (0, 1, 2)]))
    small = submit(run, pick(run, [(1, 1, 0)]))
    config = CoordinatorConfig(policy="hs", rho=0.0, max_request_ids=2, defer_seconds=3600, **QUICK)
    coordinator = Coordinator(run, config, LocalPool())
    coordinator.step()
    assert states(run) == {big.request_id: "rejected", small.request_id: "pending"}
    receipt = status(run, big.request_id)["receipt"]
    assert receipt["decision"] == "rejected" and "max_request_ids (2)" in receipt["reason"]
    assert [h["state"] for h in receipt["history"]] == ["rejected"]
    ledger = Ledger(RunStore(run).objects)
    [batch] = ledger.batches()
    plan = ledger.plan(batch)
    assert [r.request_id for r in plan.rejected] == [big.request_id] and plan.requests == (small.request_id,)
    assert [type(s.decision) for s in plan.shards] == [Defer] and plan.shards[0].ids == tuple(small_ids(run, small))
    assert status(run, small.request_id)["receipt"] is None  # nothing done for it yet
    assert pick(run, [(1, 1, 0)]) == small_ids(run, small)  # deferred: the data is still there


def small_ids(run, ack):
    return Ledger(RunStore(run).objects).request(ack.request_id).ids


def test_the_debt_bound_restores_exactness(tmp_path, tiny_job, run):
    config = CoordinatorConfig(policy="dpus", max_approx_updates=1, **QUICK)
    coordinator = Coordinator(run, config, LocalPool())
    ids = pick(run, [(0, 1, 0)])
    ack = submit(run, ids)
    assert coordinator.step() == "batch" and states(run)[ack.request_id] == "applied_approximate"
    assert coordinator.step() == "restored" and states(run)[ack.request_id] == "exact"
    assert model_shas(run) == model_shas(reference(tmp_path, tiny_job, ids))


def test_idle_time_restores_exactness(run):
    config = CoordinatorConfig(policy="dpus", window_seconds=0, idle_seconds=0)
    coordinator = Coordinator(run, config, LocalPool())
    ack = submit(run, pick(run, [(1, 2, 0)]))
    coordinator.step()
    assert states(run)[ack.request_id] == "applied_approximate"
    assert coordinator.step() == "restored" and states(run)[ack.request_id] == "exact"


def test_requests_by_data_subject(run):
    ids = pick(run, [(0, 2, 2), (1, 3, 1)])
    register_subjects(run, {"subject-42": ids})
    ack = submit(run, subject="subject-42", key="gdpr-1")
    assert Ledger(RunStore(run).objects).request(ack.request_id).ids == sorted(ids)
    Coordinator(run, ALWAYS_RETRAIN, LocalPool()).step()
    assert states(run)[ack.request_id] == "exact"
    assert Ledger(RunStore(run).objects).subject_ids("subject-42").tolist() == []  # the mapping is gone too
    assert status(run, ack.request_id)["receipt"]["subject_sha256"] == digest("subject-42")  # hashed, never the key


def test_the_work_of_a_shard_serving_an_overlay_starts_at_its_earliest_missing_checkpoint(run, tiny_job):
    from raysisa.sisa.cost import retrain_cost

    coordinator = Coordinator(run, ALWAYS_UPDATE, LocalPool())
    submit(run, pick(run, [(1, 1, 0)]))
    coordinator.step()  # an update: shard 1 serves an overlay, its checkpoints 1..3 are purged
    assert SisaRun(run).pending_work()[1][:2] == [1, 2]
    later = pick(run, [(1, 3, 0)])
    submit(run, later)
    plan = coordinator.plan(coordinator.pending())
    work = plan.shard(1).work
    sizes = RunStore(run).refresh().slice_sizes(1)
    sizes[2] -= 1  # the planned deletion
    assert work.first_slice == 1  # not 3: retraining this shard starts where its exact checkpoints end
    assert work.retrain_grads == retrain_cost(sizes, tiny_job.train.epochs, 1) == work.full_grads
    assert work.approximate and work.approx_updates == 1 and work.drift is not None


def test_bookkeeping_reads_no_history(run, monkeypatch):
    """Polls, planning, recording and receipts read the ledger's snapshot and inbox, never
    a listing of every request, event or plan (which would grow with history)."""
    coordinator = Coordinator(run, ALWAYS_RETRAIN, LocalPool())
    for where in ([(0, 1, 0)], [(1, 1, 0)], [(2, 1, 0)]):  # some history first
        submit(run, pick(run, where))
        assert coordinator.step() == "batch"
    listed = []
    original = ObjectStore.list
    monkeypatch.setattr(ObjectStore, "list", lambda self, prefix="": listed.append(prefix) or original(self, prefix))

    def no_history(self, request_id):
        raise AssertionError("a receipt re-read the request's event history")

    monkeypatch.setattr(Ledger, "events", no_history)
    ack = submit(run, pick(run, [(0, 2, 0), (1, 3, 0)]), key="late")
    assert coordinator.step() == "batch"
    rows = requests(run)
    assert [r["state"] for r in rows] == ["exact"] * 4 and rows[-1]["request_id"] == ack.request_id and rows[-1]["ids"] == 2
    ledger_listings = {p for p in listed if p.startswith("ledger")}
    assert ledger_listings == {"ledger/open", "ledger/inbox"}, ledger_listings
    receipt = Ledger(RunStore(run).objects).read_receipt(ack.request_id)
    assert [h.state for h in receipt.history] == ["applied_exact", "exact"] and receipt.exact_at == receipt.history[-1].at
    assert [s.shard for s in receipt.shards] == [0, 1] and {type(s.decision) for s in receipt.shards} == {RetrainFromSlice}
    assert not RunStore(run).objects.list("ledger/inbox")  # the snapshot holds every request now
