"""Concurrent writers on one store, local and on moto S3: two unlearns at once (real
processes), a writer that finds the lease taken, same-key submissions at the same instant,
and concurrent subject registrations."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from raysisa import LocalPool, StoreConfig, train
from raysisa.config import parse_config
from raysisa.coordinator import client
from raysisa.errors import InvalidIdsError
from raysisa.store import RunStore
from raysisa.store.lease import acquire_lease
from tests import processes
from tests.sisa_checks import copy_objects
from tests.conftest import TINY, make_bucket
from tests.sisa_checks import assert_no_residue, model_shas, pick

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    folder = tmp_path_factory.mktemp("concurrency")
    run = StoreConfig(uri=str(folder / "run"))
    train(parse_config({}, TINY), run, pool=LocalPool())
    return folder / "run"


def _slow_writes(monkeypatch, bucket: str, seconds: float) -> None:
    """Make the moto server answer every write to ``bucket`` ``seconds`` late, as a
    distant S3 region does (races get wider windows)."""
    import time

    from moto.moto_server import werkzeug_app

    original = werkzeug_app.DomainDispatcherApplication.__call__

    def slow(self, environ, start_response):
        if environ["REQUEST_METHOD"] in ("PUT", "POST", "DELETE") and environ.get("PATH_INFO", "").startswith(f"/{bucket}/"):
            time.sleep(seconds)
        return original(self, environ, start_response)

    monkeypatch.setattr(werkzeug_app.DomainDispatcherApplication, "__call__", slow)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3), pytest.param("s3-slow", marks=pytest.mark.s3)])
def store(request, tmp_path, template, s3_endpoint, monkeypatch):
    """A copy of the trained template run: (CLI flags, StoreConfig). ``s3-slow`` answers
    writes 50 ms late."""
    if request.param == "local":
        config, flags = StoreConfig(uri=str(tmp_path / "run")), ["--store", str(tmp_path / "run")]
    else:
        bucket = make_bucket(s3_endpoint)
        if request.param == "s3-slow":
            _slow_writes(monkeypatch, bucket[len("s3://") :], 0.05)
        config = StoreConfig(uri=f"{bucket}/run", endpoint_url=s3_endpoint)
        flags = ["--store", config.uri, "--endpoint-url", s3_endpoint]
    source, target = RunStore(StoreConfig(uri=str(template))).objects, RunStore(config).objects
    copy_objects(source, target)
    return flags, config


def test_two_unlearns_at_once_both_apply(store, tmp_path):
    flags, config = store
    first, second = pick(config, [(0, 1, 0), (1, 2, 3)]), pick(config, [(0, 2, 2), (2, 1, 1)])
    handles = [
        processes.start(["unlearn", *flags, "--ids", ",".join(map(str, ids)), "--in-process", "--quiet", "--lease-wait", "120"])
        for ids in (first, second)
    ]
    results = [processes.finish(h) for h in handles]
    assert [r.code for r in results] == [0, 0], [r.err for r in results]
    assert all("deleted 2 sample(s)" in r.out for r in results)
    reference = StoreConfig(uri=str(tmp_path / "reference"))
    train(parse_config({}, TINY), reference, exclude_ids=first + second, pool=LocalPool())
    assert model_shas(config) == model_shas(reference)
    assert_no_residue(config, first + second)
    assert RunStore(config).refresh().version == 3  # two commits, neither lost


def test_a_writer_that_finds_the_store_busy_fails_fast_naming_the_holder_and_changes_nothing(store):
    flags, config = store
    ids = pick(config, [(1, 1, 0)])
    run = RunStore(config)
    lease = acquire_lease(run.objects, "an operator's maintenance script", wait=0)
    listing = run.listing()
    try:
        busy = processes.run(["unlearn", *flags, "--ids", str(ids[0]), "--in-process", "--quiet", "--lease-wait", "0"])
    finally:
        lease.release()
    assert busy.code == 2 and busy.err.startswith("error: store ")
    assert "an operator's maintenance script" in busy.err and "Traceback" not in busy.err
    assert {k: v for k, v in RunStore(config).listing().items() if not k.startswith("_log/lease")} == {
        k: v for k, v in listing.items() if not k.startswith("_log/lease")
    }
    retry = processes.run(["unlearn", *flags, "--ids", str(ids[0]), "--in-process", "--quiet", "--lease-wait", "0"])
    assert retry.code == 0, retry.err
    assert_no_residue(config, ids)


def _at_once(calls: list) -> list:
    """Run every call in its own thread, released together; returns results or exceptions."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_same_key_submissions_at_the_same_instant_get_exactly_one_acknowledgement(store):
    _, config = store
    live = RunStore(config).read_index()["id"].to_numpy()
    for round_ in range(3):
        calls, expected = [], {}
        for pair in range(10):
            key = f"round{round_}-key{pair}"
            a = live[4 * pair : 4 * pair + 2].tolist()
            b = a if pair % 2 == 0 else live[4 * pair + 2 : 4 * pair + 4].tolist()  # odd pairs: other ids
            expected[key] = (a, b)
            fresh = StoreConfig(**config.model_dump())  # each caller with its own client, like separate processes
            calls += [lambda k=key, ids=a, s=fresh: client.submit(s, ids, key=k), lambda k=key, ids=b, s=fresh: client.submit(s, ids, key=k)]
        results = _at_once(calls)
        for pair, key in enumerate(expected):
            first, second = results[2 * pair], results[2 * pair + 1]
            acks = [r for r in (first, second) if not isinstance(r, Exception)]
            fresh_acks = [a for a in acks if not a.duplicate]
            assert len(fresh_acks) == 1, (key, first, second)  # exactly one submission created the request
            stored = client.status(config, fresh_acks[0].request_id)["request"]["ids"]
            a, b = expected[key]
            if a == b:  # same ids: the other is told it is a duplicate of the same request
                assert len(acks) == 2 and {x.request_id for x in acks} == {fresh_acks[0].request_id}
                assert stored == sorted(a)
            else:  # other ids: the loser is refused, never silently dropped
                loser = next(r for r in (first, second) if isinstance(r, Exception))
                assert isinstance(loser, InvalidIdsError) and "already used" in str(loser)
                winner_ids = a if first is fresh_acks[0] else b
                assert stored == sorted(winner_ids)


def test_concurrent_subject_registrations_are_all_stored(store):
    _, config = store
    live = RunStore(config).read_index()["id"].to_numpy()
    subjects = {f"subject-{i}@example.org": live[3 * i : 3 * i + 3].tolist() for i in range(20)}
    calls = [lambda s=s, ids=ids: client.register_subjects(StoreConfig(**config.model_dump()), {s: ids}) for s, ids in subjects.items()]
    assert _at_once(calls) == [3] * 20
    from raysisa.coordinator.ledger import Ledger

    ledger = Ledger(RunStore(config).objects)
    for subject, ids in subjects.items():
        assert ledger.subject_ids(subject).tolist() == sorted(ids)
    assert np.array_equal(np.sort(np.concatenate([ledger.subject_ids(s) for s in subjects])), np.sort(np.concatenate(list(subjects.values()))))
