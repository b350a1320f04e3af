"""Sweep studies as data: every shipped study validates, bad ones are rejected before any
trial starts with a message naming the field, and a trial (without Ray) reports once per
epoch the same Avg Gap the comparison path computes."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from raysisa.config import StoreConfig
from raysisa.errors import ConfigError
from raysisa.tune import load_study, parse_study
from raysisa.tune.spec import Domain, HybridStudySpec, StudySpec

ROOT = Path(__file__).resolve().parents[2]

SMALL = {
    "name": "small",
    "scenario": {
        "job": {"data": {"source": "digits", "limit": 300}, "model": {"width": 8}, "train": {"epochs": 4, "batch_size": 32}},
        "forget": {"kind": "random", "fraction": 0.1},
        "seeds": [0, 1],
    },
    "quantization": {"bits": [4]},
    "methods": {"qmul": {"space": {"lr": {"loguniform": [0.005, 0.05]}}, "fixed": {"epochs": 2, "batch_size": 64}}},
    "objective": {"ta_floor": 20},
    "trials": 2,
}


def with_change(path: str, value) -> dict:
    """SMALL with the value at dotted ``path`` replaced (``...`` deletes it)."""
    data = copy.deepcopy(SMALL)
    *parents, leaf = path.split(".")
    node = data
    for part in parents:
        node = node[part]
    if value is ...:
        del node[leaf]
    else:
        node[leaf] = value
    return data


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tune_configs").glob("*.yaml")))
def test_shipped_studies_validate(path):
    study = load_study(ROOT / path)
    if isinstance(study, HybridStudySpec):  # the coordinator's policy on a stream (tests/unit/test_hybrid_study.py)
        assert study.spec().sharding.num_shards > 1, path
        return
    assert study.cells(), path
    for cell in study.cells():  # every cell's original recipe is a valid run
        assert study.spec(cell.bits, study.scenario.seeds[0]).sharding.num_shards == 1


def test_the_mission_studies_are_shipped():
    studies = [load_study(p) for p in (ROOT / "tune_configs").glob("*.yaml")]
    assert {"digits", "qmul-cifar10", "del-cifar10", "l1-sparse-cifar10", "hybrid-digits"} <= {s.name for s in studies}
    methods = {m for s in studies if isinstance(s, StudySpec) for m in s.methods}
    assert {"qmul", "del", "l1_sparse", "random_label", "finetune", "influence"} <= methods


@pytest.mark.parametrize(
    "path, value, field",
    [
        ("methods.fancy", {"space": {"lr": {"uniform": [0.1, 0.2]}}}, "methods.fancy"),
        ("methods.qmul.space.lrr", {"uniform": [0.1, 0.2]}, "methods.qmul.space.lrr"),
        ("methods.qmul.fixed.agr_normm", "global_l2", "methods.qmul.fixed.agr_normm"),
        ("methods.qmul.space.lr", {"uniform": [0.05, 0.01]}, "methods.qmul.space.lr"),
        ("methods.qmul.space.lr", {"choice": []}, "methods.qmul.space.lr"),
        ("methods.qmul.space", {}, "methods.qmul.space"),
        ("methods.qmul.space.lr", {"uniform": [0.01, 50.0]}, "methods.qmul.space.lr"),  # lr > 10 is invalid for the method
        ("methods.qmul.space.loop", {"choice": ["sequential", "sideways"]}, "methods.qmul.space.loop"),
        ("methods.retrain", {"space": {"epochs": {"choice": [1]}}}, "methods.retrain"),
        ("quantization.bits", [3, 4], "quantization.bits"),
        ("quantization.bits", [4, 4], "quantization.bits"),
        ("quantization.scheme", "fp4", "quantization.scheme"),
        ("scheduler", {"kind": "hyperband"}, "scheduler.kind"),
        ("search", {"algorithm": "grid"}, "search.algorithm"),
        ("objective.ta_floor", 150, "objective.ta_floor"),
        ("objective.ta_floor", -1, "objective.ta_floor"),
        ("trials", 0, "trials"),
        ("scenario.seeds", [], "scenario.seeds"),
        ("scenario.job.sharding", {"num_shards": 3}, "scenario.job"),
        ("scenario.job.train", {"epochs": 0}, "scenario.job.train.epochs"),
        ("name", "../escape", "name"),
    ],
)
def test_bad_studies_name_the_field(path, value, field):
    with pytest.raises(ConfigError) as caught:
        parse_study(with_change(path, value))
    message = str(caught.value)
    assert message.startswith("invalid study: ") and f"{field}:" in message, message


def test_study_files_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read study file"):
        load_study(tmp_path / "missing.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00name")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_study(binary)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_study(listing)


def test_domains_map_to_tune():
    from ray.tune.search.sample import Categorical, Float, Integer

    assert isinstance(Domain(kind="loguniform", values=[1e-3, 1e-1]).to_tune(), Float)
    assert isinstance(Domain.model_validate({"randint": [1, 5]}).to_tune(), Integer)
    assert isinstance(Domain.model_validate({"choice": [True, False]}).to_tune(), Categorical)
    assert Domain.model_validate({"randint": [1, 5]}).extremes() == [1, 4]  # Tune's randint excludes high


def test_objective_penalises_trials_under_the_ta_floor():
    study = parse_study(SMALL)
    above, below = study.objective.score(5.0, 30.0), study.objective.score(1.0, 10.0)
    assert above == 5.0 and below == 100.0 + 1.0 + 10.0 and below > above
    assert study.objective.score(float("nan"), 50.0) > below
    floor = study.objective.ta_floor
    assert study.objective.feasible(5.0, floor) and not study.objective.feasible(5.0, floor - 0.01)
    assert not study.objective.feasible(float("nan"), 50.0)


def test_each_seed_has_its_own_original_recipe():
    study = parse_study(SMALL)
    a, b = study.spec(4, 0), study.spec(4, 1)
    assert a.train.seed == 0 and b.train.seed == 1 and a.fingerprint() != b.fingerprint()
    assert a.model.quant.w_bits == 4 and study.spec(32, 0).model.quant is None


def test_trial_reports_each_epoch_the_gap_compare_computes(tmp_path):
    """run_trial (what a Tune trial runs) against the compare path on the same stored models."""
    from raysisa import LocalPool
    from raysisa.evaluation.evaluator import Evaluator
    from raysisa.evaluation.scenarios import load_forget_set
    from raysisa.methods import get_method
    from raysisa.sisa.approximate import approximate_unlearn
    from raysisa.sisa.run import SisaRun
    from raysisa.store import ObjectStore
    from raysisa.tune.artifacts import prepare
    from raysisa.tune.trial import TrialSetup, run_trial

    study = parse_study(SMALL)
    models = StoreConfig(uri=str(tmp_path / "models"))
    prepared = [prepare(study, 4, seed, models) for seed in study.scenario.seeds]
    assert all(p.slices_trained == 2 for p in prepared)  # original + reference, one slice each
    again = prepare(study, 4, 0, models)
    assert again.slices_trained == 0 and again.reference_metrics == prepared[0].reference_metrics

    reports: list[dict] = []
    setup = TrialSetup.of(study, "qmul", 4, models, prepared)
    last = run_trial({"lr": 0.02}, setup, reports.append)
    assert [r["epoch"] for r in reports] == [1, 2] and last == reports[-1]

    gaps = []
    for p in prepared:
        run = SisaRun.open(p.original)
        forget, _ = load_forget_set(ObjectStore(models), p.forget_key)
        method = get_method("qmul", {"epochs": 2, "batch_size": 64, "lr": 0.02})
        state = approximate_unlearn(run, forget, method, LocalPool(), p.seed)[0].tensors
        metrics = Evaluator(run, forget).metrics([state])
        gaps.append(metrics.avg_gap(p.reference_scores()))
        assert last[f"avg_gap_seed{p.seed}"] == pytest.approx(gaps[-1], abs=1e-9)
    assert last["avg_gap"] == pytest.approx(np.mean(gaps)) and last["avg_gap_std"] == pytest.approx(np.std(gaps))
    assert last["objective"] == (last["avg_gap"] if last["TA"] >= 20 else pytest.approx(100 + last["avg_gap"] + 20 - last["TA"]))
    assert torch.get_num_threads() == 1


def test_trial_of_a_one_shot_method_reports_once(tmp_path):
    from raysisa.tune.artifacts import prepare
    from raysisa.tune.trial import TrialSetup, run_trial

    data = with_change("methods", {"influence": {"space": {"alpha": {"loguniform": [1.0, 1000.0]}}}})
    data["scenario"]["seeds"] = [0]
    study = parse_study(data)
    models = StoreConfig(uri=str(tmp_path / "models"))
    prepared = [prepare(study, 4, 0, models)]
    reports: list[dict] = []
    run_trial({"alpha": 10.0}, TrialSetup.of(study, "influence", 4, models, prepared), reports.append)
    assert len(reports) == 1 and reports[0]["epoch"] == 0 and reports[0]["rte_seconds"] > 0
