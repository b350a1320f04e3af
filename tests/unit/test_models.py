import pytest
import torch

from raysisa.config import ModelConfig
from raysisa.data.samples import DatasetInfo
from raysisa.models import build_model, list_models, register_model

GREY8 = DatasetInfo("g", 10, 1, 8, 8, (0.5,), (0.25,))
RGB32 = DatasetInfo("c", 7, 3, 32, 32, (0.5,) * 3, (0.25,) * 3)


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "mobilenet_v2"])
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
    assert list_models() == ["mobilenet_v2", "resnet18", "small_cnn"]
    with pytest.raises(ValueError, match="already registered"):
        register_model("small_cnn")(lambda info, cfg: None)
    with pytest.raises(ValueError, match="valid models: mobilenet_v2, resnet18, small_cnn"):
        build_model(GREY8, ModelConfig.model_construct(name="vgg"))
