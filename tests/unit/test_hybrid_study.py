"""The hybrid study (``kind: hybrid``) without Ray: its spec (dotted coordinator parameters,
errors naming the field), the objective, the Pareto front and the recommendation, a trial's
summary, and the recorded stream."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raysisa.errors import ConfigError
from raysisa.tune import load_study, parse_study
from raysisa.tune.hybrid import pareto_front, recommend, trial_summary
from raysisa.tune.spec import HybridObjective, HybridStudySpec, StudySpec, coordinator_config, coordinator_path

ROOT = Path(__file__).resolve().parents[2]

HYBRID = {
    "kind": "hybrid",
    "name": "hybrid-small",
    "scenario": {
        "job": {"data": {"source": "digits", "limit": 300}, "model": {"width": 8}, "sharding": {"num_shards": 3, "num_slices": 3}},
        "stream": {"singles": 4, "bursts": 1, "burst_share": 0.2, "seed": 0},
    },
    "fixed": {"max_drift_points": 100, "dpus.batch_size": 64},
    "space": {
        "policy": {"choice": ["hs", "ohs"]},
        "rho": {"uniform": [0.1, 0.9]},
        "ohs.budget": {"uniform": [0.05, 0.5]},
        "dpus.method": {"choice": ["neggrad_plus", "finetune"]},
        "dpus.epochs": {"randint": [1, 4]},
        "max_approx_updates": {"randint": [1, 6]},
    },
    "objective": {"accuracy_floor": 0.5},
    "trials": 3,
}


def changed(group: str, name: str, value) -> dict:
    """HYBRID with ``data[group][name] = value`` (``...`` deletes it; a group of None: top level)."""
    data = copy.deepcopy(HYBRID)
    node = data if group is None else data[group]
    if value is ...:
        del node[name]
    else:
        node[name] = value
    return data


def test_the_kind_selects_the_study_class():
    study = parse_study(HYBRID)
    assert isinstance(study, HybridStudySpec) and study.to_dict()["kind"] == "hybrid"
    assert parse_study(study.to_dict()) == study  # study.json reads back as the same kind
    method_study = {"name": "m", "methods": {"qmul": {"space": {"lr": {"uniform": [0.01, 0.02]}}}}}
    plain, explicit = parse_study(method_study), parse_study({**method_study, "kind": "methods"})
    assert isinstance(plain, StudySpec) and plain == explicit
    assert "kind" not in plain.to_dict()  # a method study's stored study.json is unchanged (a resume compares it)


def test_the_shipped_hybrid_study_validates():
    study = load_study(ROOT / "tune_configs" / "hybrid-digits.yaml")
    assert isinstance(study, HybridStudySpec) and study.name == "hybrid-digits"
    spec = study.spec()
    assert (spec.sharding.num_shards, spec.sharding.num_slices) == (5, 4)
    assert {"rho", "ohs.budget", "dpus.method", "dpus.epochs", "max_approx_updates", "max_drift_points", "policy"} <= set(study.space)
    assert study.scheduler.kind == "fifo" and study.objective.metric == "requests_per_hour"


@pytest.mark.parametrize(
    "name, path",
    [
        ("rho", ("rho",)),
        ("ohs.budget", ("ohs", "budget")),
        ("dpus.method", ("dpus", "method")),
        ("dpus.epochs", ("dpus", "args", "epochs")),
        ("dpus.args.lr", ("dpus", "args", "lr")),
        ("dpus.quantized_args.epochs", ("dpus", "quantized_args", "epochs")),
        ("max_drift_points", ("max_drift_points",)),
    ],
)
def test_dotted_names_map_into_the_coordinator_config(name, path):
    assert coordinator_path(name) == path


def test_a_trials_config_is_defaults_then_fixed_then_sampled():
    study = parse_study(HYBRID)
    config = study.coordinator({"rho": 0.3, "dpus.epochs": 3, "dpus.method": "finetune", "ohs.budget": 0.2})
    assert config.rho == 0.3 and config.ohs.budget == 0.2 and config.max_drift_points == 100
    assert config.dpus.method == "finetune" and config.dpus.args == {"epochs": 3, "batch_size": 64}
    assert config.max_approx_updates == 5 and config.policy == "ohs"  # the coordinator's defaults
    assert coordinator_config({"dpus.epochs": 1}, {"dpus.epochs": 2}).dpus.args["epochs"] == 2


@pytest.mark.parametrize(
    "group, name, value, field",
    [
        ("space", "rhoo", {"uniform": [0.1, 0.9]}, "space.rhoo"),  # unknown parameter
        ("space", "rho", {"uniform": [-1.0, 0.5]}, "space.rho"),  # invalid at an extreme
        ("space", "ohs.budget", {"uniform": [-0.5, 0.5]}, "space.ohs.budget"),
        ("space", "ohs.lr", {"uniform": [0.1, 0.5]}, "space.ohs.lr"),
        ("space", "policy", {"choice": ["hs", "fastest"]}, "space.policy"),
        ("space", "dpus.method", {"choice": ["neggrad_plus", "retrain"]}, "space.dpus.method"),  # retraining is no update
        ("space", "dpus.method", {"choice": ["bogus"]}, "space.dpus.method"),
        ("space", "dpus.lrr", {"uniform": [0.01, 0.1]}, "space.dpus.lrr"),  # no hyperparameter of the DPUS method
        ("space", "dpus.lr", {"uniform": [0.01, 100.0]}, "space.dpus.lr"),  # lr > 10 is invalid for the method
        ("space", "dpus.epochs", {"randint": [-1, 3]}, "space.dpus.epochs"),
        ("space", "window_seconds", {"uniform": [0.0, 1.0]}, "space.window_seconds"),  # set by the replay
        ("space", "max_approx_updates", {"randint": [0, 3]}, "space.max_approx_updates"),
        ("space", "rho.low", {"choice": [1]}, "space.rho.low"),
        ("fixed", "idle_seconds", 5, "fixed.idle_seconds"),
        ("fixed", "rho", 0.5, "fixed.rho"),  # also in the space
        ("fixed", "dpus.lr", -0.1, "fixed.dpus.lr"),
        ("fixed", "dpus.momentumm", 0.5, "fixed.dpus.momentumm"),
        ("objective", "accuracy_floor", -1, "objective.accuracy_floor"),
        ("objective", "metric", "accuracy", "objective.metric"),
        ("scenario", "job", {"sharding": {"num_shards": 0}}, "scenario.job.sharding.num_shards"),
        ("scenario", "job", {"compare": {}}, "scenario.job"),
        ("scenario", "stream", {"singles": 0, "bursts": 0}, "scenario.stream.singles"),
        ("scenario", "stream", {"burst_share": 1.5}, "scenario.stream.burst_share"),
        (None, "scheduler", {"kind": "asha"}, "scheduler.kind"),
        (None, "space", {}, "space"),
        (None, "kind", "sweepy", "kind"),
        (None, "trials", 0, "trials"),
    ],
)
def test_bad_hybrid_studies_name_the_field(group, name, value, field):
    with pytest.raises(ConfigError) as caught:
        parse_study(changed(group, name, value))
    message = str(caught.value)
    assert message.startswith("invalid study: ") and f"{field}:" in message, message


def test_the_objective_prefers_throughput_within_the_floor():
    objective = HybridObjective(accuracy_floor=0.5)
    fast, slow = objective.score(9000.0, 0.4), objective.score(3000.0, -2.0)
    assert fast == -9000.0 and slow == -3000.0 and fast < slow  # Tune minimises
    assert objective.score(5000.0, 0.5) == -5000.0 and objective.feasible(0.5)  # the floor itself is within
    near, far = objective.score(50_000.0, 0.6), objective.score(50_000.0, 3.0)
    assert near == pytest.approx(0.1) and far == pytest.approx(2.5)
    assert slow < near < far  # over the floor: worse than any trial within it, ordered by the excess
    assert objective.score(math.nan, 0.0) == objective.score(1.0, math.inf) == 1e9 > far
    assert not objective.feasible(math.nan)


def test_a_trial_summary_compares_with_prs():
    baseline = {"apply_seconds": 30.0, "requests_per_hour": 1200.0, "final_accuracy": 98.0}
    result = {"apply_seconds": 10.0, "requests_per_hour": 3600.0, "final_accuracy": 97.25, "min_accuracy": 96.0,
              "exact_accuracy": 98.0, "restore_seconds": 4.0, "shard_decisions": {"retrain": 2, "update": 7}}
    summary = trial_summary(result, baseline, HybridObjective(accuracy_floor=1.0))
    assert summary["accuracy_gap"] == pytest.approx(0.75) and summary["gain"] == pytest.approx(3.0)
    assert summary["objective"] == -3600.0 and summary["feasible"] == 1.0
    assert (summary["retrains"], summary["updates"]) == (2, 7) and summary["prs_final_accuracy"] == 98.0
    strict = trial_summary(result, baseline, HybridObjective(accuracy_floor=0.5))
    assert strict["objective"] == pytest.approx(0.25) and strict["feasible"] == 0.0


def _dominated(row: dict, rows: list[dict]) -> bool:
    """Brute force: another row at least as good on both (more throughput, smaller gap), better on one."""
    return any(
        o["requests_per_hour"] >= row["requests_per_hour"] and o["accuracy_gap"] <= row["accuracy_gap"]
        and (o["requests_per_hour"] > row["requests_per_hour"] or o["accuracy_gap"] < row["accuracy_gap"])
        for o in rows
    )


def test_the_pareto_front_on_a_known_set():
    rows = [
        {"trial": "a", "requests_per_hour": 9000.0, "accuracy_gap": 2.0},
        {"trial": "b", "requests_per_hour": 6000.0, "accuracy_gap": 0.2},
        {"trial": "c", "requests_per_hour": 5000.0, "accuracy_gap": 0.5},  # dominated by b
        {"trial": "d", "requests_per_hour": 3000.0, "accuracy_gap": -1.0},
        {"trial": "e", "requests_per_hour": 6000.0, "accuracy_gap": 0.2},  # equal to b: both kept
        {"trial": "f", "requests_per_hour": 9000.0, "accuracy_gap": 2.5},  # dominated by a (same throughput)
        {"trial": "g", "requests_per_hour": math.nan, "accuracy_gap": -5.0},  # never reported
    ]
    assert [r["trial"] for r in pareto_front(rows)] == ["a", "b", "e", "d"]
    floor = HybridObjective(accuracy_floor=0.5)
    assert recommend(rows, floor)["trial"] in ("b", "e")
    assert recommend(rows, HybridObjective(accuracy_floor=2.0))["trial"] == "a"
    assert recommend(rows[:1], floor) is None  # nothing within the floor
    assert pareto_front([]) == [] and recommend([], floor) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(-3, 3)), max_size=12))
def test_the_pareto_front_is_exactly_the_non_dominated_rows(points):
    rows = [{"trial": str(i), "requests_per_hour": float(r), "accuracy_gap": float(g)} for i, (r, g) in enumerate(points)]
    front = pareto_front(rows)
    assert sorted(r["trial"] for r in front) == sorted(r["trial"] for r in rows if not _dominated(r, rows))
    objective = HybridObjective(accuracy_floor=1.0)
    chosen = recommend(rows, objective)
    feasible = [r for r in rows if r["accuracy_gap"] <= 1.0]
    if not feasible:
        assert chosen is None
    else:
        assert chosen["requests_per_hour"] == max(r["requests_per_hour"] for r in feasible)
        assert chosen in front  # the recommendation is never dominated
        # and it is the trial Tune ranks best (lowest objective)
        assert objective.score(chosen["requests_per_hour"], chosen["accuracy_gap"]) == min(
            objective.score(r["requests_per_hour"], r["accuracy_gap"]) for r in rows)


def test_the_stream_is_singles_and_class_wise_bursts(trained):
    from raysisa.coordinator.replay import deletion_stream
    from raysisa.evaluation.scenarios import train_labels
    from raysisa.sisa.run import SisaRun

    run = SisaRun(trained)
    requests = deletion_stream(run, 6, 2, 0.25, seed=3)
    assert requests == deletion_stream(run, 6, 2, 0.25, seed=3) and requests != deletion_stream(run, 6, 2, 0.25, seed=4)
    ids, labels = train_labels(run)
    label = dict(zip(ids.tolist(), labels.tolist()))
    bursts = [r for r in requests if len(r) > 1]
    singles = [r for r in requests if len(r) == 1]
    assert len(singles) == 6 and len(bursts) == 2 and len(requests) == 8
    for burst in bursts:  # a share of one class, each its own class
        classes = {label[i] for i in burst}
        assert len(classes) == 1 and len(burst) == round(0.25 * int(np.sum(labels == next(iter(classes)))))
    assert len({label[b[0]] for b in bursts}) == 2
    flat = [i for r in requests for i in r]
    assert len(flat) == len(set(flat))  # every id deleted once
    assert [i for i, r in enumerate(requests) if len(r) > 1] == [2, 4]  # spread through the stream


def test_readme_shows_the_shipped_hybrid_study():
    import re

    import yaml

    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S) if "kind: hybrid" in b]
    assert len(blocks) == 1
    shown = parse_study(yaml.safe_load(blocks[0]))
    shipped = load_study(ROOT / "tune_configs" / "hybrid-digits.yaml")
    assert isinstance(shown, HybridStudySpec) and shown.space == shipped.space and shown.objective == shipped.objective
    assert shown.spec().fingerprint() == shipped.spec().fingerprint() and shown.scenario.stream == shipped.scenario.stream
