"""`raysisa sweep` of a hybrid study (``kind: hybrid``: the coordinator's policy on a recorded
deletion stream) on a real local Ray cluster: a tiny study end to end, its report against
Tune and against a brute-force Pareto front, the scenario (ensemble, stream, PRS baseline)
prepared once and reused without writes, and bad studies refused naming the field."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import signal
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raysisa.config import StoreConfig
from raysisa.errors import ConfigError
from raysisa.store import ObjectStore
from raysisa.tune import load_study, parse_study, sweep, sweep_report
from raysisa.tune.hybrid import SCRATCH_PREFIX, HybridSetup, prepare_hybrid, run_hybrid_trial
from raysisa.tune.hybrid_report import HYBRID_EXPERIMENT, HYBRID_FILES
from raysisa.tune.paths import SweepPaths
from tests import processes

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY = {
    "kind": "hybrid",
    "name": "hybrid-tiny",
    "scenario": {
        "job": {
            "data": {"source": "digits", "limit": 400},
            "model": {"width": 8},
            "train": {"epochs": 6, "batch_size": 32},
            "sharding": {"num_shards": 3, "num_slices": 3},
        },
        "stream": {"singles": 4, "bursts": 1, "burst_share": 0.2, "seed": 0},
    },
    "fixed": {"dpus.lr": 0.01},
    "space": {
        "policy": {"choice": ["hs", "ohs"]},
        "rho": {"uniform": [0.05, 0.95]},
        "dpus.epochs": {"randint": [1, 3]},
    },
    "objective": {"accuracy_floor": 1.0},
    "search": {"algorithm": "random", "seed": 0},
    "trials": 3,
}


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _scratch() -> set[str]:
    """Trial copies of the ensemble left in the temporary folder (there should be none)."""
    return set(glob.glob(os.path.join(tempfile.gettempdir(), f"{SCRATCH_PREFIX}*")))


def _non_dominated(rows: list[dict]) -> set[str]:
    """Brute force: the trials no other trial beats on one of (requests/hour up, gap down)
    while being at least as good on the other."""
    front = set()
    for row in rows:
        beaten = any(
            o["requests_per_hour"] >= row["requests_per_hour"] and o["accuracy_gap"] <= row["accuracy_gap"]
            and (o["requests_per_hour"] > row["requests_per_hour"] or o["accuracy_gap"] < row["accuracy_gap"])
            for o in rows
        )
        if not beaten:
            front.add(row["trial"])
    return front


def _best_from_tune(paths: SweepPaths) -> tuple[str, float, int]:
    from ray.tune import ExperimentAnalysis, ResultGrid

    grid = ResultGrid(ExperimentAnalysis(paths.experiment(HYBRID_EXPERIMENT)))
    best = grid.get_best_result(metric="objective", mode="min", scope="last")
    return best.metrics["trial_id"], best.metrics["objective"], len(grid)


def _baseline_on_store(models: Path) -> dict:
    """The PRS baseline as stored under models/ (read directly, not through the report)."""
    [key] = glob.glob(str(models / "hybrid" / "*" / "baselines" / "*-prs.json"))
    return json.loads(Path(key).read_text())


def test_hybrid_study_end_to_end_then_the_scenario_is_reused(ray_cluster, tmp_path):
    scratch = _scratch()
    study = parse_study(TINY)
    result = sweep(study, str(tmp_path))
    paths = SweepPaths.of(str(tmp_path), study.name)
    assert result.cells == {"hybrid": {"trials": 3, "errors": 0, "finished": 3, "pending": 0}}
    assert result.slices_trained == 9 and result.baseline_replayed  # 3 shards x 3 slices, PRS replayed once

    files = paths.files
    for name in HYBRID_FILES:
        assert files.exists(f"report/{name}"), name
    assert files.get_bytes("report/pareto.png").startswith(b"\x89PNG")
    table = pq.read_table(io.BytesIO(files.get_bytes("report/trials.parquet"))).to_pylist()
    assert len(table) == 3 and all(r["status"] == "TERMINATED" and not r["error"] for r in table)
    assert all({"param.policy", "param.rho", "param.dpus.epochs"} <= set(r) for r in table)

    # every trial is scored against the PRS baseline stored under models/, by the documented objective
    baseline = _baseline_on_store(tmp_path / "models")
    assert baseline["policy"] == "prs" and baseline["shard_decisions"]["update"] == 0
    assert len(baseline["timeline"]) == 5  # 4 singles and 1 burst
    floor = study.objective.accuracy_floor
    for row in table:
        assert row["prs_final_accuracy"] == baseline["final_accuracy"]
        assert row["accuracy_gap"] == pytest.approx(baseline["final_accuracy"] - row["final_accuracy"])
        assert row["gain"] == pytest.approx(baseline["apply_seconds"] / row["apply_seconds"])
        expected = -row["requests_per_hour"] if row["accuracy_gap"] <= floor else row["accuracy_gap"] - floor
        assert row["objective"] == pytest.approx(expected) and row["feasible"] == (row["accuracy_gap"] <= floor)
        assert row["retrains"] + row["updates"] >= 5  # every request touched at least one shard

    # the table's best is Tune's best, and best.json names it
    lowest = min(table, key=lambda r: r["objective"])
    trial, objective, count = _best_from_tune(paths)
    assert count == 3 and trial == lowest["trial"] and objective == pytest.approx(lowest["objective"])
    summary = files.get_json("report/best.json")
    assert summary["kind"] == "hybrid" and summary["best"]["hybrid"]["trial"] == lowest["trial"]
    assert summary["best"]["hybrid"]["params"] == {k[len("param."):]: v for k, v in lowest.items() if k.startswith("param.")}

    # the front is exactly the non-dominated trials; pareto.md lists them and no other trial
    front = _non_dominated(table)
    assert {r["trial"] for r in table if r["pareto"]} == front == {e["trial"] for e in summary["pareto"]}
    pareto_md = files.get_bytes("report/pareto.md").decode()
    assert all(t in pareto_md for t in front) and not any(r["trial"] in pareto_md for r in table if r["trial"] not in front)
    feasible = [r for r in table if r["feasible"]]
    if feasible:  # the recommendation: the fastest trial within the floor (the best by the objective)
        fastest = max(feasible, key=lambda r: r["requests_per_hour"])
        assert summary["recommendation"]["trial"] == fastest["trial"] == lowest["trial"]
        assert f"(trial {fastest['trial']})" in pareto_md.split("## Recommendation", 1)[1]
    else:
        assert summary["recommendation"] is None and "No trial kept" in pareto_md

    # trials replayed on private copies: the stored ensemble holds no request, and no copy is left behind
    base = ObjectStore(StoreConfig.from_dict(files.get_json("prepared.json")["base"]))
    assert not [k for k in base.list() if k.startswith(("ledger/", "approx/", "receipts/"))]
    assert _scratch() == scratch

    # a second study over the same scenario trains nothing, replays no baseline, writes nothing under models/
    before = _mtimes(tmp_path / "models")
    other = parse_study({**TINY, "name": "hybrid-tiny-rho", "trials": 1, "fixed": {"policy": "hs"},
                         "space": {"rho": {"uniform": [0.2, 0.8]}}})
    again = sweep(other, str(tmp_path))
    assert again.cells == {"hybrid": {"trials": 1, "errors": 0, "finished": 1, "pending": 0}}
    assert again.slices_trained == 0 and not again.baseline_replayed
    assert _mtimes(tmp_path / "models") == before
    assert again.report["baseline"] == summary["baseline"]

    # the same study again is refused without --resume; with it, nothing runs again
    with pytest.raises(ConfigError, match="pass --resume"):
        sweep(study, str(tmp_path))
    resumed = sweep(study, str(tmp_path), resume=True)
    assert resumed.cells == result.cells and resumed.slices_trained == 0 and not resumed.baseline_replayed

    # sweep-report writes the report again from the experiment
    files.delete([f"report/{name}" for name in HYBRID_FILES])
    [regenerated] = sweep_report(str(tmp_path), study.name)
    assert all(files.exists(f"report/{name}") for name in HYBRID_FILES)
    assert {e["trial"] for e in regenerated["pareto"]} == front and regenerated["best"] == summary["best"]


def _tree_digest(store: StoreConfig) -> str:
    objects = ObjectStore(store)
    digest = hashlib.sha256()
    for key in objects.list():
        digest.update(key.encode() + objects.get_bytes(key))
    return digest.hexdigest()


def test_a_trial_is_a_deterministic_replay_on_a_copy(tmp_path):
    """Ray-free: what a Tune trial runs. A PRS trial reproduces the baseline's accuracy exactly
    (gap 0), a hybrid trial replays the same twice, and the stored ensemble is never changed."""
    study = parse_study(TINY)
    models = StoreConfig(uri=str(tmp_path / "models"))
    prepared = prepare_hybrid(study, models)
    assert prepared.replayed and prepared.requests == 5 and prepared.slices_trained == 9
    base = _tree_digest(prepared.base)
    setup = HybridSetup.of(study, models, prepared)

    reports: list[dict] = []
    prs = run_hybrid_trial({"policy": "prs"}, setup, reports.append)
    assert reports == [prs] and prs["accuracy_gap"] == 0.0 and prs["updates"] == 0
    assert prs["retrains"] == prepared.baseline["shard_decisions"]["retrain"]

    config = {"policy": "hs", "rho": 0.05, "dpus.epochs": 1}  # rho small: heavy work is updated
    first, second = (run_hybrid_trial(config, setup, lambda _: None) for _ in range(2))
    assert first["updates"] > 0 and first["restore_seconds"] > 0
    for key in ("final_accuracy", "min_accuracy", "exact_accuracy", "retrains", "updates"):
        assert first[key] == second[key], key
    assert first["exact_accuracy"] == prs["final_accuracy"]  # restoring exactness ends where PRS did
    assert _tree_digest(prepared.base) == base

    again = prepare_hybrid(study, models)
    assert not again.replayed and again.slices_trained == 0 and again.baseline == prepared.baseline


def _prepare_hybrid_in_child(models: str) -> None:
    prepare_hybrid(parse_study(TINY), StoreConfig(uri=models))


# What a replay's outcome is made of (its timings differ from run to run).
OUTCOME = ("initial_accuracy", "final_accuracy", "min_accuracy", "exact_accuracy", "shard_decisions")


@pytest.mark.parametrize(("point", "trains"), [("train.slice@6", 5), ("batch.recorded@2", 0)])
def test_prepare_hybrid_recovers_from_a_kill(tmp_path, point, trains):
    """Killed while training the ensemble (after its 6th checkpoint of 12, 3 shards x (initial
    + 3 slices): 4 of its 9 slices are trained), or while replaying the PRS baseline on its private copy: the next prepare
    trains only what is missing, records the same stream and stores the same baseline as an
    uninterrupted prepare; the baseline is written last, so a kill leaves none."""
    clean = prepare_hybrid(parse_study(TINY), StoreConfig(uri=str(tmp_path / "clean")))
    models = tmp_path / "models"
    assert processes.call_crashing(_prepare_hybrid_in_child, (str(models),), point) == -signal.SIGKILL
    assert not glob.glob(str(models / "hybrid" / "*" / "baselines" / "*"))
    again = prepare_hybrid(parse_study(TINY), StoreConfig(uri=str(models)))
    assert again.replayed and again.slices_trained == trains < clean.slices_trained
    assert ObjectStore(StoreConfig(uri=str(models))).get_json(again.stream_key) == ObjectStore(
        StoreConfig(uri=str(tmp_path / "clean"))).get_json(clean.stream_key)
    assert {k: again.baseline[k] for k in OUTCOME} == {k: clean.baseline[k] for k in OUTCOME}
    assert again.initial_accuracy == clean.initial_accuracy


def test_bad_hybrid_studies_fail_before_ray_naming_the_field(tmp_path):
    cases = {
        "space.rhoo": {**TINY, "space": {**TINY["space"], "rhoo": {"uniform": [0.1, 0.9]}}},  # unknown parameter
        "space.rho": {**TINY, "space": {**TINY["space"], "rho": {"uniform": [-1.0, 0.5]}}},  # invalid at an extreme
        "space.dpus.epochs": {**TINY, "space": {**TINY["space"], "dpus.epochs": {"randint": [-2, 3]}}},
        "fixed.idle_seconds": {**TINY, "fixed": {"idle_seconds": 0}},  # the replay sets it
    }
    for field, data in cases.items():
        with pytest.raises(ConfigError, match=rf"^invalid study: {field.replace('.', '[.]')}: "):
            parse_study(data)
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cases["space.rho"]))
    with pytest.raises(ConfigError, match=r"space\.rho: -1\.0 is not a valid value"):
        load_study(path)
