"""`raysisa sweep` on a real local Ray cluster: the shipped digits study end to end on a
folder (interrupted by Ctrl-C, then resumed), models trained once across sweeps, resume after
a real kill. The same study on S3 (moto) is README's S3 sweep line, run and checked by
tests/integration/test_readme.py."""

from __future__ import annotations

import copy
import io
import json
import os
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raysisa.config import StoreConfig
from raysisa.errors import StoreBusyError
from raysisa.tune import load_study, parse_study, sweep
from raysisa.tune.artifacts import prepare
from raysisa.tune.paths import SweepPaths
from tests import processes

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "tune_configs" / "digits.yaml"
REPORT_FILES = ("trials.parquet", "trials.md", "best.json", "best.md", "gap_vs_bits.png", "gap_vs_rte.png")


def _best_from_tune(paths: SweepPaths, cell) -> dict:
    from ray.tune import ExperimentAnalysis, ResultGrid

    grid = ResultGrid(ExperimentAnalysis(paths.cell(cell)))
    best = grid.get_best_result(metric="objective", mode="min", scope="last")
    return {"objective": best.metrics["objective"], "trial": best.metrics["trial_id"], "count": len(grid)}


def _check_study(study, paths: SweepPaths, result) -> None:
    assert result.cells == {c.name: {"trials": 2, "errors": 0, "finished": 2, "pending": 0} for c in study.cells()}
    files = paths.files
    for name in REPORT_FILES:
        assert files.exists(f"report/{name}"), name
    assert files.get_bytes("report/gap_vs_bits.png").startswith(b"\x89PNG")
    table = pq.read_table(io.BytesIO(files.get_bytes("report/trials.parquet"))).to_pylist()
    assert len(table) == 4 and {(r["method"], r["bits"]) for r in table} == {("qmul", 4), ("qmul", 32)}
    assert all(r["status"] == "TERMINATED" and r["epochs_run"] >= 1 for r in table)
    best = files.get_json("report/best.json")["best"]
    for cell in study.cells():
        rows = [r for r in table if r["bits"] == cell.bits]
        lowest = min(rows, key=lambda r: r["objective"])
        tuned = _best_from_tune(paths, cell)
        assert tuned["count"] == 2
        assert tuned["objective"] == pytest.approx(lowest["objective"]) and tuned["trial"] == lowest["trial"]
        assert best[cell.name]["trial"] == lowest["trial"] and best[cell.name]["objective"] == pytest.approx(lowest["objective"])
        sampled = {k[len("param."):]: v for k, v in lowest.items() if k.startswith("param.") and v is not None}
        assert best[cell.name]["params"] == sampled and set(sampled) == {"lr", "epochs"}


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _trial_states(cell_dir: Path) -> dict[str, str]:
    """Trial id -> status, from Tune's experiment state file (what a resume reads)."""
    states = sorted(cell_dir.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except (ValueError, OSError):
        return {}  # being rewritten
    out = {}
    for entry in data.get("trial_data", []):
        trial = json.loads(entry[0]) if isinstance(entry[0], str) else entry[0]
        out[trial["trial_id"]] = trial["status"]
    return out


def _starts(cell_dir: Path) -> dict[str, int]:
    """Trial id -> how many times it started (its result.json restarts at iteration 1)."""
    counts = {}
    for result in cell_dir.glob("*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        for line in lines:
            if line.get("training_iteration") == 1:
                counts[line["trial_id"]] = counts.get(line["trial_id"], 0) + 1
    return counts


TRIALS = 5  # the kill comes after 2 finish, while the other 3 are still running or pending


def test_resume_after_the_sweep_is_killed_runs_no_finished_trial_again(ray_cluster, tmp_path):
    import ray

    data = load_study(DIGITS).to_dict()
    data = copy.deepcopy(data)
    data.update(name="resume", trials=TRIALS, scheduler={"kind": "fifo"}, resources={"cpu": 1, "max_concurrent": 1})
    data["quantization"]["bits"] = [32]
    data["methods"]["qmul"]["space"]["epochs"] = {"choice": [2]}
    study_file = tmp_path / "resume.yaml"
    study_file.write_text(json.dumps(data))
    storage = tmp_path / "sweeps"
    cell_dir = storage / "resume" / "qmul-w32"

    address = ray.get_runtime_context().gcs_address
    # Tune saves its experiment state (what a resume reads) at most every 10 s by default; a
    # period of 0 saves it every step, so the kill below lands while trials are still pending
    child = processes.start(["sweep", str(study_file), "--storage", str(storage), "--address", address],
                            env={"TUNE_GLOBAL_CHECKPOINT_S": "0"})
    deadline = time.monotonic() + 240
    finished_before: set[str] = set()
    while time.monotonic() < deadline:
        states = _trial_states(cell_dir)
        finished_before = {t for t, s in states.items() if s == "TERMINATED"}
        if len(finished_before) >= 2:
            break
        time.sleep(0.2)
    assert len(finished_before) >= 2, f"the sweep did not finish 2 trials in time: {_trial_states(cell_dir)}"
    # a second sweep of the same study while this one runs is refused, naming the holder
    with pytest.raises(StoreBusyError, match="being swept by another process"):
        sweep(load_study(study_file), str(storage), resume=True)
    process, _ = child
    os.kill(process.pid, signal.SIGKILL)
    killed = processes.finish(child, timeout=60)
    assert killed.code == -signal.SIGKILL
    states = _trial_states(cell_dir)
    assert len(states) < TRIALS or set(states.values()) != {"TERMINATED"}, "the sweep finished before the kill"

    result = sweep(load_study(study_file), str(storage), resume=True)
    assert result.cells == {"qmul-w32": {"trials": TRIALS, "errors": 0, "finished": TRIALS, "pending": 0}}
    starts = _starts(cell_dir)
    assert len(starts) == TRIALS
    assert all(starts[t] == 1 for t in finished_before), starts  # finished trials never ran again
    assert set(_trial_states(cell_dir).values()) == {"TERMINATED"}


def test_ctrl_c_stops_the_whole_sweep_and_resume_finishes_it(ray_cluster, tmp_path):
    # Tune's fit returns on SIGINT; the sweep must stop there, not start the next cell
    import ray

    storage = tmp_path / "sweeps"
    first = storage / "digits" / "qmul-w4"
    address = ray.get_runtime_context().gcs_address
    child = processes.start(["sweep", str(DIGITS), "--storage", str(storage), "--address", address],
                            env={"TUNE_GLOBAL_CHECKPOINT_S": "0"})
    deadline = time.monotonic() + 600  # the study's four models train first
    while time.monotonic() < deadline and not _trial_states(first):
        time.sleep(0.2)
    assert _trial_states(first), "the first cell did not start in time"
    process, _ = child
    os.kill(process.pid, signal.SIGINT)
    stopped = processes.finish(child, timeout=120)
    assert stopped.code == 130, stopped.err[-2000:]
    assert "interrupted: continue with --resume" in stopped.out
    assert not (storage / "digits" / "qmul-w32").exists()  # the next cell never started
    assert set(_trial_states(first).values()) != {"TERMINATED"}

    study = load_study(DIGITS)
    result = sweep(study, str(storage), resume=True)
    assert not result.interrupted
    _check_study(study, SweepPaths.of(str(storage), study.name), result)
    # the interrupted sweep trained the scenario's models (original and reference at 4 and 32 bits)
    assert result.slices_trained == 0 and len(list((storage / "models" / "originals").iterdir())) == 2

    # a second study over the same scenario trains nothing and writes nothing under models/
    before = _mtimes(storage / "models")
    other = parse_study({**study.to_dict(), "name": "digits-ft", "trials": 1, "search": {"algorithm": "random"},
                         "methods": {"finetune": {"space": {"lr": {"loguniform": [0.001, 0.01]}}, "fixed": {"epochs": 1}}}})
    again = sweep(other, str(storage))
    assert again.slices_trained == 0 and again.cells == {"finetune-w4": {"trials": 1, "errors": 0, "finished": 1, "pending": 0},
                                                         "finetune-w32": {"trials": 1, "errors": 0, "finished": 1, "pending": 0}}
    assert _mtimes(storage / "models") == before

    # the finished study again is refused without --resume; with it, nothing runs again
    with pytest.raises(Exception, match="pass --resume"):
        sweep(study, str(storage))
    resumed = sweep(study, str(storage), resume=True)
    assert resumed.slices_trained == 0 and resumed.cells == result.cells


def test_a_diverging_trial_is_reported_and_the_sweep_goes_on(ray_cluster, tmp_path):
    # IU with alpha 1e300 overflows the weights: that trial fails (DivergedError), the others score
    data = load_study(DIGITS).to_dict()
    data.update(name="diverge", trials=4, scheduler={"kind": "fifo"}, search={"algorithm": "random", "seed": 0},
                methods={"influence": {"space": {"alpha": {"choice": [10.0, 1e300]}}}})
    data["quantization"]["bits"] = [32]
    study = parse_study(data)
    result = sweep(study, str(tmp_path))
    paths = SweepPaths.of(str(tmp_path), study.name)
    table = pq.read_table(io.BytesIO(paths.files.get_bytes("report/trials.parquet"))).to_pylist()
    broken = [r for r in table if r["param.alpha"] == 1e300]
    assert broken and len(broken) < 4  # the seed samples both values
    assert result.cells == {"influence-w32": {"trials": 4, "errors": len(broken), "finished": 4 - len(broken), "pending": 0}}
    assert all(r["status"] == "ERROR" and r["error"] for r in broken)
    assert all(r["status"] == "TERMINATED" and not r["error"] for r in table if r["param.alpha"] == 10.0)
    assert paths.files.get_json("report/best.json")["best"]["influence-w32"]["params"] == {"alpha": 10.0}


def _prepare_in_child(study_file: str, models: str) -> None:
    prepare(load_study(study_file), 32, 0, StoreConfig(uri=models))


@pytest.fixture(scope="module")
def digits_w32(tmp_path_factory):
    """The digits study at full precision only, and its models prepared without a crash."""
    folder = tmp_path_factory.mktemp("prepare")
    data = load_study(DIGITS).to_dict()
    data["quantization"]["bits"] = [32]
    study_file = folder / "w32.yaml"
    study_file.write_text(json.dumps(data))
    clean = prepare(load_study(study_file), 32, 0, StoreConfig(uri=str(folder / "clean")))
    return study_file, clean


# (crash point, slices the recovering prepare trains): the original's ingest, its initial
# checkpoint (train.slice@1) and its trained slice (@2), then the reference's (the evaluation
# is written after both; a crash before it only re-scores)
PREPARE_CRASHES = [("ingest.object", 2), ("ingest.committed", 2), ("train.slice", 2), ("train.slice@2", 1),
                   ("ingest.committed@2", 1), ("train.slice@4", 0)]


@pytest.mark.parametrize(("point", "trains"), PREPARE_CRASHES)
def test_prepare_recovers_from_a_kill_at_each_write(digits_w32, tmp_path, point, trains):
    study_file, clean = digits_w32
    models = tmp_path / "models"
    assert processes.call_crashing(_prepare_in_child, (str(study_file), str(models)), point) == -signal.SIGKILL
    assert not list(models.glob("evaluations/*.json"))  # the evaluation is the last write
    again = prepare(load_study(study_file), 32, 0, StoreConfig(uri=str(models)))
    assert again.slices_trained == trains
    # the same models, bit for bit: the same scores as the uninterrupted prepare
    assert again.original_metrics == clean.original_metrics and again.reference_metrics == clean.reference_metrics
    assert len(list(models.glob("evaluations/*.json"))) == 1
    assert prepare(load_study(study_file), 32, 0, StoreConfig(uri=str(models))).slices_trained == 0
