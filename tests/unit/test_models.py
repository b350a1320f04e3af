import pytest
import torch

from raysisa.config import ModelConfig, QuantConfig
from raysisa.data.samples import DatasetInfo
from raysisa.models import Airbench, AirbenchBatchNorm, build_model, list_models, register_model
from raysisa.quant import export_integers, get_scheme, model_from_integers

GREY8 = DatasetInfo("g", 10, 1, 8, 8, (0.5,), (0.25,))
RGB32 = DatasetInfo("c", 7, 3, 32, 32, (0.5,) * 3, (0.25,) * 3)
CIFAR10 = DatasetInfo("cifar10", 10, 3, 32, 32, (0.5,) * 3, (0.25,) * 3)


@pytest.mark.parametrize("name", ["small_cnn", "airbench", "resnet18", "mobilenet_v2"])
@pytest.mark.parametrize("info", [GREY8, RGB32], ids=["digits-like", "cifar-like"])
def test_every_model_maps_images_to_class_logits(name, info):
    torch.manual_seed(0)
    model = build_model(info, ModelConfig(name=name, width=8)).eval()
    out = model(torch.randn(2, info.channels, info.height, info.width))
    assert out.shape == (2, info.num_classes)


def test_torchvision_models_have_the_cifar_stem():
    resnet = build_model(RGB32, ModelConfig(name="resnet18"))
    assert resnet.conv1.kernel_size == (3, 3) and resnet.conv1.stride == (1, 1)
    assert isinstance(resnet.maxpool, torch.nn.Identity)
    mobile = build_model(GREY8, ModelConfig(name="mobilenet_v2"))
    stem = mobile.features[0][0]
    assert stem.stride == (1, 1) and stem.in_channels == 1


def test_builds_are_seeded():
    torch.manual_seed(3)
    a = build_model(GREY8, ModelConfig()).state_dict()
    torch.manual_seed(3)
    b = build_model(GREY8, ModelConfig()).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_registry_rejects_duplicates_and_unknown_names():
    assert list_models() == ["airbench", "mobilenet_v2", "resnet18", "small_cnn"]
    with pytest.raises(ValueError, match="already registered"):
        register_model("small_cnn")(lambda info, cfg: None)
    with pytest.raises(ValueError, match="valid models: airbench, mobilenet_v2, resnet18, small_cnn"):
        build_model(GREY8, ModelConfig.model_construct(name="vgg"))


def _spatial_sizes(model, x):
    """Spatial size after the stem and after each conv group."""
    sizes = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: sizes.append(tuple(out.shape[-2:]))) for m in (model.stem, *model.groups)
    ]
    model(x)
    for hook in hooks:
        hook.remove()
    return sizes


def test_airbench_has_the_papers_shape_on_cifar():
    torch.manual_seed(0)
    model = build_model(RGB32, ModelConfig(name="airbench", width=8)).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 7)
    assert _spatial_sizes(model, x) == [(31, 31), (15, 15), (7, 7), (3, 3)]
    assert model.stem.kernel_size == (2, 2) and model.stem.padding == (0, 0) and model.stem.out_channels == 24
    assert model.stem.bias is not None and model.head.bias is None
    assert [g.conv2.out_channels for g in model.groups] == [8, 32, 32]


@pytest.mark.parametrize("size", [2, 3, 5, 8, 9])
def test_airbench_skips_pools_that_would_empty_small_inputs(size):
    torch.manual_seed(0)
    info = DatasetInfo("g", 10, 1, size, size, (0.5,), (0.25,))
    model = build_model(info, ModelConfig(name="airbench", width=4)).eval()
    x = torch.randn(2, 1, size, size)
    sizes = _spatial_sizes(model, x)
    assert model(x).shape == (2, 10) and min(min(s) for s in sizes) >= 1
    if size == 8:  # digits: stem 7x7, pooled to 3x3 and 1x1, the last pool skipped
        assert sizes == [(7, 7), (3, 3), (1, 1), (1, 1)]
        assert isinstance(model.groups[2].pool, torch.nn.Identity)
    with pytest.raises(ValueError, match="at least 2x2"):
        Airbench(1, 10, 4, size=1)


def test_airbench_parameter_count_at_the_papers_width():
    model = build_model(CIFAR10, ModelConfig(name="airbench", width=64))
    widths = [(g.conv1.out_channels, g.conv2.out_channels) for g in model.groups]
    assert widths == [(64, 64), (256, 256), (256, 256)]
    assert sum(p.numel() for p in model.parameters()) == 1_972_792
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 1_971_640  # BN weights frozen


def test_airbench_batchnorm_trains_only_its_bias():
    model = build_model(RGB32, ModelConfig(name="airbench", width=4))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 6 and all(isinstance(m, AirbenchBatchNorm) for m in norms)
    for norm in norms:
        assert not norm.weight.requires_grad and torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert norm.bias.requires_grad
        assert norm.momentum == pytest.approx(0.4) and norm.eps == 1e-12  # the paper's 0.6 on the running stats
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    assert all(norm.weight.grad is None and norm.bias.grad is not None for norm in norms)
    assert "groups.0.norm1.weight" in model.state_dict()


def test_airbench_convs_start_partly_as_identity():
    torch.manual_seed(0)
    model = build_model(RGB32, ModelConfig(name="airbench", width=8))
    conv = model.groups[1].conv1  # 8 -> 32 channels: the first 8 filters are the identity
    identity = torch.zeros(8, 8, 3, 3)
    identity[range(8), range(8), 1, 1] = 1
    assert torch.equal(conv.weight[:8], identity)
    assert conv.weight[8:].abs().sum() > 0 and not torch.equal(conv.weight[8:, :, 1, 1], torch.zeros(24, 8))
    first = model.groups[0].conv1  # 24 -> 8 channels: identity on the first 8 inputs
    assert torch.equal(first.weight[:, :8], identity) and torch.equal(first.weight[:, 8:], torch.zeros(8, 16, 3, 3))
    assert torch.equal(model.groups[2].conv2.weight[:, :, 1, 1], torch.eye(32))  # square: all identity
    assert model.stem.bias.abs().sum() == 0 and model.stem.weight.abs().sum() > 0  # plain seeded stem


def test_airbench_builds_are_seeded_and_data_free():
    torch.manual_seed(5)
    a = build_model(GREY8, ModelConfig(name="airbench")).state_dict()
    torch.manual_seed(5)
    b = build_model(GREY8, ModelConfig(name="airbench")).state_dict()
    torch.manual_seed(6)
    c = build_model(GREY8, ModelConfig(name="airbench")).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["stem.weight"], c["stem.weight"])


def test_airbench_scales_its_logits_by_a_ninth():
    torch.manual_seed(0)
    model = build_model(RGB32, ModelConfig(name="airbench", width=4)).eval()
    seen = []
    model.head.register_forward_hook(lambda mod, inp, out: seen.append(out))
    out = model(torch.randn(3, 3, 32, 32))
    assert torch.allclose(out, seen[0] / 9, rtol=1e-6, atol=0)


def test_airbench_trains_quantization_aware():
    config = ModelConfig(name="airbench", width=8, quant=QuantConfig(w_bits=4, a_bits=8))
    torch.manual_seed(0)
    model = build_model(RGB32, config)
    quantized = get_scheme("lsq").layers(model)
    assert sorted(quantized) == [f"groups.{g}.conv{c}" for g in range(3) for c in (1, 2)]  # stem and head stay float
    assert type(model.stem) is torch.nn.Conv2d and type(model.head) is torch.nn.Linear
    x = torch.randn(4, 3, 32, 32)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    torch.manual_seed(1)
    deployed = model_from_integers(export_integers(model, config), build_model(RGB32, config), config)
    with torch.no_grad():
        assert torch.equal(deployed(x), model(x))


def test_airbench_trains_deterministically_on_cpu():
    def one_step() -> dict[str, torch.Tensor]:
        torch.manual_seed(2)
        model = build_model(RGB32, ModelConfig(name="airbench", width=4))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 7, (8,))
        for _ in range(2):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        return model.state_dict()

    a, b = one_step(), one_step()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(a["groups.0.norm1.weight"], torch.ones(4))  # frozen through weight decay and momentum
    assert int(a["groups.0.norm1.num_batches_tracked"]) == 2
