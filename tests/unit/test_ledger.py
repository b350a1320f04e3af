import numpy as np
import pytest

from raysisa.config import StoreConfig
from raysisa.coordinator.ledger import Ledger, digest
from raysisa.errors import InvalidIdsError
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
    ledger.record(rid, "applied_approximate", {"batch_id": "b1"})
    ledger.record(rid, "applied_approximate", {"batch_id": "b2"})  # a replay changes nothing
    assert [e["batch_id"] for e in ledger.events(rid)] == ["b1"]
    ledger.record(rid, "exact")
    assert ledger.state(rid) == "exact" and ledger.states() == {rid: "exact"}
    assert [e["state"] for e in ledger.events(rid)] == ["applied_approximate", "exact"]


def test_plans_are_unfinished_until_marked(ledger):
    ledger.write_plan({"batch_id": "b1", "requests": []})
    ledger.write_plan({"batch_id": "b2", "requests": []})
    ledger.finish_plan("b1")
    assert [p["batch_id"] for p in ledger.unfinished_plans()] == ["b2"]
    assert ledger.batches() == ["b1", "b2"]


def test_subject_keys_are_stored_hashed_and_forgotten(ledger):
    ledger.register_subjects({"alice@example.org": [1, 2], "bob": [3]})
    assert ledger.subject_ids("alice@example.org").tolist() == [1, 2]
    for key in ledger.objects.list(""):
        assert b"alice" not in ledger.objects.get_bytes(key) and "alice" not in key
    ledger.forget_subject(digest("alice@example.org"))
    assert ledger.subject_ids("alice@example.org").tolist() == [] and ledger.subject_ids("bob").tolist() == [3]
