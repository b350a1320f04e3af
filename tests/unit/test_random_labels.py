"""When RL and Q-MUL's random-label ablations draw their labels (``resample``).

The reference code (SalUn's and MU-Q-MUL's ``RL.py``) draws ``torch.randint`` for every
forget batch of its sequential loop and relabels the forget set once per epoch in its mixed
loop; MU-Q-MUL's ``RL_min`` (Q-MUL without Similar Labels) relabels once per epoch and
measures AGR on those labels. The labels a loss closure uses are observed by wrapping
``torch.nn.functional.cross_entropy``.
"""

import numpy as np
import pytest
import torch

from raysisa.config import ModelConfig
from raysisa.data.samples import DatasetInfo
from raysisa.methods import get_method, run_method
from raysisa.methods.engine import make_context
from raysisa.models import build_model
from raysisa.training import derive_seed

INFO = DatasetInfo("rgb", 10, 3, 8, 8, (0.0,) * 3, (1.0,) * 3)
CONFIG = ModelConfig(width=4)
N, N_FORGET = 60, 30


@pytest.fixture
def targets(monkeypatch):
    """Every target tensor passed to cross-entropy, in call order."""
    seen = []
    original = torch.nn.functional.cross_entropy

    def spy(logits, target, *args, **kwargs):
        seen.append(target.detach().clone())
        return original(logits, target, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy)
    return seen


def context(method, seed=0):
    torch.manual_seed(0)
    model = build_model(INFO, CONFIG)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(N, 3, 8, 8, generator=gen), torch.randint(0, 10, (N,), generator=gen)
    ids = np.arange(N)
    ctx = make_context(method, model, INFO, CONFIG, seed, x=x, y=y, ids=ids, forget_ids=ids[:N_FORGET])
    method.prepare(ctx)
    return ctx


def forget_targets_of_training_batches(method, ctx, epoch, targets, batches=2):
    """The labels the forget samples get in ``batches`` training batches of ``epoch`` (each
    batch: the whole forget set, or for the mixed loop the whole union)."""
    phase = method.phases(ctx, epoch)[0]
    out = []
    for _ in range(batches):
        start = len(targets)
        phase.loss(ctx.model, phase.x, phase.y, *phase.extra)
        (target,) = targets[start:]
        assert torch.equal(target[N_FORGET:], phase.y[N_FORGET:])  # retain rows (mixed loop) keep their labels
        out.append(target[:N_FORGET])
    return out


@pytest.mark.parametrize("loop", ["sequential", "mixed"])
def test_rl_batch_resampling_draws_a_fresh_label_each_time_a_sample_is_seen(loop, targets):
    method = get_method("random_label", {"resample": "batch", "loop": loop})
    ctx = context(method)
    first, second = forget_targets_of_training_batches(method, ctx, 0, targets)
    (next_epoch,) = forget_targets_of_training_batches(method, ctx, 1, targets, batches=1)
    assert not torch.equal(first, second)  # another batch, other labels
    assert not torch.equal(first, next_epoch)  # another epoch, other labels
    assert ((first >= 0) & (first < 10)).all()
    again = get_method("random_label", {"resample": "batch", "loop": loop})
    ctx_again = context(again)
    assert all(torch.equal(a, b) for a, b in zip([first, second], forget_targets_of_training_batches(again, ctx_again, 0, targets), strict=True))
    other_seed = get_method("random_label", {"resample": "batch", "loop": loop})
    assert not torch.equal(first, forget_targets_of_training_batches(other_seed, context(other_seed, seed=1), 0, targets, batches=1)[0])


@pytest.mark.parametrize("loop", ["sequential", "mixed"])
def test_rl_epoch_resampling_keeps_labels_within_an_epoch_only(loop, targets):
    method = get_method("random_label", {"resample": "epoch", "loop": loop})
    ctx = context(method)
    first, second = forget_targets_of_training_batches(method, ctx, 0, targets)
    (next_epoch,) = forget_targets_of_training_batches(method, ctx, 1, targets, batches=1)
    assert torch.equal(first, second)
    assert not torch.equal(first, next_epoch)
    again = get_method("random_label", {"resample": "epoch", "loop": loop})
    assert torch.equal(next_epoch, forget_targets_of_training_batches(again, context(again), 1, targets, batches=1)[0])


@pytest.mark.parametrize("loop", ["sequential", "mixed"])
def test_rl_fixed_labels_are_the_previous_behaviour(loop, targets):
    method = get_method("random_label", {"resample": "fixed", "loop": loop})
    ctx = context(method, seed=4)
    previous = torch.randint(0, 10, (N_FORGET,), generator=torch.Generator().manual_seed(derive_seed(4, 11)))
    for epoch in (0, 1, 5):
        assert all(torch.equal(t, previous) for t in forget_targets_of_training_batches(method, ctx, epoch, targets))


def test_rl_default_resampling_is_the_reference_for_each_loop():
    assert get_method("random_label").args.resample == "batch"  # RL.py's sequential loop: randint per batch
    assert get_method("random_label", {"loop": "mixed"}).args.resample == "epoch"  # its mixed loop: once per epoch
    assert get_method("random_label", {"loop": "mixed", "resample": "batch"}).args.resample == "batch"
    assert get_method("random_label").describe()["args"]["resample"] == "batch"  # reports name the resolved value


@pytest.mark.parametrize("name", ["random_label", "qmul"])
@pytest.mark.parametrize("loop", ["sequential", "mixed"])
def test_per_batch_labels_are_deterministic_through_the_engine(name, loop):
    extra = {"similar_labels": False} if name == "qmul" else {}

    def run(resample, seed=0):
        method = get_method(name, {"epochs": 2, "batch_size": 8, "lr": 0.05, "loop": loop, "resample": resample, **extra})
        ctx = context(method, seed)
        run_method(method, ctx)
        return ctx.model.state_dict()

    first, again, fixed = run("batch"), run("batch"), run("fixed")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], fixed[k]) for k in first if first[k].is_floating_point())


def test_qmul_random_labels_default_to_one_draw_per_epoch_shared_with_agr(targets):
    """``RL_min`` relabels the forget set once per epoch and measures AGR on those labels."""
    method = get_method("qmul", {"similar_labels": False})
    assert method.args.resample == "epoch"
    ctx = context(method)
    start = len(targets)
    phases = method.phases(ctx, 0)
    measured = targets[start]  # the forget measurement pass (one batch of 30 < 256)
    assert torch.equal(measured, phases[0].y)
    start = len(targets)
    trained = forget_targets_of_training_batches(method, ctx, 1, targets)
    next_measured = targets[start]  # epoch 1's forget measurement
    assert torch.equal(trained[0], trained[1]) and torch.equal(trained[0], next_measured)
    assert not torch.equal(measured, trained[0])  # a new draw in the next epoch


@pytest.mark.parametrize("loop", ["sequential", "mixed"])
def test_qmul_batch_resampling_and_fixed_labels(loop, targets):
    method = get_method("qmul", {"similar_labels": False, "resample": "batch", "loop": loop})
    ctx = context(method)
    first, second = forget_targets_of_training_batches(method, ctx, 0, targets)
    assert not torch.equal(first, second)
    fixed = get_method("qmul", {"similar_labels": False, "resample": "fixed", "loop": loop})
    ctx = context(fixed, seed=4)
    previous = torch.randint(0, 10, (N_FORGET,), generator=torch.Generator().manual_seed(derive_seed(4, 11)))
    for epoch in (0, 3):
        assert all(torch.equal(t, previous) for t in forget_targets_of_training_batches(fixed, ctx, epoch, targets))
