"""Bad input, table-driven: every case exits with status 2 and an ``error:`` line, prints no
traceback, and leaves every object on the store byte-identical (hashed before and after).
A store whose ``raysisa.json`` was removed is refused by every command, never re-ingested."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import pytest

from raysisa import LocalPool, StoreConfig, train, unlearn
from raysisa.cli import build_parser, main
from raysisa.config import parse_config
from raysisa.coordinator import client
from raysisa.store import RunStore
from tests import processes
from tests.conftest import TINY, make_bucket
from tests.sisa_checks import copy_objects, pick

SET = [arg for item in TINY for arg in ("--set", item)]
HEX = "0123456789abcdef" * 2


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: nothing listens there


@pytest.fixture(scope="module", params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def world(request, tmp_path_factory, s3_endpoint):
    """A trained run with a deletion, a logged request and a subject; broken copies of it;
    and the files the cases read. On a local folder, or copied to a moto S3 bucket."""
    root = tmp_path_factory.mktemp("bad")
    main_store = StoreConfig(uri=str(root / "run"))
    train(parse_config({}, TINY), main_store, pool=LocalPool())
    deleted = pick(main_store, [(0, 1, 0)])
    unlearn(main_store, deleted, pool=LocalPool())
    live = RunStore(main_store).read_index()["id"].to_numpy()
    client.submit(main_store, [int(live[0])], key="used-key")
    client.register_subjects(main_store, {"alice@example.org": [int(live[1])]})
    objects = RunStore(main_store).objects
    stores = {"main": main_store}
    for name, manifest in {"no-manifest": None, "manifest-{}": b"{}", "manifest-[]": b"[]", "manifest-binary": b"\x00\xff\xfe"}.items():
        copy = StoreConfig(uri=str(root / name))
        target = RunStore(copy).objects
        for key in objects.list(""):
            target.put_bytes(key, objects.get_bytes(key))
        if manifest is None:
            target.delete("raysisa.json")
        else:
            target.put_bytes("raysisa.json", manifest)
        stores[name] = copy
    stores["empty"] = StoreConfig(uri=str(root / "empty"))
    if request.param == "s3":
        bucket = make_bucket(s3_endpoint)
        for name, local in list(stores.items()):
            stores[name] = StoreConfig(uri=f"{bucket}/{name}", endpoint_url=s3_endpoint)
            copy_objects(RunStore(local).objects, RunStore(stores[name]).objects)
    files = root / "files"
    files.mkdir()
    contents = {
        "binary": b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01",
        "json-huge": b"[1e30]",
        "json-bool": b"[true]",
        "json-object": b'{"a": 1}',
        "json-mixed": b'[1, "x"]',
        "json-nested": b"[[1]]",
        "json-float": b"[1.0]",
        "json-broken": b"[1, 2",
        "yaml-list": b"- a\n- b\n",
        "subjects-list": b'["alice"]',
        "subjects-strings": b'{"a": ["x"]}',
        "subjects-huge": b'{"a": [1e30]}',
        "subjects-empty-key": b'{"": [1]}',
        "ids-unknown": b"5000000\n",
    }
    for name, data in contents.items():
        (files / name).write_bytes(data)
    return {"stores": stores, "files": files, "live": live, "port": _closed_port()}


@dataclass(frozen=True)
class Case:
    argv: list[str]  # "{store}", "{file:NAME}", "{port}", "{live}" are filled in
    expect: str  # a fragment of the error message
    store: str = "main"


CASES = {
    # sample ids
    "superscript-two": Case(["unlearn", "--ids", "²"], "not integers: '²'"),
    "sign-soup": Case(["unlearn", "--ids", "+-5"], "not integers: '+-5'"),
    "beyond-int64": Case(["unlearn", "--ids", "99999999999999999999"], "beyond the int64 range"),
    "int64-max-plus-one": Case(["unlearn", "--ids", "9223372036854775808"], "beyond the int64 range"),
    "negative": Case(["unlearn", "--ids", "-3"], "negative id"),
    "decimal": Case(["unlearn", "--ids", "1.5"], "not integers: '1.5'"),
    "exponent": Case(["unlearn", "--ids", "1e3"], "not integers: '1e3'"),
    "hex": Case(["unlearn", "--ids", "0x10"], "not integers: '0x10'"),
    "path-as-id": Case(["unlearn", "--ids", "../../etc/passwd"], "not integers"),
    "no-ids": Case(["unlearn", "--ids", ""], "no sample ids given"),
    "unknown-id": Case(["unlearn", "--ids", "5000000"], "never existed"),
    "one-bad-among-good": Case(["unlearn", "--ids", "{live},x"], "not integers: 'x'"),
    "ids-file-binary": Case(["unlearn", "--ids-file", "{file:binary}"], "is not UTF-8 text"),
    "ids-file-1e30": Case(["unlearn", "--ids-file", "{file:json-huge}"], "not integers: 1e+30"),
    "ids-file-bool": Case(["unlearn", "--ids-file", "{file:json-bool}"], "not integers: True"),
    "ids-file-object": Case(["unlearn", "--ids-file", "{file:json-object}"], "not integers"),
    "ids-file-mixed": Case(["unlearn", "--ids-file", "{file:json-mixed}"], "not integers: 'x'"),
    "ids-file-nested": Case(["unlearn", "--ids-file", "{file:json-nested}"], "not integers: [1]"),
    "ids-file-float": Case(["unlearn", "--ids-file", "{file:json-float}"], "not integers: 1.0"),
    "ids-file-broken-json": Case(["unlearn", "--ids-file", "{file:json-broken}"], "looks like JSON but is not valid"),
    "ids-file-missing": Case(["unlearn", "--ids-file", "{file:nope}"], "cannot read ids file"),
    "ids-file-is-a-folder": Case(["unlearn", "--ids-file", "{files}"], "cannot read ids file"),
    "ids-and-ids-file": Case(["unlearn", "--ids", "1", "--ids-file", "{file:json-float}"], "not allowed with argument"),
    # evaluate
    "weights-not-numbers": Case(["evaluate", "--weights", "a,b"], "--weights: 'a' is not a number"),
    "weights-count": Case(["evaluate", "--weights", "1,2"], "2 shard weights given for 3 shards"),
    "weights-negative": Case(["evaluate", "--weights=-1,1,1"], "finite, non-negative"),
    "weights-nan": Case(["evaluate", "--weights", "nan,1,1"], "finite, non-negative"),
    "aggregation": Case(["evaluate", "--aggregation", "median"], "unknown aggregation 'median'"),
    # request ids are ids, never paths
    "request-id-traversal": Case(["requests", "--id", "../../raysisa"], "is not a request id"),
    "request-id-short": Case(["requests", "--id", "ZZZ"], "is not a request id"),
    "request-id-empty": Case(["requests", "--id", ""], "is not a request id"),
    "request-id-unknown": Case(["requests", "--id", HEX], "no request"),
    # configs
    "bool-as-shards": Case(["train", *SET, "--set", "sharding.num_shards=true"], "sharding.num_shards: expected a number, got a boolean"),
    "bool-as-width": Case(["train", *SET, "--set", "model.width=false"], "model.width: expected a number"),
    "huge-epochs": Case(["train", *SET, "--set", "train.epochs=1e30"], "train.epochs"),
    "lr-not-a-number": Case(["train", *SET, "--set", "train.lr=abc"], "train.lr"),
    "override-without-equals": Case(["train", "--set", "nonsense"], "must look like section.key=value"),
    "config-binary": Case(["train", "--config", "{file:binary}"], "is not UTF-8 text"),
    "config-missing": Case(["train", "--config", "{file:nope.yaml}"], "cannot read config file"),
    "config-a-list": Case(["train", "--config", "{file:yaml-list}"], "a config must be a mapping"),
    "bits-3": Case(["train", *SET, "--bits", "3"], "unsupported bit width 3"),
    "another-recipe": Case(["train", *SET, "--set", "train.seed=9"], "holds a run with another config"),
    "exclusion-not-excluded": Case(["train", *SET, "--exclude-ids-file", "{file:ids-unknown}"], "without excluding 1 of the given ids"),
    # deletion requests and subjects
    "forget-superscript": Case(["forget", "--ids", "²"], "not integers"),
    "forget-unknown-id": Case(["forget", "--ids", "5000000"], "never existed"),
    "forget-bad-coordinator-config": Case(["forget", "--ids", "{live}", "--wait", "exact", "--set", "coordinator.rho=-1"], "coordinator.rho"),
    "forget-unknown-subject": Case(["forget", "--subject", "nobody@example.org"], "unknown data subject"),
    "forget-key-reused": Case(["forget", "--ids", "{live}", "--key", "used-key"], "idempotency key already used"),
    "subjects-binary": Case(["subjects", "--file", "{file:binary}"], "is not UTF-8 text"),
    "subjects-a-list": Case(["subjects", "--file", "{file:subjects-list}"], "a subjects file is a JSON object"),
    "subjects-string-ids": Case(["subjects", "--file", "{file:subjects-strings}"], "not integers: 'x'"),
    "subjects-1e30": Case(["subjects", "--file", "{file:subjects-huge}"], "not integers"),
    "subjects-empty-key": Case(["subjects", "--file", "{file:subjects-empty-key}"], "keys are non-empty strings"),
    # clusters and stores that do not answer
    "coordinator-no-address": Case(["coordinator", "start"], "give --address"),
    "coordinator-unreachable": Case(["coordinator", "status", "--address", "127.0.0.1:{port}", "--connect-timeout", "2"], "cannot reach the Ray cluster"),
    "s3-not-answering": Case(["unlearn", "--ids", "1", "--store", "s3://nobody-home/run", "--endpoint-url", "http://127.0.0.1:{port}"], "the store did not answer"),
    "compare-unknown-method": Case(["compare", "--methods", "nope", *SET], "unknown unlearning method 'nope'"),
    "compare-bad-seeds": Case(["compare", "--seeds", "x", *SET], "--seeds: expected comma-separated non-negative integers"),
    # broken stores
    "empty-store": Case(["evaluate"], "no raysisa run at", store="empty"),
    "manifest-{}": Case(["evaluate"], "not a valid run manifest", store="manifest-{}"),
    "manifest-[]": Case(["inspect"], "a JSON list, not an object", store="manifest-[]"),
    "manifest-binary": Case(["unlearn", "--ids", "{live}"], "not a valid run manifest (not JSON)", store="manifest-binary"),
}

# every command, run on a store whose raysisa.json was removed
COMMANDS_WITHOUT_MANIFEST = {
    "train-resume": ["train"],
    "train-config": ["train", *SET],
    "train-exclusion": ["train", *SET, "--exclude-ids-file", "{file:ids-unknown}"],
    "unlearn": ["unlearn", "--ids", "{live}"],
    "evaluate": ["evaluate"],
    "inspect": ["inspect"],
    "forget": ["forget", "--ids", "{live}"],
    "forget-wait": ["forget", "--ids", "{live}", "--wait", "exact", "--in-process"],
    "requests": ["requests"],
    "request": ["requests", "--id", HEX],
    "subjects": ["subjects", "--file", "{file:subjects-strings}"],
}


def _fill(argv: list[str], world) -> list[str]:
    out = []
    for arg in argv:
        if arg.startswith("{file:"):
            arg = str(world["files"] / arg[len("{file:") : -1])
        arg = arg.replace("{files}", str(world["files"])).replace("{port}", str(world["port"]))
        out.append(arg.replace("{live}", str(int(world["live"][5]))))
    return out


def _run(capsys, argv: list[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    _, err = capsys.readouterr()
    return code, err


def _objects(store: StoreConfig) -> dict[str, str]:
    run = RunStore(store)
    return {**run.listing(), **{k: "temporary" for k in run.objects.list_temporary("")}}


def _offers(command: str, flag: str) -> bool:
    """Whether ``raysisa COMMAND`` takes ``flag``."""
    import argparse

    [commands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return flag in commands.choices[command]._option_string_actions


def _check(capsys, world, argv: list[str], store_name: str, expect: str) -> None:
    store = world["stores"][store_name]
    argv = _fill(argv, world)
    if "--store" not in argv:
        argv += ["--store", store.uri] + (["--endpoint-url", store.endpoint_url] if store.endpoint_url else [])
    before = _objects(store)
    # no progress bars and no waiting for a lease, where the command offers those flags
    extra = [flag for flag in (["--quiet"], ["--lease-wait", "0"]) if _offers(argv[0], flag[0])]
    code, err = _run(capsys, [*argv, *(a for flag in extra for a in flag)])
    assert code == 2, f"exit {code}: {err}"
    assert "error:" in err and "Traceback" not in err, err
    assert expect in err, err
    assert _objects(store) == before, "the store changed"


def test_at_least_forty_bad_inputs_are_covered():
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_an_error_and_changes_nothing(name, world, capsys):
    case = CASES[name]
    _check(capsys, world, case.argv, case.store, case.expect)


@pytest.mark.parametrize("command", sorted(COMMANDS_WITHOUT_MANIFEST))
def test_a_store_whose_manifest_was_removed_is_refused_by_every_command(command, world, capsys):
    _check(capsys, world, COMMANDS_WITHOUT_MANIFEST[command], "no-manifest", "but no valid raysisa.json")


def test_an_unreachable_ray_address_fails_within_the_timeout(world):
    """In a fresh process (this one may already run Ray). Without the timeout, ray.init
    retries for minutes and the child is killed at 120 s."""
    result = processes.run(
        ["unlearn", "--store", world["stores"]["main"].uri, *(["--endpoint-url", e] if (e := world["stores"]["main"].endpoint_url) else []),
         "--ids", str(int(world["live"][7])),
         "--address", f"127.0.0.1:{world['port']}", "--connect-timeout", "3", "--quiet"],
        timeout=120,
    )
    assert result.code == 2 and result.err.startswith("error: cannot reach the Ray cluster at 127.0.0.1:"), result.err
    assert "Traceback" not in result.err

