"""Pruning, localisation and masks: pieces with known answers."""

import numpy as np
import pytest
import torch

from raysisa.config import ModelConfig
from raysisa.data.samples import DatasetInfo
from raysisa.models import build_model
from raysisa.methods import get_method, run_method
from raysisa.methods.engine import make_context
from raysisa.methods.l1_sparse import l1_gamma
from raysisa.methods.masks import MaskHook, classifier_names, conv_weight_names, localize, mask_size, omp_prune, sparsity

INFO = DatasetInfo("rgb", 5, 3, 8, 8, (0.0,) * 3, (1.0,) * 3)


def _model(name="small_cnn", seed=0):
    torch.manual_seed(seed)
    return build_model(INFO, ModelConfig(name=name, width=8))


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g), np.arange(n)


@pytest.mark.parametrize("model_name", ["small_cnn", "resnet18"])
@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.95])
def test_omp_prunes_exactly_the_fraction_of_conv_weights_globally(model_name, fraction):
    model = _model(model_name)
    params = dict(model.named_parameters())
    convs = conv_weight_names(model)
    before = torch.cat([params[n].detach().abs().flatten() for n in convs])
    others = {n: p.detach().clone() for n, p in params.items() if n not in convs}
    mask = omp_prune(model, fraction)
    total = before.numel()
    assert sum(int((~m).sum()) for m in mask.values()) == round(fraction * total)
    assert abs(sparsity(model) - round(fraction * total) / total) < 1e-12
    # global, not per layer: every surviving weight is at least as large as every pruned one
    kept = torch.cat([before_part for before_part in [before]])[torch.cat([mask[n].flatten() for n in convs])]
    pruned = before[~torch.cat([mask[n].flatten() for n in convs])]
    assert kept.min() >= pruned.max()
    layer_sparsities = {float((~mask[n]).float().mean()) for n in convs}
    assert len(layer_sparsities) > 1  # layers are pruned unevenly
    # FC, BN and biases are never pruned
    assert all(torch.equal(p, dict(model.named_parameters())[n]) for n, p in others.items())


@pytest.mark.parametrize("name", ["finetune", "l1_sparse", "random_label", "neggrad_plus", "del", "grad_ascent", "influence", "qmul"])
def test_pruned_weights_stay_zero_through_unlearning(name):
    model = _model()
    mask = omp_prune(model, 0.8)
    x, y, ids = _data()
    method = get_method(name, {"epochs": 2, "batch_size": 8, "lr": 0.05} if name != "influence" else {"samples": 8, "alpha": 50})
    init = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    ctx = make_context(method, model, INFO, ModelConfig(width=8), 0, x=x, y=y, ids=ids, forget_ids=ids[:8], init_state=init, prune_mask=mask)
    run_method(method, ctx)
    params = dict(model.named_parameters())
    for n, keep in mask.items():
        assert (params[n][~keep] == 0).all(), n
    assert any((params[n][keep] != 0).any() for n, keep in mask.items())


def test_l1_schedule_decays_linearly():
    assert [l1_gamma(1e-3, t, 5) for t in range(5)] == pytest.approx([1e-3, 8e-4, 6e-4, 4e-4, 2e-4])
    assert l1_gamma(1e-3, 9, 10) == pytest.approx(1e-4)  # γ/E in the last epoch
    assert l1_gamma(1e-3, 3, 10, "constant") == 1e-3
    assert l1_gamma(1e-3, 0, 10, "increase") == pytest.approx(1e-4)


@pytest.mark.parametrize("alpha", [0.05, 0.3, 1.0])
def test_localize_selects_exactly_floor_alpha_n(alpha):
    model = _model()
    x, y, _ = _data()
    mask = localize(model, x, y, alpha, batch_size=16)
    total = sum(p.numel() for p in model.parameters())
    assert mask_size(mask) == int(alpha * total)


def test_localize_scores_whole_channels():
    model = _model()
    x, y, _ = _data()
    mask = localize(model, x, y, 0.3, batch_size=16)
    conv = mask["features.0.weight"]
    per_channel = conv.reshape(conv.shape[0], -1).float().mean(dim=1)
    # channels are selected whole, except possibly the one the budget cuts through
    assert int(((per_channel > 0) & (per_channel < 1)).sum()) <= 1


@pytest.mark.parametrize("reset_source", ["fresh", "original_init", "zero"])
def test_del_changes_only_the_selected_parameters_and_the_classifier(reset_source):
    model = _model()
    x, y, ids = _data(60)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    init = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    method = get_method("del", {"epochs": 2, "batch_size": 16, "alpha": 0.2, "weight_decay": 1e-3, "reset_source": reset_source})
    ctx = make_context(method, model, INFO, ModelConfig(width=8), 0, x=x, y=y, ids=ids, forget_ids=ids[:12], init_state=init)
    expected = localize(_model(), ctx.forget.x, ctx.forget.y, 0.2, seed=0)  # same model, same data
    run_method(method, ctx)
    head = set(classifier_names(model))
    total = sum(p.numel() for p in model.parameters())
    assert ctx.notes["localized_parameters"] == int(0.2 * total)
    changed = 0
    for n, p in model.named_parameters():
        moved = p.detach() != before[n]
        if n in head:
            continue
        assert not (moved & ~expected[n]).any(), f"{n}: an unselected entry changed"
        changed += int(moved.sum())
    assert changed > 0.5 * int(0.2 * total)  # the selected entries were reset and trained


def test_mask_hook_freezes_exactly_even_with_weight_decay():
    model = _model()
    keep = {n: torch.rand_like(p) < 0.5 for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hook = MaskHook(model, keep)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    x, y, _ = _data()
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        hook.after_backward(model)
        opt.step()
        hook.after_step(model)
    for n, p in model.named_parameters():
        assert torch.equal(p.detach()[~keep[n]], before[n][~keep[n]])
    with pytest.raises(KeyError, match="does not have"):
        MaskHook(model, {"nope": torch.ones(1, dtype=torch.bool)})
