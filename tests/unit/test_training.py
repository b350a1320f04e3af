import torch

from raysisa.config import ModelConfig, TrainConfig
from raysisa.data.samples import DatasetInfo
from raysisa.data.tensors import random_crop_flip
from raysisa.models import build_model
from raysisa.training import (
    batch_bounds,
    build_optimizer,
    derive_seed,
    load_optimizer_tensors,
    lr_at,
    optimizer_tensors,
    train_epoch,
)

INFO = DatasetInfo("g", 3, 1, 8, 8, (0.0,), (1.0,))


def _setup(seed=0):
    torch.manual_seed(seed)
    model = build_model(INFO, ModelConfig(width=4))
    return model, build_optimizer(model, TrainConfig(lr=0.1))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(50, 1, 8, 8, generator=g), torch.randint(0, 3, (50,), generator=g)


def test_batch_bounds_cover_every_sample_once_without_tiny_batches():
    for n in range(1, 200):
        bounds = batch_bounds(n, 16)
        covered = [i for a, b in bounds for i in range(a, b)]
        assert covered == list(range(n))
        assert all(b - a >= 8 for a, b in bounds) or len(bounds) == 1


def test_an_epoch_is_a_function_of_its_seed():
    x, y = _data()
    m1, o1 = _setup()
    m2, o2 = _setup()
    train_epoch(m1, o1, x, y, batch_size=8, seed=5, augment=True)
    train_epoch(m2, o2, x, y, batch_size=8, seed=5, augment=True)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True))
    m3, o3 = _setup()
    train_epoch(m3, o3, x, y, batch_size=8, seed=6, augment=True)
    assert not torch.equal(m1.fc.weight, m3.fc.weight)


def test_optimizer_state_round_trip_resumes_bit_exactly():
    x, y = _data()
    straight, opt = _setup()
    for epoch in range(2):
        train_epoch(straight, opt, x, y, batch_size=8, seed=epoch)

    first, opt1 = _setup()
    train_epoch(first, opt1, x, y, batch_size=8, seed=0)
    tensors, meta = optimizer_tensors(opt1)
    assert any(k.endswith("momentum_buffer") for k in tensors)
    resumed, opt2 = _setup(seed=99)  # other init, overwritten by the "checkpoint"
    resumed.load_state_dict(first.state_dict())
    load_optimizer_tensors(opt2, {k: v.clone() for k, v in tensors.items()}, meta)
    train_epoch(resumed, opt2, x, y, batch_size=8, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True))


def test_training_reduces_the_loss():
    x, y = _data()
    model, opt = _setup()
    losses = [train_epoch(model, opt, x, y, batch_size=10, seed=e).mean_loss for e in range(15)]
    assert losses[-1] < 0.5 * losses[0]


def test_augmentation_is_a_seeded_crop_and_flip():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    a = random_crop_flip(x, torch.Generator().manual_seed(0), pad=1)
    b = random_crop_flip(x, torch.Generator().manual_seed(0), pad=1)
    assert torch.equal(a, b) and a.shape == x.shape
    # zero padding: every output pixel is an input pixel of the same sample or a zero
    for i in range(2):
        assert set(a[i].flatten().tolist()) <= set(x[i].flatten().tolist()) | {0.0}
    flipped = random_crop_flip(x, torch.Generator().manual_seed(0), pad=0)
    assert all(torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1)) for i in range(2))


def test_seeds_and_schedules():
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3) != derive_seed(1, 2, 4)
    cfg = TrainConfig(lr=0.1, lr_schedule="cosine")
    assert lr_at(cfg, 0, 10) == 0.1 and abs(lr_at(cfg, 5, 10) - 0.05) < 1e-12
    assert lr_at(TrainConfig(lr=0.1), 7, 10) == 0.1


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_mixed_precision_is_off_by_default_and_changes_training_when_asked_for():
    """The default recipe trains in full precision on CPU; bf16 autocast is an explicit opt-in
    (it changes the weights, so it is part of the fingerprint)."""
    assert TrainConfig().precision == "fp32"
    assert TrainConfig(precision="bf16").identity() != TrainConfig().identity()
    x, y = _data()
    runs = {}
    for name, autocast in (("default", None), ("bf16", torch.bfloat16)):
        model, opt = _setup()
        train_epoch(model, opt, x, y, batch_size=8, seed=3, autocast=autocast)
        runs[name] = _state(model)
    reference, opt = _setup()
    with torch.autocast("cpu", enabled=False):
        train_epoch(reference, opt, x, y, batch_size=8, seed=3)
    assert all(torch.equal(runs["default"][k], v) for k, v in _state(reference).items())
    assert not torch.equal(runs["default"]["fc.weight"], runs["bf16"]["fc.weight"])


def test_the_linear_schedule_warms_up_then_decays_to_zero_per_step():
    config = TrainConfig(lr=1.0, lr_schedule="linear", warmup=0.25)
    assert [lr_at(config, e, 8) for e in (0, 1, 2, 5, 8)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    x, y = _data()
    model, opt = _setup()
    seen = []

    def lr(progress):
        seen.append(progress)
        return lr_at(config, 1 + progress, 8)

    train_epoch(model, opt, x, y, batch_size=10, seed=0, lr=lr)
    assert seen == [0.0, 0.2, 0.4, 0.6, 0.8]  # once per step, before it
    assert opt.param_groups[0]["lr"] == lr_at(config, 1.8, 8)


def test_channels_last_training_matches_and_flip_tta_averages_both_views():
    from raysisa.training import predict_proba

    x, y = _data()
    model, opt = _setup()
    train_epoch(model, opt, x, y, batch_size=8, seed=2, channels_last=True)
    probs = predict_proba(model, x, flip_tta=True)
    model.eval()
    with torch.no_grad():
        expected = torch.softmax((model(x) + model(x.flip(3))) / 2, dim=1)
    assert torch.allclose(probs, expected, atol=1e-6)
    assert not torch.allclose(probs, predict_proba(model, x), atol=1e-4)
