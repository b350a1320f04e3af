"""The ``raysisa`` command line, run in process against the session's Ray cluster."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from raysisa.api import evaluate
from raysisa.cli import build_parser, main, read_ids_file
from raysisa.config import StoreConfig
from raysisa.errors import InvalidIdsError
from tests.conftest import TINY
from tests.sisa_checks import pick

pytestmark = pytest.mark.ray

SET = [arg for item in TINY for arg in ("--set", item)]


QUIET = {"demo", "train", "unlearn", "compare"}  # the commands with progress bars


def run(capsys, *argv):
    code = main([*argv, *(["--quiet"] if argv[0] in QUIET else [])])
    out, err = capsys.readouterr()
    return code, out, err


def strict_json(text: str):
    """Parse as strict JSON parsers do (Python's json accepts NaN and Infinity; they don't)."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_train_unlearn_evaluate_inspect_and_the_exclusion_reference(tmp_path, capsys, ray_cluster):
    store, reference = str(tmp_path / "sisa"), str(tmp_path / "reference")
    code, out, _ = run(capsys, "train", "--store", store, *SET, "--json")
    trained = strict_json(out)  # slice 0's rows have no loss: null, not NaN
    assert code == 0 and trained["slices_trained"] == 9
    assert any(row["slice"] == 0 for row in trained["slices"]) and "NaN" not in out

    ids = pick(StoreConfig(uri=store), [(0, 1, 0), (1, 3, 2)])
    code, out, _ = run(capsys, "unlearn", "--store", store, "--ids", ",".join(map(str, ids)), "--json")
    report = json.loads(out)
    assert code == 0 and sorted(report["deleted"]) == sorted(ids) and report["slices_retrained"] == 3 + 1

    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("# deleted above\n" + "\n".join(map(str, ids)) + "\n")
    code, out, _ = run(capsys, "train", "--store", reference, *SET, "--exclude-ids-file", str(ids_file))
    assert code == 0 and "trained 9 slice(s)" in out

    shas = []
    for location in (store, reference):
        code, out, _ = run(capsys, "inspect", "--store", location, "--json")
        info = json.loads(out)
        assert code == 0 and info["data"]["tombstones"] == 2
        shas.append([s["model_sha256"] for s in info["shards"]])
    assert shas[0] == shas[1]

    code, out, _ = run(capsys, "evaluate", "--store", store, "--json")
    assert code == 0 and json.loads(out)["accuracy"] == evaluate(store).accuracy > 30  # the API's number; chance is 10
    code, out, _ = run(capsys, "evaluate", "--store", store, "--aggregation", "mean_softmax")
    assert code == 0 and "ensemble accuracy (mean_softmax)" in out
    code, out, _ = run(capsys, "inspect", "--store", store)
    assert code == 0 and "checkpoints [####]" in out

    # already deleted: a no-op that says so; bad ids: exit 2 and a clear message
    code, out, _ = run(capsys, "unlearn", "--store", store, "--ids-file", str(ids_file))
    assert code == 0 and "already deleted" in out
    code, _, err = run(capsys, "unlearn", "--store", store, "--ids", "1,x")
    assert code == 2 and "not integers: 'x'" in err


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    code, _, err = run(capsys, "evaluate", "--store", str(tmp_path / "nothing"))
    assert code == 2 and "no raysisa run at" in err
    code, _, err = run(capsys, "train", "--store", str(tmp_path / "x"), "--set", "train.epochs=0")
    assert code == 2 and "train.epochs" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: alexnet}\n")
    code, _, err = run(capsys, "train", "--store", str(tmp_path / "x"), "--config", str(bad))
    assert code == 2 and "unknown model 'alexnet'" in err


def test_errors_are_one_json_document_with_json(tmp_path, capsys):
    code, out, err = run(capsys, "evaluate", "--store", str(tmp_path / "nothing"), "--json")
    error = strict_json(out)["error"]
    assert code == 2 and error["kind"] == "StoreNotFoundError" and "no raysisa run at" in error["message"] and not err
    code, out, _ = run(capsys, "unlearn", "--store", str(tmp_path / "nothing"), "--ids", "1,x", "--json")
    assert code == 2 and strict_json(out)["error"]["kind"] == "InvalidIdsError"


def test_version_and_flags_where_they_apply(tmp_path, capsys):
    from raysisa import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"raysisa {__version__}"
    # global flags before or after the command
    for argv in (["-v", "inspect", "--store", str(tmp_path)], ["inspect", "--store", str(tmp_path), "-v"]):
        args = build_parser().parse_args(argv)
        assert args.verbose and args.log_format == "text"
    assert build_parser().parse_args(["--log-format", "json", "inspect", "--store", "x"]).log_format == "json"
    assert not build_parser().parse_args(["inspect", "--store", "x"]).verbose
    # flags a command does not use are not offered
    for argv in (["evaluate", "--store", "x", "--address", "auto"], ["inspect", "--store", "x", "--quiet"],
                 ["requests", "--store", "x", "--lease-wait", "3"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "random 1%," in capsys.readouterr().out


def test_shard_resources_from_the_command_line(tmp_path, capsys):
    from raysisa.cli import _cluster

    args = build_parser().parse_args(["unlearn", "--store", "s", "--ids", "1", "--gpus-per-shard", "0.5", "--cpus-per-shard", "2"])
    cluster = _cluster(args)
    assert (cluster.gpus_per_shard, cluster.cpus_per_shard) == (0.5, 2.0)
    assert _cluster(build_parser().parse_args(["unlearn", "--store", "s", "--ids", "1"])).gpus_per_shard == 0.0
    assert main(["unlearn", "--store", str(tmp_path / "run"), "--ids", "1", "--gpus-per-shard", "-1"]) == 2
    assert "gpus_per_shard" in capsys.readouterr().err
    for argv in (["evaluate", "--store", "x", "--gpus-per-shard", "1"], ["subjects", "--store", "x", "--file", "f", "--cpus-per-shard", "1"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "unrecognized arguments" in capsys.readouterr().err


def test_endpoint_url_also_serves_s3_data_without_an_endpoint_of_its_own():
    from raysisa.cli import _job

    config = str(Path(__file__).resolve().parents[2] / "cluster/configs/cifar10-parquet.yaml")
    argv = ["train", "--store", "s3://b/run", "--config", config, "--endpoint-url", "http://127.0.0.1:9000"]
    assert _job(build_parser().parse_args(argv), []).data.storage_options == {"endpoint_url": "http://127.0.0.1:9000"}
    own = ["data.storage_options.endpoint_url=http://10.0.0.1:9000"]
    assert _job(build_parser().parse_args(argv), own).data.storage_options == {"endpoint_url": "http://10.0.0.1:9000"}
    assert _job(build_parser().parse_args(argv), ["data.uri=/local/cifar"]).data.storage_options == {}
    assert _job(build_parser().parse_args(argv[:-2]), []).data.storage_options == {}


def test_a_relative_store_is_refused_inside_a_ray_job(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what Ray sets for a job's entrypoint
    for argv in (["train", "--store", "runs/digits"], ["inspect", "--store", "file://runs/x"], ["demo", "--store", "demo"]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "relative local path inside a Ray job" in err and argv[2] in err
    study = Path(__file__).resolve().parents[2] / "tune_configs" / "digits.yaml"
    code, _, err = run(capsys, "sweep", str(study), "--storage", "./sweeps")
    assert code == 2 and "--storage ./sweeps is a relative local path inside a Ray job" in err
    assert list(tmp_path.iterdir()) == []  # nothing was written
    code, _, err = run(capsys, "inspect", "--store", str(tmp_path / "absolute"))  # absolute paths pass on
    assert code == 2 and "no raysisa run at" in err
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    code, _, err = run(capsys, "inspect", "--store", "runs/digits")  # outside a job, relative is fine
    assert code == 2 and "no raysisa run at" in err


def test_json_log_lines(tmp_path, capsys):
    import logging

    from raysisa.cli import configure_logging

    try:
        configure_logging(True, "json")
        logging.getLogger("raysisa.test").info("hello %s", "there")
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert line["message"] == "hello there" and line["level"] == "INFO" and line["logger"] == "raysisa.test"
    finally:
        configure_logging(False)


def test_train_from_a_torchvision_data_dir(tmp_path, capsys, ray_cluster):
    from tests import fakes

    fakes.write_cifar10(tmp_path / "data", per_batch=12, n_test=10)
    store = str(tmp_path / "c10")
    args = ["--set", "data.source=cifar10", "--set", "data.verify_checksums=false", "--set", "sharding.num_shards=2"]
    args += ["--set", "sharding.num_slices=2", "--set", "train.epochs=2", "--set", "model.width=4"]
    code, out, err = run(capsys, "train", "--store", store, "--data-dir", str(tmp_path / "data"), *args, "--json")
    assert code == 0, err
    assert json.loads(out)["slices_trained"] == 4
    code, out, _ = run(capsys, "inspect", "--store", store, "--json")
    assert json.loads(out)["data"]["name"] == "cifar10" and json.loads(out)["data"]["train_samples"] == 60


def test_ids_files(tmp_path):
    path = tmp_path / "ids.json"
    path.write_text("[1, 2, 3]")
    assert read_ids_file(str(path)) == [1, 2, 3]
    path.write_text("4, 5\n6 # six\n")
    assert read_ids_file(str(path)) == ["4", "5", "6"]
    path.write_text("[1, 2")
    with pytest.raises(InvalidIdsError, match="not valid"):
        read_ids_file(str(path))
    with pytest.raises(InvalidIdsError, match="cannot read ids file"):
        read_ids_file(str(tmp_path / "missing"))


def test_compare_command_in_ray_actors(tmp_path, capsys, ray_cluster):
    config = tmp_path / "compare.yaml"
    config.write_text(
        "data: {limit: 300}\n"
        "sharding: {num_shards: 2, num_slices: 2}\n"
        "model: {width: 8}\n"
        "train: {epochs: 6, batch_size: 32}\n"
        "compare:\n"
        "  name: cli\n"
        "  scenario: {kind: noniid, classes: [2, 5], fraction: 0.5}\n"
        "  method_args: {finetune: {epochs: 1}, del: {epochs: 1}}\n"
    )
    out = tmp_path / "out"
    code, stdout, err = run(
        capsys, "compare", "--config", str(config), "--store", str(tmp_path / "store"), "--methods", "finetune,del",
        "--seeds", "0,1", "--out", str(out), "--json",
    )
    assert code == 0, err
    report = json.loads(stdout)
    assert {r["method"] for r in report["results"]} == {"original", "retrain", "finetune", "del"}
    assert set(report["forget_sets"]) == {"0", "1"}
    assert sorted(p.name for p in out.iterdir()) == ["gaps.png", "report.json", "report.md"]
    code, _, err = run(capsys, "compare", "--config", str(config), "--store", str(tmp_path / "s2"), "--methods", "sisa_magic")
    assert code == 2 and "unknown unlearning method 'sisa_magic'" in err


def test_quantized_runs_from_the_cli(tmp_path, capsys, ray_cluster):
    """--bits/--scheme on train (then exact unlearning of the 4-bit run) and on compare."""
    store, reference = str(tmp_path / "q"), str(tmp_path / "q-ref")
    quant = ["--bits", "4", "--scheme", "brevitas"]
    code, out, err = run(capsys, "train", "--store", store, *SET, *quant, "--json")
    assert code == 0, err
    ids = pick(StoreConfig(uri=store), [(2, 1, 0)])
    code, out, err = run(capsys, "unlearn", "--store", store, "--ids", str(ids[0]), "--json")
    assert code == 0 and json.loads(out)["deleted"] == ids
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(f"{ids[0]}\n")
    assert run(capsys, "train", "--store", reference, *SET, *quant, "--exclude-ids-file", str(ids_file))[0] == 0
    infos = [json.loads(run(capsys, "inspect", "--store", location, "--json")[1]) for location in (store, reference)]
    assert infos[0]["config"]["model"]["quant"] == {"scheme": "brevitas", "w_bits": 4, "a_bits": 8}
    assert [s["model_sha256"] for s in infos[0]["shards"]] == [s["model_sha256"] for s in infos[1]["shards"]]

    config = tmp_path / "compare.yaml"
    config.write_text("data: {limit: 200}\nsharding: {num_shards: 1, num_slices: 1}\nmodel: {width: 8}\ntrain: {epochs: 4, batch_size: 32}\n"
                      "compare: {method_args: {qmul: {epochs: 1}}}\n")
    code, out, err = run(capsys, "compare", "--config", str(config), "--store", str(tmp_path / "c"), "--methods", "qmul", "--bits", "2", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["job"]["model"]["quant"]["w_bits"] == 2
    assert {r["method"] for r in report["results"]} == {"original", "retrain", "qmul"}
    code, _, err = run(capsys, "train", "--store", str(tmp_path / "bad"), *SET, "--bits", "3")
    assert code == 2 and "w_bits" in err


@pytest.mark.parametrize("command", ["demo", "train", "unlearn", "evaluate", "inspect", "compare", "forget", "requests", "coordinator", "subjects"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and "--store" in capsys.readouterr().out


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "raysisa", "--help"], capture_output=True, text=True, check=True).stdout
    assert "demo" in out and "unlearn" in out


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys, ray_cluster):
    code, out, _ = run(capsys, "demo", "--store", str(tmp_path / "demo"), "--json")
    result = json.loads(out)
    assert code == 0
    assert result["bit_identical_to_retrain"] is True
    assert result["deleted"] == 15 and result["shards_retrained"] >= 1
    assert result["accuracy_after"] > 90 and result["slices_retrained"] <= result["slices_total"]


def test_forget_requests_and_subjects_commands(tmp_path, capsys, ray_cluster):
    store = str(tmp_path / "forget")
    assert run(capsys, "train", "--store", store, *SET)[0] == 0
    ids = pick(StoreConfig(uri=store), [(0, 3, 0), (1, 3, 1)])
    code, out, err = run(capsys, "forget", "--store", store, "--ids", ",".join(map(str, ids)), "--key", "cli-1", "--wait", "exact", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["ack"]["ids"] == 2 and result["status"]["state"] == "exact"
    rid = result["ack"]["request_id"]
    code, out, _ = run(capsys, "forget", "--store", store, "--ids", ",".join(map(str, ids)), "--key", "cli-1")
    assert code == 0 and "already submitted with this key" in out
    code, out, _ = run(capsys, "requests", "--store", store)
    assert code == 0 and rid in out and "exact" in out
    code, out, _ = run(capsys, "requests", "--store", store, "--id", rid, "--json")
    assert json.loads(out)["receipt"]["ids"] == sorted(ids)

    subjects = tmp_path / "subjects.json"
    subjects.write_text(json.dumps({"user-7": pick(StoreConfig(uri=store), [(2, 2, 0)])}))
    assert run(capsys, "subjects", "--store", store, "--file", str(subjects))[0] == 0
    code, out, err = run(capsys, "forget", "--store", store, "--subject", "user-7", "--wait", "applied", "--json")
    assert code == 0, err
    assert json.loads(out)["status"]["state"] in ("applied_exact", "applied_approximate", "exact")

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = run(capsys, "subjects", "--store", store, "--file", str(bad))
    assert code == 2 and "subjects file" in err and "is not valid JSON" in err
    code, _, err = run(capsys, "forget", "--store", store, "--ids", "999999999")
    assert code == 2 and "never existed" in err
    code, _, err = run(capsys, "coordinator", "status", "--store", store)
    assert code == 2 and "--address" in err
    code, out, _ = run(capsys, "inspect", "--store", store)
    assert code == 0 and "exact" in out
