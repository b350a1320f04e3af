"""`compare`: retrain plus methods on one forget set, metrics, seeds, reports."""

import io
import json

import pytest
import torch
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


@pytest.mark.parametrize("mode", ["rewind", "finetune"])
def test_prune_first_keeps_sparsity(tmp_path, mode):
    prune = ["compare.prune.sparsity=0.7", f"compare.prune.mode={mode}", "compare.prune.epochs=1",
             "compare.prune.rewind_epoch=2", "compare.prune.retrain_epochs=2"]
    job = parse_config({}, [*SINGLE, "compare.scenario.kind=random", "compare.scenario.fraction=0.1", "compare.methods=[finetune]",
                           *prune, QUICK])
    report = compare(job, StoreConfig(uri=str(tmp_path)), LocalPool())
    assert [r.method for r in report.results] == ["original", "retrain", "finetune"]
    assert report.results[0].args["prune"]["sparsity"] == 0.7 and report.results[0].args["prune"]["mode"] == mode
    assert report.results[0].notes["prune_seconds"] > 0
    # the sparse original has the configured sparsity; the masked retrain and the unlearned model keep 70% zeros
    assert report.results[0].notes["conv_sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert all(r.notes["conv_sparsity"] >= 0.7 - 1e-3 for r in report.results)


PRUNE_RUN = ["data.limit=200", "model.width=4", "train.batch_size=32", "sharding.num_shards=1", "sharding.num_slices=1"]


def _trained(tmp_path, name, overrides):
    from raysisa.sisa.run import SisaRun

    run = SisaRun.create(parse_config({}, [*PRUNE_RUN, *overrides]).spec, StoreConfig(uri=str(tmp_path / name)))
    run.train(LocalPool())
    return run


def _rewind(run, mask, rewind_epoch, epochs):
    from raysisa.sisa.tasks import RewindRetrain

    pool = LocalPool()
    return pool.result(pool.submit(0, RewindRetrain(run.at(), mask, rewind_epoch, epochs)))


def _pruned_mask(run, sparsity):
    from raysisa.evaluation.evaluator import load_states
    from raysisa.methods import omp_prune
    from raysisa.models import build_model

    model = build_model(run.store.info, run.store.spec.model)
    model.load_state_dict(load_states(run)[0])
    return omp_prune(model, sparsity)


def test_rewind_gives_the_survivors_their_rewind_epoch_weights(tmp_path):
    """Unlearn-Sparse's rewind_lt: the survivors restart from the end of epoch 2 of the dense
    training, the weights a separate run of 2 epochs ends with (constant LR)."""
    from raysisa.evaluation.evaluator import load_states

    dense = _trained(tmp_path, "dense", ["train.epochs=5"])
    early = load_states(_trained(tmp_path, "early", ["train.epochs=2"]))[0]
    mask = _pruned_mask(dense, 0.8)
    rewound = _rewind(dense, mask, 2, 0)
    for name, value in rewound.items():
        if name in mask:
            assert torch.equal(value[mask[name]], early[name][mask[name]]) and (value[~mask[name]] == 0).all()
        else:  # BatchNorm statistics, biases, the classifier: their epoch-2 values
            assert torch.equal(value, early[name]), name
    assert not any(torch.equal(early[n], load_states(dense)[0][n]) for n in mask)  # epoch 2 is not the converged model

    retrained = _rewind(dense, mask, 2, 3)
    assert all((retrained[n][~mask[n]] == 0).all() for n in mask)  # pruned weights stay zero through retraining
    assert all(not torch.equal(retrained[n], rewound[n]) for n in mask)  # the survivors trained
    conv = torch.cat([retrained[n].flatten() for n in mask])  # the mask names every conv weight
    assert int((conv == 0).sum()) == round(0.8 * conv.numel())  # exactly the configured sparsity


def test_rewind_fast_forwards_the_lr_schedule(tmp_path):
    """Without pruning or momentum (no optimiser state to reset), rewinding to epoch 2 and
    retraining the last 3 epochs of a cosine schedule ends exactly where the dense run did:
    the retraining epochs reuse the schedule's positions 2..4 (and the run's seeds)."""
    from raysisa.evaluation.evaluator import load_states

    dense = _trained(tmp_path, "dense", ["train.epochs=5", "train.lr_schedule=cosine", "train.momentum=0"])
    final = load_states(dense)[0]
    replayed = _rewind(dense, _pruned_mask(dense, 0.0), 2, 3)
    assert all(torch.equal(replayed[k], final[k]) for k in final)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["train.epochs=8"], "compare.prune.rewind_epoch: must be smaller than train.epochs \\(8\\)"),
        (["train.epochs=10", "compare.prune.rewind_epoch=10"], "compare.prune.rewind_epoch: must be smaller"),
        (["train.epochs=10", "sharding.num_slices=2"], "compare.prune.mode: rewind .* needs sharding.num_slices = 1"),
    ],
)
def test_rewind_settings_the_run_cannot_support_are_clear_errors(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_config({}, [*BASE, "compare.prune.sparsity=0.5", *overrides])
    parse_config({}, [*BASE, "compare.prune.sparsity=0.5", "compare.prune.mode=finetune", *overrides])  # fine-tuning needs neither


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
