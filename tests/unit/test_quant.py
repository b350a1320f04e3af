"""Quantization: quantizer units with known answers, export, quantized SISA, Q-MUL parts."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raysisa import LocalPool, StoreConfig, parse_config, train, unlearn
from raysisa.config import ModelConfig, QuantConfig
from raysisa.data.samples import DatasetInfo
from raysisa.errors import ConfigError
from raysisa.models import build_model
from raysisa.quant import export_integers, get_scheme, list_schemes, model_from_integers
from raysisa.quant.lsq import LsqQuantizer, qrange
from raysisa.methods.qmul import agr_weights, mean_gradient_norm, similar_labels
from tests.sisa_checks import model_shas, pick

INFO = DatasetInfo("rgb", 10, 3, 16, 16, (0.0,) * 3, (1.0,) * 3)
SCHEMES = list_schemes()


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_weights_land_on_the_2_to_the_b_grid(scheme, bits):
    torch.manual_seed(0)
    config = ModelConfig(quant=QuantConfig(scheme=scheme, w_bits=bits, a_bits=8))
    model = build_model(INFO, config).train()
    model(torch.randn(4, 3, 16, 16))  # first training forward initialises LSQ's step sizes
    export = export_integers(model, config)
    q_n, q_p = qrange(bits)
    assert len(export.codes) == 3  # small_cnn: every conv but the first
    for name, codes in export.codes.items():
        assert codes.unique().numel() <= 2**bits, name  # at most 2^b values per quantization group
        assert codes.min() >= q_n and codes.max() <= q_p, name
        assert export.bits[name] == bits


def test_lsq_weight_grid_directly():
    q = LsqQuantizer(4).train()
    w = torch.randn(200)
    out = q(w)
    assert out.unique().numel() <= 16
    assert torch.equal(out.detach(), q.integers(w).float() * q.step.detach())


def test_lsq_step_initialisation_rule():
    q = LsqQuantizer(4).train()
    x = torch.randn(1000)
    q(x)
    assert bool(q.initialized)
    assert q.step.item() == pytest.approx(2 * x.abs().mean().item() / math.sqrt(7), rel=1e-6)
    before = q.step.item()
    q(x * 100)  # never re-initialised
    assert q.step.item() == before


def test_lsq_eval_mode_does_not_initialise():
    q = LsqQuantizer(4).eval()
    q(torch.randn(10))
    assert not bool(q.initialized) and q.step.item() == 1.0


def test_straight_through_gradient_inside_the_range_and_step_gradient_scale():
    q = LsqQuantizer(4).train()
    q.initialize(torch.ones(1) * 3.5)  # step = 2 * 3.5 / sqrt(7)
    s = q.step.item()
    x = torch.tensor([0.3 * s, -2.2 * s, 6.6 * s, 9.0 * s, -9.0 * s], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]  # clamped beyond Q_p = 7 and Q_n = -8
    # LSQ step gradient: sum of (round(v) - v) inside the range, Q_p / Q_n outside, times 1/sqrt(N Q_p)
    v = (x.detach() / s).clamp(-8, 7)
    inside = (x.detach() / s >= -8) & (x.detach() / s <= 7)
    expected = torch.where(inside, v.round() - v, v).sum() / math.sqrt(5 * 7)
    assert q.step.grad.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("model_name", ["small_cnn", "resnet18", "mobilenet_v2"])
def test_quantizer_state_survives_a_checkpoint_round_trip(model_name, scheme):
    config = ModelConfig(name=model_name, width=8, quant=QuantConfig(scheme=scheme, w_bits=4, a_bits=8))
    torch.manual_seed(0)
    model = build_model(INFO, config).train()
    x = torch.randn(4, 3, 16, 16)
    model(x)
    from safetensors.torch import load, save

    state = load(save({k: v.contiguous() for k, v in model.state_dict().items()}))
    clone = build_model(INFO, config)
    clone.load_state_dict(state)
    steps = {k: v for k, v in state.items() if k.endswith((".step", ".initialized", "scaling_impl.value"))}
    assert steps and all(torch.equal(clone.state_dict()[k], v) for k, v in steps.items())
    assert torch.equal(model.eval()(x), clone.eval()(x))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_first_conv_shortcuts_head_and_classifier_stay_full_precision(scheme):
    layers = get_scheme(scheme).layers
    assert len(layers(build_model(INFO, ModelConfig(name="resnet18", quant=QuantConfig(scheme=scheme))))) == 16  # 20 - stem - 3 shortcuts
    mobile = layers(build_model(INFO, ModelConfig(name="mobilenet_v2", quant=QuantConfig(scheme=scheme))))
    assert len(mobile) == 50 and "features.18.0" not in mobile and "features.0.0" not in mobile  # 52 - stem - head
    assert layers(build_model(INFO, ModelConfig(quant=QuantConfig(scheme=scheme, w_bits=32, a_bits=32)))) == {}


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("model_name", ["small_cnn", "resnet18", "mobilenet_v2"])
def test_integer_export_equals_the_fake_quant_forward(scheme, model_name):
    config = ModelConfig(name=model_name, width=8, quant=QuantConfig(scheme=scheme, w_bits=4, a_bits=8))
    torch.manual_seed(1)
    model = build_model(INFO, config).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    export = export_integers(model, config)
    assert export.codes and all(c.dtype == torch.int8 for c in export.codes.values())
    assert all(c.unique().numel() <= 16 for c in export.codes.values())
    integer_model = model_from_integers(export, build_model(INFO, config), config)
    model.eval()
    assert torch.equal(integer_model(x), model(x))


@pytest.mark.parametrize(("field", "value", "needle"), [("w_bits", 3, "unsupported bit width 3"), ("a_bits", 16, "unsupported bit width 16"), ("scheme", "int1", "unknown quantization scheme 'int1'")])
def test_bad_quantization_config(field, value, needle):
    with pytest.raises(ConfigError, match=needle):
        QuantConfig(**{field: value})
    with pytest.raises(ConfigError, match=needle):
        parse_config({"model": {"quant": {field: value}}})


@pytest.mark.parametrize("scheme", SCHEMES)
def test_exact_sisa_unlearning_at_4_bits(tmp_path, tiny_job, scheme):
    quant = tiny_job.model_copy(update={"model": tiny_job.model.model_copy(update={"quant": QuantConfig(scheme=scheme, w_bits=4, a_bits=8)})})
    store = StoreConfig(uri=str(tmp_path / "q4"))
    train(quant, store, pool=LocalPool())
    ids = pick(store, [(0, 2, 1), (2, 1, 0)])
    unlearn(store, ids, pool=LocalPool())
    reference = StoreConfig(uri=str(tmp_path / "reference"))
    train(quant, reference, exclude_ids=ids, pool=LocalPool())
    assert model_shas(store) == model_shas(reference)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(-8, 8), min_size=2, max_size=12), st.integers(0, 11))
def test_similar_labels_never_return_the_true_label(logits, label):
    label = label % len(logits)
    probs = torch.softmax(torch.tensor([logits], dtype=torch.float64), dim=1)
    chosen = int(similar_labels(probs, torch.tensor([label]))[0])
    assert chosen != label
    if probs[0, label] >= 0.5:
        others = probs[0].clone()
        others[label] = -1
        assert probs[0, chosen] == others.max()  # the runner-up class


def test_similar_labels_takes_the_closest_probability():
    probs = torch.tensor([[0.3, 0.28, 0.02, 0.4], [0.1, 0.6, 0.25, 0.05]])
    assert similar_labels(probs, torch.tensor([0, 1])).tolist() == [1, 2]


def test_agr_weights_hand_computed():
    w_f, w_r = agr_weights(3.0, 1.0)
    assert (w_f, w_r) == (0.25, 0.75) and w_f + w_r == 1.0
    assert w_f * 3.0 == w_r * 1.0  # balanced contributions
    assert agr_weights(0.0, 0.0) == (0.5, 0.5)


def _bn_buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_gradient_norm_measurement_in_eval_mode_leaves_bn_untouched():
    torch.manual_seed(0)
    model = build_model(INFO, ModelConfig(width=8)).train()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(20, 3, 16, 16), torch.randint(0, 10, (20,))
    tensor_sum = mean_gradient_norm(model, x, y, batch_size=10, mode="eval")
    global_l2 = mean_gradient_norm(model, x, y, batch_size=10, norm="global_l2", mode="eval")
    assert tensor_sum >= global_l2 > 0  # a sum of per-tensor norms bounds the global norm
    assert model.training and all(torch.equal(buffers[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_gradient_norm_measurement_in_train_mode_uses_and_updates_bn_statistics():
    """The reference measures after ``model.train()``: batch statistics, running stats updated."""
    torch.manual_seed(0)
    model = build_model(INFO, ModelConfig(width=8)).eval()
    x, y = torch.randn(20, 3, 16, 16) * 3 + 1, torch.randint(0, 10, (20,))  # far from the initial running stats
    bn = _bn_buffers(model)
    params = {k: v.clone() for k, v in model.named_parameters()}
    in_eval = mean_gradient_norm(model, x, y, batch_size=10, mode="eval")
    assert all(torch.equal(bn[k], v) for k, v in _bn_buffers(model).items())
    in_train = mean_gradient_norm(model, x, y, batch_size=10)  # the default: train mode
    after = _bn_buffers(model)
    moved = [k for k in bn if "running_mean" in k and not torch.equal(bn[k], after[k])]
    assert moved and len(moved) == sum("running_mean" in k for k in bn)  # every BatchNorm layer moved
    assert all(int(after[k]) == int(bn[k]) + 2 for k in bn if "num_batches" in k)  # one update per measured batch
    assert not math.isclose(in_train, in_eval, rel_tol=1e-3)  # batch statistics give other gradients
    assert not model.training  # the caller's mode is restored
    assert all(torch.equal(params[k], v) for k, v in model.named_parameters())  # no optimiser step
    assert all(p.grad is None for p in model.parameters())


def test_qmul_agr_mode_decides_whether_measurement_moves_bn():
    from raysisa.methods import get_method
    from raysisa.methods.engine import make_context

    x, y, ids = torch.randn(24, 3, 16, 16) * 2, torch.randint(0, 10, (24,)), np.arange(24)
    moved = {}
    for mode in ("train", "eval"):
        torch.manual_seed(0)
        model = build_model(INFO, ModelConfig(width=8))
        method = get_method("qmul", {"epochs": 1, "batch_size": 8, "agr_mode": mode})
        ctx = make_context(method, model, INFO, ModelConfig(width=8), 0, x=x, y=y, ids=ids, forget_ids=ids[:6])
        method.prepare(ctx)
        bn = _bn_buffers(model)
        method.phases(ctx, 0)  # the AGR measurement only: no training pass runs here
        moved[mode] = any(not torch.equal(bn[k], v) for k, v in _bn_buffers(model).items())
    assert get_method("qmul").args.agr_mode == "train"
    assert moved == {"train": True, "eval": False}


def test_quantized_model_trains_in_the_shared_loop():
    from raysisa.config import TrainConfig
    from raysisa.training import build_optimizer, train_epoch

    torch.manual_seed(0)
    model = build_model(INFO, ModelConfig(width=8, quant=QuantConfig(w_bits=2, a_bits=4)))
    x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,))
    opt = build_optimizer(model, TrainConfig(lr=0.05))
    losses = [train_epoch(model, opt, x, y, batch_size=16, seed=e).mean_loss for e in range(12)]
    assert losses[-1] < losses[0] and np.isfinite(losses).all()


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits", [2, 8])
@pytest.mark.parametrize("model_name", ["small_cnn", "resnet18", "mobilenet_v2"])
def test_every_model_trains_at_every_bit_width(scheme, bits, model_name):
    config = ModelConfig(name=model_name, width=8, quant=QuantConfig(scheme=scheme, w_bits=bits, a_bits=8))
    torch.manual_seed(0)
    model = build_model(INFO, config).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    export = export_integers(model, config)
    assert all(c.unique().numel() <= 2**bits for c in export.codes.values())


@pytest.mark.parametrize("name", ["finetune", "grad_ascent", "neggrad_plus", "random_label", "l1_sparse", "del", "influence", "qmul", "ohs"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_method_runs_on_quantized_models(name, scheme):
    from raysisa.methods import get_method, run_method
    from raysisa.methods.engine import make_context

    config = ModelConfig(width=8, quant=QuantConfig(scheme=scheme, w_bits=4, a_bits=8))
    torch.manual_seed(0)
    model = build_model(INFO, config)
    x, y, ids = torch.randn(24, 3, 16, 16), torch.randint(0, 10, (24,)), np.arange(24)
    method = get_method(name, {"epochs": 1, "batch_size": 8} if name != "influence" else {"samples": 4})
    init = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = make_context(method, model, INFO, config, 0, x=x, y=y, ids=ids, forget_ids=ids[:6], init_state=init)
    run_method(method, ctx)
    assert any(not torch.equal(init[k], v) for k, v in model.state_dict().items())
    export = export_integers(model, config)
    assert all(c.unique().numel() <= 16 for c in export.codes.values())  # still on the 4-bit grid


def test_compare_on_a_quantized_model(tmp_path):
    from raysisa import LocalPool
    from raysisa.evaluation import compare

    job = parse_config(
        {"compare": {"methods": ["qmul", "rl"], "variants": {"rl": {"method": "qmul", "args": {"similar_labels": False, "agr": False}}},
                     "method_args": {"qmul": {"epochs": 1}}}},
        ["data.limit=300", "sharding.num_shards=1", "sharding.num_slices=1", "train.epochs=4", "model.width=8",
         "model.quant.w_bits=4", "model.quant.scheme=lsq"],
    )
    report = compare(job, StoreConfig(uri=str(tmp_path)), LocalPool())
    assert [r.method for r in report.results] == ["original", "retrain", "qmul", "rl"]
    assert report.job["model"]["quant"]["w_bits"] == 4


@pytest.mark.parametrize("scheme", SCHEMES)
def test_del_never_resets_quantizer_state(scheme):
    """A fresh quantizer's step size would wipe its layer: DEL resets weights, not quantizers."""
    from raysisa.methods import get_method, run_method
    from raysisa.methods.engine import make_context
    from raysisa.quant import quantizer_parameter_names

    assert quantizer_parameter_names(build_model(INFO, ModelConfig(width=8))) == set()
    config = ModelConfig(width=8, quant=QuantConfig(scheme=scheme, w_bits=4, a_bits=8))
    torch.manual_seed(0)
    model = build_model(INFO, config)
    x, y, ids = torch.randn(24, 3, 16, 16), torch.randint(0, 10, (24,)), np.arange(24)
    model.train()(x)  # initialise the quantizers as training does
    names = quantizer_parameter_names(model)
    assert names
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    method = get_method("del", {"alpha": 1.0, "epochs": 0})  # select everything, reset only
    ctx = make_context(method, model, INFO, config, 0, x=x, y=y, ids=ids, forget_ids=ids[:6])
    run_method(method, ctx)
    after = dict(model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in names)
    assert all(not torch.equal(before[n], after[n]) for n in after if n not in names and n.endswith("weight") and after[n].ndim > 1)
