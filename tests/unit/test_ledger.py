import json

import numpy as np
import pytest

from raysisa.config import StoreConfig
from raysisa.coordinator.ledger import Ledger, digest, now
from raysisa.coordinator.plan import BatchPlan
from raysisa.coordinator.policy import Reject
from raysisa.errors import InvalidIdsError, StoreError
from raysisa.store import ObjectStore


@pytest.fixture
def ledger(tmp_path):
    return Ledger(ObjectStore(StoreConfig(uri=str(tmp_path))))


def test_submission_is_logged_and_idempotent(ledger):
    ack = ledger.submit(np.array([5, 3]), key="k1")
    assert ack.state == "pending" and not ack.duplicate and ack.ids == 2
    request = ledger.request(ack.request_id)
    assert request.ids == [3, 5] and request.key_sha256 == digest("k1")
    again = ledger.submit(np.array([3, 5]), key="k1")
    assert again.duplicate and again.request_id == ack.request_id
    assert ledger.request_ids() == [ack.request_id]
    with pytest.raises(InvalidIdsError, match="already used"):
        ledger.submit(np.array([9]), key="k1")
    other = ledger.submit(np.array([9]))  # no key: always a new request
    assert other.request_id != ack.request_id


def test_states_only_move_forward_and_are_recorded_once(ledger):
    rid = ledger.submit(np.array([1])).request_id
    assert ledger.state(rid) == "pending"
    assert ledger.record(rid, "applied_approximate", {"batch_id": "b1"}).new
    assert not ledger.record(rid, "applied_approximate", {"batch_id": "b2"}).new  # a replay changes nothing
    assert [e["batch_id"] for e in ledger.events(rid)] == ["b1"]
    ledger.record(rid, "exact")
    assert ledger.record(rid, "applied_exact") is None  # states never move back
    assert ledger.state(rid) == "exact" and ledger.states() == {rid: "exact"}
    assert [e["state"] for e in ledger.events(rid)] == ["applied_approximate", "exact"]


def plan(batch_id):
    return BatchPlan(batch_id, "2030-01-01T00:00:00.000+00:00", "ohs", ("a" * 32,), (Reject("b" * 32, "too big"),), ())


def test_plans_are_unfinished_until_marked(ledger):
    ledger.write_plan(plan("b1"))
    ledger.write_plan(plan("b2"))
    with pytest.raises(StoreError, match="already planned"):
        ledger.write_plan(plan("b2"))
    ledger.finish_plan("b1")
    assert ledger.unfinished_plans() == [plan("b2")]  # read back as the plan that was written
    assert ledger.batches() == ["b1", "b2"]
    # finding unfinished plans lists only the open markers, not every plan ever made
    assert [k.rsplit("/", 1)[1] for k in ledger.objects.list("ledger/open")] == ["b2.json"]
    ledger.objects.put_json("ledger/open/b0.json", {"batch_id": "b0"})  # a crash between the marker and its plan
    assert [p.batch_id for p in ledger.unfinished_plans()] == ["b2"]
    ledger.finish_plan("b2")
    ledger.write_plan(plan("b3"))  # (under the writer lease) clears what crashes left
    assert [k.rsplit("/", 1)[1] for k in ledger.objects.list("ledger/open")] == ["b3.json"]


def test_a_plan_of_an_older_format_is_a_clear_error(ledger):
    ledger.objects.put_json("ledger/batches/b1.json", {"batch_id": "b1", "requests": [], "shards": {}})
    ledger.objects.put_json("ledger/open/b1.json", {"batch_id": "b1"})
    with pytest.raises(StoreError, match=r"batch plan .*ledger/batches/b1.json has no format_version"):
        ledger.unfinished_plans()


def test_states_are_the_snapshot_and_the_inbox(ledger):
    acks = [ledger.submit(np.array([i])) for i in range(3)]
    inbox = lambda: sorted(k.rsplit("/", 1)[1][:-5] for k in ledger.objects.list("ledger/inbox"))  # noqa: E731
    assert inbox() == sorted(a.request_id for a in acks) and not ledger.objects.exists("ledger/snapshot.json")
    assert ledger.states() == {a.request_id: "pending" for a in acks}

    view = ledger.view()  # one bulk: two transitions, then the snapshot
    recorded = ledger.append(view, [(acks[0].request_id, "applied_exact", {"batch_id": "b1"}), (acks[1].request_id, "rejected", None)])
    assert [r.new for r in recorded] == [True, True] and recorded[0].event["batch_id"] == "b1"
    assert ledger.states()[acks[0].request_id] == "pending"  # not visible until committed ...
    assert ledger.state(acks[0].request_id) == "applied_exact"  # ... though the request's own events are current
    ledger.commit(view)
    assert inbox() == []
    snapshot = json.loads(ledger.objects.get_bytes("ledger/snapshot.json"))
    assert snapshot["format_version"] == 1 and snapshot["sequence"] == 1
    assert snapshot["requests"][acks[0].request_id][0] == "applied_exact"
    later = ledger.submit(np.array([7]))
    assert inbox() == [later.request_id]
    expected = {acks[0].request_id: "applied_exact", acks[1].request_id: "rejected", acks[2].request_id: "pending", later.request_id: "pending"}
    assert ledger.states() == expected
    assert {e.request_id: e.ids for e in ledger.view().entries.values()}[acks[0].request_id] == 1

    # a bulk a crash interrupted (events written, no snapshot) is recorded again: nothing twice
    view = ledger.view()
    [first] = ledger.append(view, [(later.request_id, "applied_approximate", {"batch_id": "b2"})])
    view = ledger.view()  # the restarted coordinator's view
    [again] = ledger.append(view, [(later.request_id, "applied_approximate", {"batch_id": "b3"})])
    assert not again.new and again.event == first.event
    ledger.commit(view)
    assert [e["batch_id"] for e in ledger.events(later.request_id)] == ["b2"]
    assert ledger.states()[later.request_id] == "applied_approximate"
    # a transition the request has passed is not recorded
    assert ledger.append(ledger.view(), [(acks[0].request_id, "applied_approximate", None)]) == [None]


def test_a_submission_that_never_created_its_request_is_not_a_request(ledger):
    ledger.objects.put_json("ledger/inbox/" + "a" * 32 + ".json", {"request_id": "a" * 32, "at": now()})
    ledger.objects.put_json("ledger/inbox/" + "b" * 32 + ".json", {"request_id": "b" * 32, "at": "2001-01-01T00:00:00.000+00:00"})
    ack = ledger.submit(np.array([1]))
    assert ledger.states() == {ack.request_id: "pending"}
    ledger.record(ack.request_id, "applied_exact")
    # the young entry may still be a submission under way: it stays; the day-old one goes
    assert sorted(k.rsplit("/", 1)[1][:-5] for k in ledger.objects.list("ledger/inbox")) == ["a" * 32]


def test_a_malformed_snapshot_is_a_store_error(ledger):
    ledger.objects.put_bytes("ledger/snapshot.json", b'{"format_version": 1, "sequence": 1, "requests": {"x": 1}}')
    with pytest.raises(StoreError, match=r"ledger snapshot .*snapshot.json is malformed: entry 'x'"):
        ledger.states()
    ledger.objects.put_bytes("ledger/snapshot.json", b'{"requests": {}}')
    with pytest.raises(StoreError, match="this raysisa reads snapshot format 1"):
        ledger.states()


def test_subject_keys_are_stored_hashed_and_forgotten(ledger):
    ledger.register_subjects({"alice@example.org": [1, 2], "bob": [3]})
    assert ledger.subject_ids("alice@example.org").tolist() == [1, 2]
    for key in ledger.objects.list(""):
        assert b"alice" not in ledger.objects.get_bytes(key) and "alice" not in key
    ledger.forget_subject(digest("alice@example.org"))
    assert ledger.subject_ids("alice@example.org").tolist() == [] and ledger.subject_ids("bob").tolist() == [3]
