"""Model registry: ``small_cnn`` (the default) and torchvision's ``resnet18``/``mobilenet_v2``.

A builder takes the :class:`DatasetInfo` (channels, classes) and the :class:`ModelConfig`.
The torchvision models get the CIFAR-style stem used throughout the unlearning literature:
a 3x3 stride-1 first convolution and no max-pool, so 32x32 (and 8x8) inputs keep their
spatial detail. Weights are initialised from torch's global RNG: seed it before building.
With ``model.quant`` set, eligible convolutions become quantization-aware (:mod:`raysisa.quant`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from raysisa.config import ModelConfig
from raysisa.data.samples import DatasetInfo
from raysisa.quant import get_scheme
from raysisa.registry import MODELS

__all__ = ["MODELS", "register_model", "list_models", "build_model"]

Builder = Callable[[DatasetInfo, ModelConfig], nn.Module]
# MODELS (name -> Builder) lives in raysisa.registry, below config, which validates model.name.
register_model = MODELS.register  # decorator: @register_model("name")


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return MODELS.names()


def build_model(info: DatasetInfo, config: ModelConfig) -> nn.Module:
    """Build the model named by ``config.name`` for data described by ``info``."""
    if config.name not in MODELS:
        raise ValueError(MODELS.unknown(config.name))
    model = MODELS.get(config.name)(info, config)
    quant = config.quant
    if quant is not None and (quant.w_bits < 32 or quant.a_bits < 32):
        model = get_scheme(quant.scheme).convert(model, config.name, info, quant.w_bits, quant.a_bits)
    return model


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Four 3x3 conv-BN-ReLU layers in three stages, global average pooling, a linear head.

    About 100k parameters at ``width=32``; fits a CPU budget on 8x8 digits and 32x32 CIFAR.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, size: int = 32) -> None:
        super().__init__()
        layers = [*_conv_bn_relu(in_channels, width), *_conv_bn_relu(width, width), nn.MaxPool2d(2)]
        layers += _conv_bn_relu(width, 2 * width)
        if size // 2 >= 8:
            layers.append(nn.MaxPool2d(2))
        layers += [*_conv_bn_relu(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


@register_model("small_cnn")
def _small_cnn(info: DatasetInfo, config: ModelConfig) -> nn.Module:
    return SmallCNN(info.channels, info.num_classes, config.width, min(info.height, info.width))


@register_model("resnet18")
def _resnet18(info: DatasetInfo, config: ModelConfig) -> nn.Module:
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=info.num_classes)
    model.conv1 = nn.Conv2d(info.channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision does
    model.maxpool = nn.Identity()
    return model


@register_model("mobilenet_v2")
def _mobilenet_v2(info: DatasetInfo, config: ModelConfig) -> nn.Module:
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2(weights=None, num_classes=info.num_classes)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(info.channels, stem.out_channels, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.features[0][0].weight, mode="fan_out")  # as torchvision does
    return model
