"""The unlearning-method registry and a conformance suite every registered method must pass."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from raysisa import LocalPool, SisaRun, StoreConfig, parse_config, train
from raysisa.config import ModelConfig
from raysisa.data.samples import DatasetInfo
from raysisa.errors import ConfigError, InvalidIdsError
from raysisa.evaluation import Evaluator, load_states
from raysisa.models import build_model
from raysisa.store import RunStore
from raysisa.methods import get_method, list_methods, register_method, run_method
from raysisa.methods.base import Need, Split, UnlearnContext, UnlearnMethod
from raysisa.methods.engine import make_context
from raysisa.sisa.approximate import approximate_unlearn

# Hyperparameters that make each method act within a few steps on 500 digits. A newly
# registered method without an entry here fails the suite (it must be given settings).
SETTINGS = {
    "finetune": {"epochs": 8, "lr": 0.2, "batch_size": 32},
    "grad_ascent": {"epochs": 2, "lr": 0.01, "batch_size": 32},
    "neggrad_plus": {"epochs": 3, "lr": 0.05, "batch_size": 32, "beta": 0.9},
    "random_label": {"epochs": 3, "lr": 0.05, "batch_size": 32},
    "l1_sparse": {"epochs": 5, "lr": 0.1, "batch_size": 32, "gamma": 5e-3},
    "del": {"epochs": 3, "lr": 0.05, "batch_size": 32},
    "influence": {"alpha": 60.0, "samples": 64},
    "qmul": {"epochs": 6, "lr": 0.1, "batch_size": 16},
    "ohs": {"epochs": 8, "lr": 0.2, "batch_size": 32, "min_delta": 0.0},
}
APPROXIMATE = [m for m in list_methods() if not get_method(m).retrains]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One small CNN trained on 500 digits (S = R = 1), class 0 to forget, and its retrain."""
    root = tmp_path_factory.mktemp("unlearn")
    job = parse_config({}, ["data.limit=500", "sharding.num_shards=1", "sharding.num_slices=1", "train.epochs=15", "model.width=16"])
    store = StoreConfig(uri=str(root / "original"))
    train(job, store, pool=LocalPool())
    run = SisaRun(store)
    index = run.store.read_index()["id"].to_numpy()
    labels = np.concatenate([run.store.read_partition(0, 1, ["id", "label"])["label"].to_numpy()])
    ids = run.store.read_partition(0, 1, ["id"])["id"].to_numpy()
    forget = np.sort(ids[labels == 0])
    assert set(forget) <= set(index)
    reference = StoreConfig(uri=str(root / "retrain"))
    train(job, reference, exclude_ids=forget, pool=LocalPool())
    evaluator = Evaluator(run, forget, exclude_classes=[0])
    return {
        "run": run,
        "forget": forget,
        "evaluator": evaluator,
        "original": evaluator.metrics(load_states(run)),
        "retrain": evaluator.metrics(load_states(SisaRun(reference))),
    }


def test_registry_lists_every_method_and_rejects_bad_names():
    assert list_methods() == ["del", "finetune", "grad_ascent", "influence", "l1_sparse", "neggrad_plus", "ohs", "qmul", "random_label", "retrain"]
    with pytest.raises(ConfigError, match="unknown unlearning method 'salun'; valid unlearning methods: del, finetune"):
        get_method("salun")
    with pytest.raises(ValueError, match="already registered"):

        @register_method
        class Again(UnlearnMethod):
            name = "finetune"


@pytest.mark.parametrize(
    ("name", "args", "needle"),
    [
        ("finetune", {"epochs": -1}, "epochs"),
        ("del", {"alpha": 0}, "alpha"),
        ("del", {"alpha": 1.5}, "alpha"),
        ("l1_sparse", {"gamma": -1e-4}, "gamma"),
        ("neggrad_plus", {"beta": 2}, "beta"),
        ("random_label", {"loop": "zigzag"}, "loop"),
        ("finetune", {"lr": 0}, "lr"),
        ("finetune", {"learning_rate": 0.1}, "Extra inputs are not permitted"),
        ("influence", {"epochs": 3}, "epochs"),
    ],
)
def test_hyperparameters_out_of_range_are_clear_errors(name, args, needle):
    with pytest.raises(ConfigError, match=f"method '{name}'.*{needle}"):
        get_method(name, args)


def test_defaults_follow_the_papers():
    assert get_method("finetune").args.epochs == 10 and get_method("finetune").args.lr == 0.01
    assert get_method("grad_ascent").args.lr == 1e-4
    assert get_method("neggrad_plus").args.beta == 0.99
    d = get_method("del").args
    assert (d.alpha, d.lr, d.epochs, d.weight_decay, d.batch_size, d.eta_min_ratio) == (0.3, 0.015, 30, 0.0, 128, 0.01)
    assert get_method("l1_sparse").args.gamma_schedule == "decay"


def test_retrain_is_exact_and_refuses_the_approximate_engine(single):
    method = get_method("retrain")
    assert method.retrains
    with pytest.raises(ConfigError, match="SISA path"):
        approximate_unlearn(single["run"], single["forget"][:3], method, LocalPool())


@pytest.mark.parametrize("name", APPROXIMATE)
def test_conformance(name, single):
    run, forget, evaluator = single["run"], single["forget"], single["evaluator"]
    assert name in SETTINGS, f"add conformance settings for {name!r}"
    method = get_method(name, SETTINGS[name])
    listing = RunStore(run.config).listing()

    first = approximate_unlearn(run, forget, method, LocalPool(), seed=3)[0]
    again = approximate_unlearn(run, forget, method, LocalPool(), seed=3)[0]
    # deterministic under a seed
    assert all(torch.equal(first.tensors[k], again.tensors[k]) for k in first.tensors)
    # the stored original is untouched
    assert RunStore(run.config).listing() == listing
    # forget accuracy moves toward the retrained reference (0% for class-wise forgetting)
    metrics = evaluator.metrics([first.tensors])
    fa_o, fa_r = single["original"].FA, single["retrain"].FA
    assert abs(metrics.FA - fa_r) < abs(fa_o - fa_r), (name, metrics, fa_o, fa_r)
    spent = first.outcome.unlearn_seconds if method.args.epochs else first.outcome.setup_seconds  # IU is all setup
    assert spent > 0 and first.outcome.args == method.args.to_dict()


@pytest.mark.parametrize("name", APPROXIMATE)
def test_methods_touch_only_the_splits_they_declare(name, single):
    """Undeclared splits are withheld; filling them with NaNs changes nothing."""
    run = single["run"]
    method = get_method(name, {**SETTINGS[name], "epochs": 1} if name != "influence" else SETTINGS[name])
    worker_state = load_states(run)[0]
    from raysisa.data.tensors import to_tensors

    table = run.store.read_partition(0, 1)
    x, y = to_tensors(table, run.store.info)
    ids = table["id"].to_numpy()

    def fresh():
        model = build_model(run.store.info, run.store.spec.model)
        model.load_state_dict(worker_state)
        return make_context(method, model, run.store.info, run.store.spec.model, 5, x=x, y=y, ids=ids, forget_ids=single["forget"])

    declared = fresh()
    for need in Need:
        if need not in method.needs and need is not Need.INIT_WEIGHTS:
            assert getattr(declared, need.value) is None
    run_method(method, declared)
    poisoned = fresh()
    for need in (Need.FORGET, Need.RETAIN, Need.TEST):
        if need not in method.needs:
            setattr(poisoned, need.value, Split(torch.full_like(x[:20], float("nan")), y[:20], ids[:20]))
    run_method(method, poisoned)
    assert all(torch.equal(a, b) for a, b in zip(declared.model.state_dict().values(), poisoned.model.state_dict().values(), strict=True))


@pytest.mark.parametrize("model_name", ["small_cnn", "resnet18", "mobilenet_v2"])
@pytest.mark.parametrize("name", APPROXIMATE)
def test_every_method_runs_on_every_model(name, model_name):
    info = DatasetInfo("rgb", 4, 3, 16, 16, (0.0,) * 3, (1.0,) * 3)
    torch.manual_seed(0)
    model = build_model(info, ModelConfig(name=model_name, width=8))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 3, 16, 16, generator=gen), torch.randint(0, 4, (24,), generator=gen)
    ids = np.arange(24)
    args = {"epochs": 1, "batch_size": 8} if name != "influence" else {"samples": 4}
    method = get_method(name, args)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = make_context(method, model, info, ModelConfig(name=model_name, width=8), 0, x=x, y=y, ids=ids, forget_ids=ids[:6], init_state=init)
    outcome = run_method(method, ctx)
    assert outcome.method == name
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(init[k], v) for k, v in model.state_dict().items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", APPROXIMATE)
def test_methods_run_on_gpu(name):
    info = DatasetInfo("rgb", 4, 3, 8, 8, (0.0,) * 3, (1.0,) * 3)
    model = build_model(info, ModelConfig(width=8))
    x, y, ids = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,)), np.arange(16)
    method = get_method(name, {"epochs": 1, "batch_size": 8} if name != "influence" else {"samples": 4})
    ctx = make_context(method, model, info, ModelConfig(width=8), 0, x=x, y=y, ids=ids, forget_ids=ids[:4], init_state=model.state_dict(), device="cuda")
    run_method(method, ctx)
    assert next(model.parameters()).is_cuda


@pytest.mark.parametrize(("ids", "needle"), [([], "no sample ids"), ([99_999], "never existed"), (["a"], "not integers")])
def test_bad_forget_sets(single, ids, needle):
    with pytest.raises(InvalidIdsError, match=needle):
        approximate_unlearn(single["run"], ids, get_method("finetune"), LocalPool())


def test_ensemble_mode_updates_only_affected_shards(tmp_path, tiny_job):
    store = StoreConfig(uri=str(tmp_path / "ens"))
    train(tiny_job, store, pool=LocalPool())
    run = SisaRun(store)
    shard1 = run.store.read_partition(1, 2, ["id"])["id"].to_numpy()[:3]
    updates = approximate_unlearn(run, shard1, get_method("finetune", {"epochs": 1}), LocalPool())
    assert list(updates) == [1] and sorted(updates[1].forget_ids.tolist()) == sorted(shard1.tolist())


def test_context_refuses_undeclared_access():
    ctx = UnlearnContext(model=torch.nn.Linear(1, 1), info=replace(DatasetInfo("x", 2, 1, 1, 1, (0.0,), (1.0,))), model_config=ModelConfig(), seed=0)
    with pytest.raises(RuntimeError, match="did not declare 'forget'"):
        ctx.split(Need.FORGET)
