"""The sweeps' tuned hyperparameters as a method's defaults for one setting
(raysisa/methods/tuned.py): which setting a run is, what compare starts from, and that
the shipped table agrees with the studies it came from."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from raysisa import parse_config
from raysisa.config.recipe import SUPPORTED_BITS
from raysisa.evaluation.compare import resolve_methods
from raysisa.methods import get_method, tuned
from raysisa.methods.tuned import Setting, tuned_args, tuned_table
from raysisa.tune import load_study

ROOT = Path(__file__).resolve().parents[2]


def _job(*overrides: str, compare: dict | None = None):
    return parse_config({"compare": compare or {}}, list(overrides))


@pytest.fixture
def table(tmp_path, monkeypatch):
    """A tuned.json with Q-MUL tuned for cifar10/small_cnn at 4 bits only."""
    path = tmp_path / "tuned.json"
    entry = {"method": "qmul", "setting": {"dataset": "cifar10", "model": "small_cnn", "bits": 4},
             "params": {"lr": 0.0353, "epochs": 5, "agr": False}, "source": {"study": "tune_configs/qmul-cifar10.yaml"}}
    path.write_text(json.dumps({"entries": [entry]}))
    monkeypatch.setattr(tuned, "TABLE_PATH", path)
    tuned_table.cache_clear()
    yield path
    tuned_table.cache_clear()


CIFAR_W4 = ("data.source=parquet", "data.uri=s3://bucket/copies/cifar10/?x=1", "model.quant.w_bits=4")


def test_a_runs_setting_is_its_data_set_model_and_weight_bits():
    assert Setting.of(_job(*CIFAR_W4).spec) == Setting("cifar10", "small_cnn", 4)
    assert Setting.of(_job("data.source=parquet", "data.uri=/data/cifar10").spec) == Setting("cifar10", "small_cnn", 32)
    assert Setting.of(_job().spec) == Setting("digits", "small_cnn", 32)
    assert str(Setting("cifar10", "small_cnn", 4)) == "cifar10/small_cnn/W4"


def test_compare_starts_from_the_tuned_values_of_its_setting(table):
    job = _job(*CIFAR_W4)
    methods = resolve_methods(job.compare, ["qmul", "finetune"], Setting.of(job.spec))
    assert (methods["qmul"].args.lr, methods["qmul"].args.epochs, methods["qmul"].args.agr) == (0.0353, 5, False)
    assert methods["finetune"].args == get_method("finetune").args  # not tuned there: the reference's defaults


def test_method_args_override_tuned_values_and_tuning_can_be_turned_off(table):
    job = _job(*CIFAR_W4, compare={"method_args": {"qmul": {"lr": 0.002}}})
    qmul = resolve_methods(job.compare, ["qmul"], Setting.of(job.spec))["qmul"]
    assert (qmul.args.lr, qmul.args.epochs) == (0.002, 5)
    off = _job(*CIFAR_W4, compare={"tuned_defaults": False})
    assert resolve_methods(off.compare, ["qmul"], Setting.of(off.spec))["qmul"].args == get_method("qmul").args


def test_other_settings_and_variants_keep_the_references_defaults(table):
    for overrides in [("data.source=parquet", "data.uri=/data/cifar10", "model.quant.w_bits=2"), ("model.quant.w_bits=4",)]:
        job = _job(*overrides)
        assert resolve_methods(job.compare, ["qmul"], Setting.of(job.spec))["qmul"].args == get_method("qmul").args
    job = _job(*CIFAR_W4, compare={"variants": {"rl": {"method": "qmul", "args": {"similar_labels": False}}}})
    rl = resolve_methods(job.compare, ["rl"], Setting.of(job.spec))["rl"]
    assert rl.args == get_method("qmul", {"similar_labels": False}).args


def _inside(domain, value) -> bool:
    if domain.kind == "choice":
        return value in domain.values
    low, high = domain.values
    return low <= value < high or (domain.kind != "randint" and math.isclose(value, high))


def test_the_shipped_table_is_valid_and_matches_its_studies():
    entries = tuned_table()
    assert entries, "tuned.json holds no entry"
    for entry in entries:
        get_method(entry.method, entry.params)  # valid hyperparameters
        assert entry.setting.bits in SUPPORTED_BITS
        study = load_study(ROOT / entry.source["study"])
        assert entry.method in study.methods and entry.setting.bits in study.quantization.bits
        assert Setting.of(study.spec(entry.setting.bits, study.scenario.seeds[0])) == entry.setting
        method = study.methods[entry.method]
        for name, domain in method.space.items():
            assert _inside(domain, entry.params[name]), (entry.method, entry.setting, name)
        assert {k: entry.params[k] for k in method.fixed} == method.fixed
        assert tuned_args(entry.method, entry.setting) == entry
        assert 1 <= entry.source["epochs_run"] <= entry.params.get("epochs", entry.source["epochs_run"])
    # the mission's comparison is tuned on both sides at every bit width
    tuned_bits = {(e.method, e.setting.bits) for e in entries if e.setting.dataset == "cifar10"}
    assert {(m, b) for m in ("qmul", "random_label") for b in SUPPORTED_BITS} <= tuned_bits
