"""Conditional creates, the writer lease, commits as a fence, and verification before any
write (in this process; crashes and concurrent processes are in tests/integration)."""

from __future__ import annotations

import os
import socket
import threading
import time

import numpy as np
import pytest

from raysisa import LocalPool, StoreConfig, train, unlearn
from raysisa.errors import CheckpointCorruptError, ConflictError, LeaseLostError, StoreBusyError, StoreError
from raysisa.sisa.run import SisaRun
from raysisa.store import ObjectStore, RunStore
from raysisa.store.lease import LEASE_PREFIX, acquire_lease, current_holder
from raysisa.store.run import MANIFEST, index_keys
from tests.sisa_checks import assert_no_residue, model_shas, pick


@pytest.fixture(params=["local", "memory"])
def objects(request, tmp_path):
    uri = str(tmp_path / "store") if request.param == "local" else f"memory://txn-{tmp_path.name}"
    return ObjectStore(StoreConfig(uri=uri))


def test_create_writes_once_and_exactly_one_of_many_racers_wins(objects):
    assert objects.create_bytes("a/k", b"first")
    assert not objects.create_bytes("a/k", b"second")
    assert objects.get_bytes("a/k") == b"first"
    barrier = threading.Barrier(8)
    wins = []

    def racer(i: int) -> None:
        barrier.wait()
        if objects.create_bytes("a/race", str(i).encode()):
            wins.append(i)

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and objects.get_bytes("a/race") == str(wins[0]).encode()
    assert not objects.list_temporary("")


def test_a_held_lease_blocks_other_writers_and_names_its_holder(objects):
    lease = acquire_lease(objects, "unlearn (test)", ttl=30, wait=0)
    with pytest.raises(StoreBusyError, match=rf"unlearn \(test\) \(pid {os.getpid()} on {socket.gethostname()}"):
        acquire_lease(objects, "train", ttl=30, wait=0.3)
    lease.check()
    lease.release()
    assert objects.list(LEASE_PREFIX) == []  # a released lease leaves nothing behind
    second = acquire_lease(objects, "train", ttl=30, wait=0)
    with pytest.raises(LeaseLostError):
        lease.check()  # the first holder cannot commit any more
    second.release()


def test_a_dead_local_holder_is_taken_over_at_once(objects):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lease = acquire_lease(objects, "crashed writer", ttl=3600, wait=0)
    lease.release()
    record = {**lease.holder.to_dict(), "pid": int(dead.stdout), "pid_started": None}
    objects.create_json(f"{LEASE_PREFIX}/{7:012d}.json", record)  # a writer killed while holding token 7
    started = time.time()
    taken = acquire_lease(objects, "recovery", ttl=30, wait=0)
    assert taken.token == 8 and time.time() - started < 5
    assert current_holder(objects).purpose == "recovery"
    taken.release()


def test_a_remote_holder_blocks_until_its_lease_expires(objects):
    remote = {
        "owner": "x" * 32, "purpose": "train on another machine", "host": "elsewhere", "boot_id": "b", "pid": 1,
        "pid_started": None, "acquired_at": "2026-01-01T00:00:00", "expires_at": time.time() + 1.5,
    }
    objects.create_json(f"{LEASE_PREFIX}/{3:012d}.json", remote)
    with pytest.raises(StoreBusyError, match="train on another machine"):
        acquire_lease(objects, "unlearn", ttl=30, wait=0)
    lease = acquire_lease(objects, "unlearn", ttl=30, wait=10)  # waits for the expiry
    assert lease.token == 4 and time.time() >= remote["expires_at"]
    lease.release()


def test_an_expired_lease_cannot_be_renewed_or_used(objects):
    lease = acquire_lease(objects, "slow writer", ttl=1, wait=0)
    lease._stop.set()  # no heartbeat: as if the process had been paused
    time.sleep(1.2)
    with pytest.raises(LeaseLostError, match="expired"):
        lease.renew()
    with pytest.raises(LeaseLostError):
        lease.check()


# -- runs -----------------------------------------------------------------------------------
def test_a_writer_that_lost_its_lease_commits_nothing_and_the_next_one_finishes_its_deletion(trained, tiny_job, tmp_path):
    ids = pick(trained, [(0, 2, 0), (2, 1, 4)])
    run = SisaRun(trained)
    with run.writer("paused writer") as lease:
        plan = run.store.plan_delete(np.asarray(ids))
        txn = run.store._txn("delete", 2, lease, ids=[int(i) for i in plan.ids], reason="unlearn")
        run.store._begin(txn, lease)  # the intent is durable
        new = run.store._apply_delete(txn, plan.tables, plan.tombstones)
        lease._stop.set()  # the process stalls past its lease...
        lease.holder = lease.holder.__class__(**{**lease.holder.to_dict(), "expires_at": time.time() - 1})
        with pytest.raises(LeaseLostError):
            run.store._commit(new, lease)
    assert RunStore(trained).latest_version() == 1  # nothing was committed
    # the next command finishes the deletion from the journal (here a reader), then train retrains
    assert SisaRun(trained).recover()[0].startswith("completed an interrupted delete (version 2")
    assert RunStore(trained).latest_version() == 2 and not RunStore(trained).objects.list("_log/journal")
    train(None, trained, pool=LocalPool())
    reference = StoreConfig(uri=str(tmp_path / "reference"))
    train(tiny_job, reference, exclude_ids=ids, pool=LocalPool())
    assert model_shas(trained) == model_shas(reference)
    assert_no_residue(trained, ids)


def test_a_commit_loses_to_a_version_another_writer_committed_first(trained):
    ids = np.asarray(pick(trained, [(0, 2, 0)]))
    run = SisaRun(trained)
    with run.writer("second") as lease:
        plan = run.store.plan_delete(ids)
        other = {**run.store.state().to_dict(), "version": 2, "txn": {"id": "another writer's", "kind": "delete"}}
        run.store.objects.create_json("_log/commits/000000000002.json", other)
        with pytest.raises(ConflictError, match="another writer committed version 2"):
            run.store.commit_delete(plan, "unlearn", lease)


def test_a_corrupt_partition_is_found_before_anything_is_written(trained):
    ids = pick(trained, [(0, 1, 0), (1, 2, 0)])
    store = RunStore(trained)
    key = store.state().partitions[(1, 2)].key
    store.objects.put_bytes(key, store.objects.get_bytes(key)[:-10])  # truncated
    listing = store.listing()
    with pytest.raises(StoreError, match="is corrupt"):
        unlearn(trained, ids, pool=LocalPool())
    assert RunStore(trained).listing() == listing


def test_a_corrupt_restart_checkpoint_is_found_before_the_deletion(trained):
    ids = pick(trained, [(2, 3, 0)])
    store = RunStore(trained)
    restart = store.expected_refs()[2][2]  # shard 2 would restart from slice 2
    blob = store.objects.get_bytes(restart.blob)
    store.objects.put_bytes(restart.blob, blob[:-1] + bytes([blob[-1] ^ 1]))
    listing = store.listing()
    with pytest.raises(CheckpointCorruptError, match="nothing was deleted"):
        unlearn(trained, ids, pool=LocalPool())
    assert RunStore(trained).listing() == listing
    train(None, trained, pool=LocalPool(), verify=True)  # the documented fix, then the deletion works
    assert unlearn(trained, ids, pool=LocalPool()).deleted == ids


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"{}", "format_version None"),
        (b"[]", "a JSON list, not an object"),
        (b"\x89PNG\r\n\x1a\n\x00\xff", "not JSON"),
        (b'{"format_version": 1}', "raysisa 0.1"),
        (b'{"format_version": 2, "spec": {"train": {"epochs": true}}, "fingerprint": "x", "info": {}}', "not a valid run manifest"),
    ],
)
def test_a_broken_manifest_is_a_clear_error(trained, content, problem):
    RunStore(trained).objects.put_bytes(MANIFEST, content)
    with pytest.raises(StoreError, match=problem):
        RunStore(trained).manifest()


def test_a_store_with_data_but_no_manifest_is_never_ingested_over(trained, tiny_job):
    store = RunStore(trained)
    store.objects.delete(MANIFEST)
    listing = store.listing()
    with pytest.raises(StoreError, match="no valid raysisa.json"):
        train(tiny_job, trained, pool=LocalPool())
    assert RunStore(trained).listing() == listing


def test_checkpoint_keys_from_the_index_equal_keys_from_the_partitions(trained):
    from raysisa.store import slice_keys

    store = RunStore(trained)
    state = store.state()
    for shard in range(3):
        assert state.keys[shard] == tuple(slice_keys(store.fingerprint, shard, store.slice_ids(shard)))
    assert index_keys(store.fingerprint, store.read_index(), [0, 1, 2], 3) == state.keys


def test_commits_record_the_transaction_without_ids(trained):
    ids = pick(trained, [(1, 1, 3)])
    unlearn(trained, ids, pool=LocalPool())
    store = RunStore(trained)
    commit = store.objects.get_json("_log/commits/000000000002.json")
    assert commit["txn"]["kind"] == "delete" and commit["txn"]["deleted"] == 1
    assert "ids" not in commit["txn"] and not _int_lists(commit)  # ids live in the tombstones only
    assert store.objects.list("_log/journal") == []
    assert model_shas(trained)  # still a complete run


def _int_lists(obj) -> list:
    """Every list of integers anywhere in a JSON document."""
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _int_lists(v)]
    if isinstance(obj, list):
        own = [obj] if obj and all(isinstance(v, int) for v in obj) else []
        return own + [x for v in obj for x in _int_lists(v)]
    return []


def test_an_intent_planned_against_an_older_version_is_redone_on_the_latest(trained, tiny_job, tmp_path):
    first, second = pick(trained, [(0, 1, 1)]), pick(trained, [(1, 3, 2)])
    unlearn(trained, first, pool=LocalPool())  # version 2
    store = RunStore(trained)
    stale_intent = {
        "id": "a writer that stalled", "kind": "delete", "version": 2, "parent": 1, "ids": second, "reason": "unlearn",
        "lease_token": 0, "started_at": "2026-01-01T00:00:00.000+00:00",
    }
    store.objects.create_json("_log/journal/000000000002.json", stale_intent)
    assert SisaRun(trained).recover() == ["completed an interrupted delete (version 3, started 2026-01-01T00:00:00.000+00:00)"]
    train(None, trained, pool=LocalPool())
    reference = StoreConfig(uri=str(tmp_path / "reference"))
    train(tiny_job, reference, exclude_ids=first + second, pool=LocalPool())
    assert model_shas(trained) == model_shas(reference)
    assert_no_residue(trained, first + second)
    # an intent whose ids are all gone already is closed without a commit
    store.objects.create_json("_log/journal/000000000004.json", {**stale_intent, "version": 4, "parent": 3})
    assert SisaRun(trained).recover()[0].endswith(": its ids were already deleted")
    assert RunStore(trained).latest_version() == 3
