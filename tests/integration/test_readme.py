"""Every code block of README.md is executed or checked here, so the examples cannot rot.

- The first ```bash block (install + demo, then the test command) is what `.ci/run` runs:
  checked against `.ci/run` itself, never run inside pytest (it would run this suite).
- The ```python blocks run in order, as a reader would paste them.
- Every other ```bash block runs for real, command by command and in order, in one
  temporary working directory, as the `raysisa` entry point in a subprocess (see
  :func:`test_readme_commands_run` for the few placeholders the test fills in).
- The ```yaml blocks are the studies in `tune_configs/` they show (same data once parsed),
  and valid studies.
- The unlabelled blocks under "How it works": the package layout names files that exist,
  and the storage layout matches a real store's keys.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

import raysisa

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _fenced() -> list[tuple[str, str]]:
    """README's fenced blocks in order: (language or "", text)."""
    blocks, lang, lines = [], None, []
    for line in README.splitlines(keepends=True):
        if line.startswith("```"):
            if lang is None:
                lang, lines = line[3:].strip(), []
            else:
                blocks.append((lang, "".join(lines)))
                lang = None
        elif lang is not None:
            lines.append(line)
    assert lang is None, "README has an unclosed code block"
    return blocks


def _blocks(lang: str) -> list[str]:
    return [text for kind, text in _fenced() if kind == lang]


def _commands(block: str) -> list[str]:
    """The block's command lines, backslash continuations joined (comments kept)."""
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


# --- the first block: what CI runs ----------------------------------------------------------


def test_readme_first_block_is_what_ci_runs():
    """The first ```bash block is exactly install + demo, then the test command, and
    `.ci/run` extracts and runs that second line (its extraction is run here on README)."""
    first = _commands(_blocks("bash")[0])
    assert first == ['python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/raysisa demo',
                     ".venv/bin/python -m pytest -q"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m venv .venv" in ci and '.venv/bin/pip install -q -e ".[dev]"' in ci
    extract = re.search(r"^test_command=\$\((.*)\)$", ci, flags=re.M).group(1)
    got = subprocess.run(["bash", "-c", extract], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert got == first[1]
    assert f'[ "$test_command" = "{first[1]}" ]' in ci and 'eval "$test_command"' in ci
    # the demo of the first line runs in tests/integration/test_cli.py (test_demo_runs_end_to_end)
    assert "def test_demo_runs_end_to_end" in (ROOT / "tests" / "integration" / "test_cli.py").read_text()


# --- yaml blocks: the shipped studies ------------------------------------------------------


def test_readme_yaml_blocks_are_the_shipped_studies():
    from raysisa.tune.spec import load_study, parse_study

    blocks = _blocks("yaml")
    assert len(blocks) == 2
    for block in blocks:
        shown = yaml.safe_load(block)
        path = ROOT / "tune_configs" / f"{shown['name']}.yaml"
        assert shown == yaml.safe_load(path.read_text()), f"README's study {shown['name']} differs from {path.name}"
        assert parse_study(shown).to_dict() == load_study(path).to_dict()


# --- unlabelled blocks: the layouts ---------------------------------------------------------


def test_readme_has_only_checked_kinds_of_blocks():
    assert {kind for kind, _ in _fenced()} == {"bash", "python", "yaml", ""}
    assert len(_blocks("")) == 2  # the package layout and the storage layout, checked below


def test_readme_package_layout_names_real_files():
    """Every entry of the `raysisa/` tree exists, and so does every `*.py` its description
    names inside that package."""
    block = next(b for b in _blocks("") if b.startswith("raysisa/\n"))
    package, entries, current = ROOT / "raysisa", {}, None
    for line in block.splitlines()[1:]:
        if re.match(r"^  \S", line):  # "  name(s)     description"; deeper lines continue it
            current, *text = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            entries[current] = " ".join(text)
        else:
            entries[current] += " " + line.strip()
    assert len(entries) >= 12
    for head, text in entries.items():
        for name in (n.strip() for n in head.split(",")):
            assert (package / name).exists(), f"README lists raysisa/{name}"
        if head.endswith("/"):
            for module in re.findall(r"\b(\w+\.py)\b", text):
                assert (package / head / module).is_file(), f"README names raysisa/{head}{module}"


def check_store_layout(store: Path) -> None:
    """Every key of a trained (and unlearned) store matches a line of README's storage
    layout, and every line but the in-flight ones (journal, lease) matches a key."""
    block = next(b for b in _blocks("") if b.startswith("raysisa.json"))
    patterns = []
    for line in block.splitlines():
        parts = re.match(r"(\S+(?: \+ \S+)*)", line.strip()).group(1).split(" + ")
        folder = parts[0].rsplit("/", 1)[0] + "/" if "/" in parts[0] else ""
        patterns += [p if "/" in p else folder + p for p in parts]  # "<key>.safetensors + <key>.json"

    def regex(pattern: str) -> re.Pattern:
        return re.compile("^" + "[^/]+".join(re.escape(p) for p in re.split(r"<[a-z]+>", pattern)) + "$")

    compiled = {p: regex(p) for p in patterns}
    keys = [str(p.relative_to(store)) for p in store.rglob("*") if p.is_file()]
    unmatched = [k for k in keys if not any(r.match(k) for r in compiled.values())]
    assert not unmatched, f"store keys README's layout does not show: {unmatched}"
    unused = [p for p, r in compiled.items() if not any(r.match(k) for k in keys)]
    assert sorted(unused) == ["_log/journal/<version>.json", "_log/lease/<token>.json"], unused


# --- python blocks ----------------------------------------------------------------------------


@pytest.mark.ray
def test_readme_python_blocks_run(tmp_path, monkeypatch, ray_cluster, capsys):
    """README's Python blocks run, in order, as a reader would paste them (on the session's
    Ray cluster, with a shorter training recipe so the suite stays fast)."""
    blocks = _blocks("python")
    assert len(blocks) >= 2
    load_config = raysisa.load_config
    # the README's recipe, trained for fewer epochs with narrower models
    monkeypatch.setattr(raysisa, "load_config", lambda path, overrides=(): load_config(path, [*overrides, "train.epochs=4", "model.width=8"]))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block.replace('"cluster/', f'"{ROOT}/cluster/'), "README.md", "exec"), namespace)
    report = namespace["report"]
    assert report.deleted == [17, 42] and report.shards_affected
    assert raysisa.status("./runs/digits", namespace["ack"].request_id)["state"] == "exact"
    assert capsys.readouterr().out.startswith(f"{report.shards_affected} {report.slices_retrained} ")


# --- bash blocks ------------------------------------------------------------------------------


def _cifar_like_parquet(folder: Path, train: int = 150, test: int = 40) -> None:
    """A stand-in for the CIFAR-10 Parquet copy: 32x32 RGB PNGs, 10 classes, columns id,
    label, image (the layout `data.source: parquet` reads), ids 0.. for train."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for split, count, first in (("train", train, 0), ("test", test, 10_000_000)):
        labels = np.arange(count) % 10
        images = []
        for label in labels:
            pixels = rng.integers(0, 64, (32, 32, 3), dtype=np.uint8)
            pixels[:, :, label % 3] += np.uint8(25 * (label + 1) % 190)  # learnable: colour by class
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            images.append(buffer.getvalue())
        table = pa.table({"id": pa.array(np.arange(first, first + count), pa.int64()),
                          "label": pa.array(labels, pa.int64()), "image": pa.array(images, pa.binary())})
        pq.write_table(table, folder / f"{split}.parquet")


def _model_shas(store: str) -> list[str]:
    return [shard["model_sha256"] for shard in raysisa.inspect(store)["shards"]]


def _group(block: str) -> str:
    """Which test runs a bash block: the sweeps, the comparison, or the run and its requests."""
    return "sweep" if "raysisa sweep" in block else "compare" if "raysisa compare" in block else "run"


def test_readme_bash_blocks_are_all_run():
    groups = [_group(b) for b in _blocks("bash")[1:]]
    assert sorted(set(groups)) == ["compare", "run", "sweep"] and len(groups) == 5, groups


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_readme_run_and_request_commands(tmp_path, ray_cluster, s3_endpoint, s3_bucket):
    """"Using it" and "Deletion requests and the coordinator" (see :func:`_run_readme`)."""
    _run_readme("run", tmp_path, ray_cluster, s3_endpoint, s3_bucket)


@pytest.mark.ray
@pytest.mark.slow
def test_readme_compare_command(tmp_path, ray_cluster, s3_endpoint, s3_bucket):
    _run_readme("compare", tmp_path, ray_cluster, s3_endpoint, s3_bucket)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_readme_sweep_commands(tmp_path, ray_cluster, s3_endpoint, s3_bucket):
    """"Hyperparameter sweeps" and "Tuning the hybrid boundary", in order on one `./sweeps`."""
    _run_readme("sweep", tmp_path, ray_cluster, s3_endpoint, s3_bucket)


def _run_readme(group: str, tmp_path, ray_cluster, s3_endpoint, s3_bucket) -> None:
    """The commands of README's bash blocks of one group (after the first block), run for
    real and in order in one temporary working directory (`raysisa` is the venv's entry
    point), each checked for what README says it does.

    What the test fills in, and why:

    - `s3://bucket` is a fresh bucket on the session's moto S3 server and
      `127.0.0.1:9000` its address (the conftest's dummy credentials, no EC2 metadata).
    - `ray://head:10001` (a long-lived cluster's Ray Client address) is the address of the
      session's Ray cluster (`ray_cluster`), which has no Ray Client server; every command
      also gets `RAY_ADDRESS` = that address, so work runs on that cluster as it would
      inside a job instead of each command starting its own. `coordinator start` therefore
      starts the real detached coordinator actor there; README's own `coordinator stop`
      line stops it, and the test stops it too if a command fails in between.
    - The data behind `s3://bucket/data/cifar10` is a small CIFAR-like Parquet set
      (:func:`_cifar_like_parquet`, 150 training images) uploaded before the command, and
      that command alone gets `--set` overrides (`small_cnn` of width 8, 4 epochs) after
      README's flags: ResNet-18 for 30 epochs is hours of CPU. Its config, data source,
      data and store URIs, endpoints and sharding are README's.
    - `ids.txt` and `subjects.json` are written from what README says they hold.
    - Before `train --verify` the test corrupts one checkpoint of `./runs/digits`, so the
      command has something to rebuild, as its comment promises.
    - The sweeps: `./sweeps` gets the shipped digits study as it is (README's "about a
      minute"). The S3 line (about the storage URI) runs that study with 1 trial per cell
      instead of 2, and the hybrid study runs with 2 trials instead of 8 (its 8 take about
      3 minutes): copies of the shipped files with `trials` changed and nothing else.
      tests/integration/test_sweep*.py test the sweeps themselves.
    """
    import s3fs

    endpoint = s3_endpoint
    host = endpoint.removeprefix("http://")
    gcs = ray_cluster.get_runtime_context().gcs_address
    raysisa_cmd = Path(sys.executable).with_name("raysisa")
    argv0 = [str(raysisa_cmd)] if raysisa_cmd.exists() else [sys.executable, "-m", "raysisa"]
    env = {**__import__("os").environ, "RAY_ADDRESS": gcs}
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    bucket = s3_bucket.removeprefix("s3://")
    work = tmp_path
    (work / "cluster").symlink_to(ROOT / "cluster")
    (work / "tune_configs").symlink_to(ROOT / "tune_configs")
    (work / "trimmed").mkdir()
    for name, trials in (("digits", 1), ("hybrid-digits", 2)):
        study = yaml.safe_load((ROOT / "tune_configs" / f"{name}.yaml").read_text())
        (work / "trimmed" / f"{name}.yaml").write_text(yaml.safe_dump({**study, "trials": trials}))

    def trimmed(name: str) -> Callable[[str], str]:
        return lambda line: line.replace(f"tune_configs/{name}.yaml", f"trimmed/{name}.yaml")

    def more(*flags: str) -> Callable[[str], str]:
        return lambda line: line + " " + " ".join(flags)

    def substitute(line: str) -> str:
        return (line.replace("s3://bucket", s3_bucket).replace("http://127.0.0.1:9000", endpoint)
                .replace("127.0.0.1:9000", host).replace("ray://head:10001", gcs))

    # ---- the files README's commands read, from what README says they hold
    ids_txt = re.search(r"`ids\.txt` holds the ids deleted above \(`([^`]+)`", README).group(1)
    (work / "ids.txt").write_text(ids_txt + "\n")
    subjects_line = next(c for b in _blocks("bash") for c in _commands(b) if "--file subjects.json" in c)
    subjects = json.loads(re.search(r"#\s*(\{.*?\})", subjects_line).group(1))
    (work / "subjects.json").write_text(json.dumps(subjects))

    state: dict = {}
    c10 = f"{s3_bucket}/runs/c10"

    def out_json(out: str) -> dict:
        return json.loads(out)

    # ---- per command: what to prepare, extra flags, and what README says it does
    def before_cifar():
        _cifar_like_parquet(work / "cifar")
        fs.put(str(work / "cifar") + "/", f"{bucket}/data/cifar10/", recursive=True)

    def check_train_digits(out):
        assert "trained 20 slice(s) (0 already done) of 5 shards x 4 slices" in out

    def check_train_c10(out):
        assert f"trained 20 slice(s) (0 already done) of 5 shards x 4 slices at {c10}" in out
        info = raysisa.inspect(raysisa.StoreConfig(uri=c10, endpoint_url=endpoint))
        assert info["data"]["name"] == "parquet" and info["data"]["train_samples"] == 150

    def check_unlearn(out):
        deleted = [int(i) for i in re.split(r"[\s,]+", ids_txt)]
        assert "retrained" in out and "of shard(s) [0, 4]" in out  # 17 and 1001 in shard 4, 42 in shard 0
        assert raysisa.inspect(str(work / "runs" / "digits"))["data"]["tombstones"] == len(deleted)

    def check_evaluate(out):
        accuracy = float(re.search(r"ensemble accuracy \(mean_softmax\): ([0-9.]+)% on [0-9]+ test samples", out).group(1))
        assert accuracy > 90

    def check_inspect(out):
        info = out_json(out)
        state["unlearned"] = [s["model_sha256"] for s in info["shards"]]
        assert len(state["unlearned"]) == 5 and all(state["unlearned"]) and info["data"]["tombstones"] == 3

    def check_reference(out):
        assert "trained 20 slice(s)" in out
        assert _model_shas(str(work / "runs" / "ref")) == state["unlearned"]  # exact unlearning: bit-identical

    def before_verify():
        blob = sorted((work / "runs" / "digits" / "checkpoints" / "shard=1" / "slice=4").glob("*.safetensors"))[0]
        data = bytearray(blob.read_bytes())
        data[-1] ^= 0xFF
        blob.write_bytes(bytes(data))

    def check_verify(out):
        assert "rebuilt 1 corrupt checkpoint(s)" in out
        assert _model_shas(str(work / "runs" / "digits")) == state["unlearned"]
        check_store_layout(work / "runs" / "digits")

    def check_compare(out):
        rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and not line.startswith("| method")]
        assert rows == ["original", "retrain", "finetune", "del"]
        report = json.loads((work / "report" / "report.json").read_text())
        assert list(report["forget_sets"]) == ["0"] and {r["seed"] for r in report["results"]} == {0}
        assert {r["method"] for r in report["results"]} == {"original", "retrain", "finetune", "del"}
        assert (work / "report" / "report.md").is_file()
        assert (work / "report" / "gaps.png").read_bytes().startswith(b"\x89PNG")

    def check_sweep(out):
        assert "2 cells, 4 trials (0 failed)" in out and "(trained now)" in out
        assert (work / "sweeps" / "digits" / "report" / "best.json").is_file()

    def check_resume(out):
        assert "2 cells, 4 trials (0 failed)" in out and "(all reused)" in out

    def check_sweep_report(out):
        files = {p.name for p in (work / "sweep-report" / "digits").iterdir()}
        assert {"trials.parquet", "trials.md", "best.json", "best.md", "gap_vs_bits.png", "gap_vs_rte.png"} <= files

    def check_sweep_s3(out):  # the study on S3 (tests/integration/test_sweep.py runs it on a folder)
        assert "2 cells, 2 trials (0 failed)" in out and "originals and references: 4 slices trained (trained now)" in out
        assert all(fs.exists(f"{bucket}/sweeps/digits/report/{name}") for name in ("best.json", "best.md", "trials.parquet"))
        assert fs.exists(f"{bucket}/sweeps/digits/qmul-w4") and fs.exists(f"{bucket}/sweeps/digits/qmul-w32")
        assert len(fs.ls(f"{bucket}/sweeps/models/originals")) == 2 and len(fs.ls(f"{bucket}/sweeps/models/references")) == 2

    def check_hybrid(out):
        assert "study hybrid-digits (hybrid)" in out and "2 trials (0 failed)" in out
        assert (work / "sweeps" / "hybrid-digits" / "report" / "pareto.png").is_file()

    def check_hybrid_report(out):
        assert "study hybrid-digits (hybrid)" in out and "Pareto front" in out and "study digits:" not in out

    def check_forget(out):
        assert out.splitlines()[-1] == "state: exact"
        state["forget"] = re.search(r"request (\S+): 2 id\(s\) logged", out).group(1)

    def check_subjects(out):
        assert out.strip() == f"registered 1 subject(s), {sum(map(len, subjects.values()))} id(s)"

    def check_forget_subject(out):
        assert re.search(r"request \S+: 2 id\(s\) logged", out) and "state: pending" in out

    def check_requests(out):
        rows = {r["request_id"]: r for r in out_json(out)["requests"]}
        assert len(rows) == 2 and rows[state["forget"]]["state"] == "exact"

    def check_coordinator_start(out):
        from raysisa.coordinator.actor import get_coordinator

        assert "requests: {}" in out and "errors: []" in out
        assert get_coordinator(raysisa.StoreConfig(uri=c10, endpoint_url=endpoint)) is not None

    def check_forget_c10(out):
        assert out.splitlines()[-1] in ("state: applied_exact", "state: applied_approximate", "state: exact")

    def check_coordinator_stop(out):
        from raysisa.coordinator.actor import get_coordinator

        assert out.strip() == "stopped: True"
        assert get_coordinator(raysisa.StoreConfig(uri=c10, endpoint_url=endpoint)) is None

    # README command (by a distinctive part) -> (prepare, extra flags, check)
    Check = tuple[Callable[[], None] | None, Callable[[str], str] | None, Callable[[str], None]]
    small = more("--set model.name=small_cnn --set model.width=8 --set train.epochs=4")
    checks: dict[str, Check] = {
        "raysisa train   --store ./runs/digits  ": (None, None, check_train_digits),
        "cifar10-parquet.yaml": (before_cifar, small, check_train_c10),
        "raysisa unlearn --store ./runs/digits --ids 17,42,1001": (None, None, check_unlearn),
        "raysisa evaluate": (None, None, check_evaluate),
        "raysisa inspect": (None, None, check_inspect),
        "--exclude-ids-file ids.txt": (None, None, check_reference),
        "--verify": (before_verify, None, check_verify),
        "raysisa compare": (None, None, check_compare),
        "sweep tune_configs/digits.yaml --storage ./sweeps  ": (None, None, check_sweep),
        "--resume": (None, None, check_resume),
        "sweep-report --storage ./sweeps --out": (None, None, check_sweep_report),
        "--storage \"s3://": (None, trimmed("digits"), check_sweep_s3),
        "sweep tune_configs/hybrid-digits.yaml": (None, trimmed("hybrid-digits"), check_hybrid),
        "--study hybrid-digits": (None, None, check_hybrid_report),
        "--key ticket-980 --wait exact": (None, None, check_forget),
        "raysisa subjects": (None, None, check_subjects),
        "--subject alice@example.org": (None, None, check_forget_subject),
        "raysisa requests": (None, None, check_requests),
        "coordinator start": (None, None, check_coordinator_start),
        "runs/c10 --endpoint-url http://127.0.0.1:9000 --ids 3": (None, None, check_forget_c10),
        "coordinator stop": (None, None, check_coordinator_stop),
    }

    commands = [c for block in _blocks("bash")[1:] if _group(block) == group for c in _commands(block)]
    assert all(c.startswith("raysisa ") for c in commands), commands
    used, timings = set(), []
    try:
        for line in commands:
            matches = [k for k in checks if k in line]
            assert len(matches) == 1, f"README command without exactly one check here: {line!r} ({matches})"
            prepare, rewrite, check = checks[matches[0]]
            used.add(matches[0])
            if prepare:
                prepare()
            command = substitute(line.split(" # ", 1)[0].rstrip())
            argv = argv0 + shlex.split(rewrite(command) if rewrite else command)[1:]
            started = time.monotonic()
            done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
            timings.append((round(time.monotonic() - started, 1), line[:60]))
            assert done.returncode == 0, f"{line}\nexit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}"
            check(done.stdout)
    finally:
        from raysisa.coordinator.actor import stop_coordinator

        if group == "run":
            stop_coordinator(raysisa.StoreConfig(uri=c10, endpoint_url=endpoint))  # False when README's stop did it
        print("\n".join(f"{s:>6}s  {line}" for s, line in timings))
    mine = {k for k in checks if any(k in c for c in commands)}
    assert used == mine and all(any(k in c for b in _blocks("bash")[1:] for c in _commands(b)) for k in checks), \
        f"checks for commands README no longer has: {[k for k in checks if k not in README]}"


def test_readme_storage_layout_is_a_real_stores(trained):
    """The storage layout block against a store trained and unlearned in this process."""
    from raysisa import LocalPool, unlearn
    from tests.sisa_checks import pick

    unlearn(trained, pick(trained, [(0, 2, 0)]), pool=LocalPool())
    check_store_layout(Path(trained.uri))
