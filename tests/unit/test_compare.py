"""`compare`: retrain plus methods on one forget set, metrics, seeds, reports."""

import io
import json

import pytest
from PIL import Image

from raysisa import LocalPool, StoreConfig, parse_config
from raysisa.errors import ConfigError
from raysisa.evaluation import compare
from raysisa.evaluation.compare import CompareReport
from raysisa.store import ObjectStore

BASE = ["data.limit=400", "train.epochs=10", "model.width=8", "train.batch_size=32"]
SINGLE = [*BASE, "sharding.num_shards=1", "sharding.num_slices=1"]
QUICK = "compare.method_args={finetune: {epochs: 2, batch_size: 32}, random_label: {epochs: 2, lr: 0.05, batch_size: 32}, grad_ascent: {epochs: 2, lr: 0.01, batch_size: 32}}"


def test_classwise_single_model_with_two_seeds(tmp_path):
    job = parse_config({}, [*SINGLE, "compare.scenario.kind=classwise", "compare.scenario.classes=[1]", "compare.seeds=[0, 1]",
                           "compare.methods=[finetune, random_label, grad_ascent]", QUICK, "compare.name=cw"])
    report = compare(job, StoreConfig(uri=str(tmp_path)), LocalPool())
    summary = report.summary()
    assert report.methods() == ["original", "retrain", "finetune", "random_label", "grad_ascent"]
    # class-wise retrain never saw the class: UA 100 and MIA-Efficacy about 100
    assert summary["retrain"]["UA"]["mean"] == 100.0 and summary["retrain"]["MIA"]["mean"] >= 90
    assert summary["retrain"]["avg_gap"]["mean"] == 0.0
    # the original memorised it
    assert summary["original"]["UA"]["mean"] <= 5 and summary["original"]["MIA"]["mean"] <= 20
    assert summary["random_label"]["UA"]["mean"] > summary["original"]["UA"]["mean"]
    assert 300 < report.evaluation_sets["test"] < 359  # class 1 left out of the 359 test digits

    objects = ObjectStore(StoreConfig(uri=str(tmp_path)))
    md = objects.get_bytes("reports/cw/report.md").decode()
    assert "| retrain |" in md and "±" in md  # two seeds give mean ± std
    data = json.loads(objects.get_bytes("reports/cw/report.json"))
    assert {r["seed"] for r in data["results"]} == {0, 1}
    assert CompareReport.from_dict(data).to_dict() == report.to_dict()  # report.json reads back
    assert data["job"]["compare"]["method_args"]["finetune"]["epochs"] == 2
    rl = next(r for r in data["results"] if r["method"] == "random_label")
    assert rl["args"]["lr"] == 0.05 and rl["args"]["loop"] == "sequential"  # every hyperparameter
    with Image.open(io.BytesIO(objects.get_bytes("reports/cw/gaps.png"))) as img:
        assert img.format == "PNG" and img.width > 300
    assert sorted(k for k in objects.list("forget_sets"))[0].startswith("forget_sets/classwise-seed0-")


def test_ensemble_backdoor_cleanse(tmp_path):
    poison = ["data.poison.fraction=0.1", "data.poison.target=0", "data.poison.patch=2", "data.poison.margin=1", "data.poison.value=255"]
    job = parse_config({}, [*BASE, *poison, "sharding.num_shards=2", "sharding.num_slices=2", "train.epochs=16",
                           "compare.scenario.kind=backdoor", "compare.methods=[finetune]", QUICK])
    report = compare(job, StoreConfig(uri=str(tmp_path)), LocalPool())
    rows = {r.method: r for r in report.results}
    assert rows["original"].metrics["ASR"] > 50  # the trigger works on the poisoned ensemble
    assert rows["retrain"].metrics["ASR"] < rows["original"].metrics["ASR"]
    assert rows["finetune"].shards_updated == [0, 1]


def test_prune_first_keeps_sparsity(tmp_path):
    job = parse_config({}, [*SINGLE, "compare.scenario.kind=random", "compare.scenario.fraction=0.1", "compare.methods=[finetune]",
                           "compare.prune.sparsity=0.7", "compare.prune.epochs=1", QUICK])
    report = compare(job, StoreConfig(uri=str(tmp_path)), LocalPool())
    assert [r.method for r in report.results] == ["original", "retrain", "finetune"]
    assert report.results[0].args["prune"]["sparsity"] == 0.7
    # the sparse original, the masked retrain and the unlearned model all keep 70% zeros
    assert all(r.notes["conv_sparsity"] >= 0.7 for r in report.results)


@pytest.mark.parametrize(
    ("overrides", "methods", "needle"),
    [
        ([], ["nope"], "unknown unlearning method 'nope'"),
        (["compare.method_args={finetune: {lr: -1}}"], ["finetune"], "method 'finetune'.*lr"),
        (["compare.method_args={bogus: {lr: 1}}"], None, "unknown method\\(s\\): bogus"),
    ],
)
def test_bad_compare_input(tmp_path, overrides, methods, needle):
    job = parse_config({}, [*SINGLE, *overrides])
    with pytest.raises(ConfigError, match=needle):
        compare(job, StoreConfig(uri=str(tmp_path)), LocalPool(), methods=methods)
    assert not any(tmp_path.iterdir())  # nothing trained or written
