"""The crash-point matrix: a real process is SIGKILLed at every named crash point of an
ingest, a deletion and a coordinator batch, on a local store and on moto S3; then the store
is recovered by each documented path and must end exactly where an uninterrupted run ends:

- models bit-identical to training without the ids (``train --exclude-ids-file``);
- no deleted id in any stored object (data and index of every version, checkpoint
  lineages, overlays), no journal or leftover, tombstones complete;
- for the coordinator: the request exact, with its receipt.

Shard work runs in the process (``--in-process``): Ray's own restarts are tested in
test_sisa_ray.py; here the process that holds the store dies.
"""

from __future__ import annotations


import pytest

from raysisa import LocalPool, StoreConfig, train
from raysisa.cli import main
from raysisa.config import parse_config
from raysisa.coordinator import client
from raysisa.coordinator.ledger import Ledger
from raysisa.store import RunStore
from tests import processes
from tests.sisa_checks import copy_objects
from tests.conftest import TINY, make_bucket
from tests.sisa_checks import assert_no_residue, model_shas, pick

pytestmark = pytest.mark.slow

SET = [arg for item in TINY for arg in ("--set", item)]
WHERE = [(0, 1, 2), (0, 2, 1), (2, 3, 0)]  # three partitions of two shards
KEY = "ticket-crash"
COORDINATOR = ["coordinator.window_seconds=0", "coordinator.policy=dpus", "coordinator.idle_seconds=0"]

# crash points of each operation, in the order the operation passes them
POINTS = {
    "unlearn": [
        "delete.begin",
        "delete.object@1",
        "delete.object@2",  # between two partition rewrites
        "delete.object@4",  # partitions and index written, tombstones not
        "delete.object@5",  # every object written, not committed
        "delete.committed",
        "delete.swept",
        "delete.done",
        "train.slice@2",  # retraining
    ],
    "ingest": [
        "ingest.begin",
        "ingest.object@5",
        "ingest.object@12",  # every object written
        "ingest.manifest",
        "ingest.committed",
        "ingest.swept",
        "ingest.done",
        "train.slice@5",
    ],
    "batch": [
        "batch.planned",
        "batch.overlay@1",
        "batch.overlay@2",
        "delete.object@2",
        "delete.committed",
        "delete.swept",
        "batch.retrained",
        "batch.recorded",
        "train.slice@1",  # restoring exactness
        "restore.retrained",
        "restore.dropped",
    ],
}
RECOVERY = {"unlearn": ["train", "rerun"], "ingest": ["train", "rerun"], "batch": ["restart", "rerun"]}


def _cases():
    for kind, points in POINTS.items():
        for i, point in enumerate(points):
            for path in RECOVERY[kind]:
                yield pytest.param("local", kind, point, path, id=f"local-{kind}-{point}-{path}")
            # on S3 one recovery path per point, alternating, to keep the suite short
            path = RECOVERY[kind][i % 2]
            yield pytest.param("s3", kind, point, path, id=f"s3-{kind}-{point}-{path}", marks=pytest.mark.s3)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A trained tiny run, the ids to delete, and the exclusion reference's model hashes."""
    folder = tmp_path_factory.mktemp("crash")
    job = parse_config({}, TINY)
    run = StoreConfig(uri=str(folder / "run"))
    train(job, run, pool=LocalPool())
    ids = pick(run, WHERE)
    reference = StoreConfig(uri=str(folder / "reference"))
    train(job, reference, exclude_ids=ids, pool=LocalPool())
    ids_file = folder / "ids.txt"
    ids_file.write_text("\n".join(map(str, ids)))
    return {"run": folder / "run", "ids": ids, "ids_file": str(ids_file), "shas": model_shas(reference)}


@pytest.fixture
def where(request, tmp_path, s3_endpoint):
    """(store flags for the CLI, StoreConfig) of a fresh local or S3 store."""
    if request.param == "local":
        return ["--store", str(tmp_path / "run")], StoreConfig(uri=str(tmp_path / "run"))
    uri = f"{make_bucket(s3_endpoint)}/run"
    return ["--store", uri, "--endpoint-url", s3_endpoint], StoreConfig(uri=uri, endpoint_url=s3_endpoint)


def _copy_run(template, store: StoreConfig) -> None:
    source = RunStore(StoreConfig(uri=str(template["run"]))).objects
    target = RunStore(store).objects
    copy_objects(source, target)


def _commands(kind: str, flags: list[str], template) -> list[str]:
    ids = ",".join(map(str, template["ids"]))
    return {
        "unlearn": ["unlearn", *flags, "--ids", ids, "--quiet"],
        "ingest": ["train", *flags, *SET, "--exclude-ids-file", template["ids_file"], "--quiet"],
        "batch": ["forget", *flags, "--ids", ids, "--key", KEY, "--wait", "exact", *(a for s in COORDINATOR for a in ("--set", s))],
    }[kind] + ["--in-process"]


def _recover(kind: str, path: str, flags: list[str], store: StoreConfig, template) -> None:
    if path == "rerun":
        code = main(_commands(kind, flags, template))
    elif path == "train":
        code = main(["train", *flags, "--in-process", "--quiet"])
    else:  # restart the coordinator: a new one on the same store (what Ray does to the actor)
        from raysisa.api import run_coordinator
        from raysisa.config import CoordinatorConfig

        run_coordinator(store, CoordinatorConfig(window_seconds=0, policy="dpus", idle_seconds=0), pool=LocalPool())
        code = 0
    assert code == 0


@pytest.mark.parametrize("where, kind, point, path", list(_cases()), indirect=["where"])
def test_a_killed_process_is_recovered_exactly(where, kind, point, path, template, capsys):
    flags, store = where
    if kind != "ingest":
        _copy_run(template, store)
    crashed = processes.run_crashing(_commands(kind, flags, template), point)
    assert crashed.code == -9, f"the child did not reach crash point {point}: exit {crashed.code}\n{crashed.err}"

    _recover(kind, path, flags, store, template)

    assert model_shas(store) == template["shas"]
    assert_no_residue(store, template["ids"])
    if kind == "batch":
        request_id = Ledger.request_id_for(KEY)
        status = client.status(store, request_id)
        assert status["state"] == "exact", status["events"]
        assert status["receipt"]["exact_at"] and status["receipt"]["ids"] == sorted(template["ids"])
        assert [e["state"] for e in status["events"]][-1] == "exact"
    capsys.readouterr()


def test_every_crash_point_in_the_code_is_exercised():
    from raysisa.crashpoints import CRASH_POINTS

    used = {p.split("@")[0] for points in POINTS.values() for p in points}
    named = {p.format(kind=kind) for p in CRASH_POINTS for kind in ("ingest", "delete")} - {"delete.manifest"}
    assert named <= used, sorted(named - used)

