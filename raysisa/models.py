"""Model registry: ``small_cnn`` (the default), ``airbench`` and torchvision's ``resnet18``/``mobilenet_v2``.

A builder takes the :class:`DatasetInfo` (channels, classes) and the :class:`ModelConfig`.
The torchvision models get the CIFAR-style stem used throughout the unlearning literature:
a 3x3 stride-1 first convolution and no max-pool, so 32x32 (and 8x8) inputs keep their
spatial detail. Weights are initialised from torch's global RNG: seed it before building.
With ``model.quant`` set, eligible convolutions become quantization-aware (:mod:`raysisa.quant`).
``airbench`` is the network of Keller Jordan's airbench94 (arXiv 2404.00498), see :class:`Airbench`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from raysisa.config import ModelConfig
from raysisa.data.samples import DatasetInfo
from raysisa.quant import get_scheme
from raysisa.registry import MODELS

__all__ = ["MODELS", "register_model", "list_models", "build_model", "Airbench", "AirbenchBatchNorm"]

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


# airbench94's constants (arXiv 2404.00498). The paper's BatchNorm momentum 0.6 is the weight
# of the old running statistics; PyTorch's ``momentum`` is the weight of the new batch: 1 - 0.6.
AIRBENCH_STEM = 24  # 2 * 3 * 2 * 2: the paper's whitening conv, for 3-channel 2x2 patches
AIRBENCH_BN_MOMENTUM = 1 - 0.6  # PyTorch convention: running = 0.6 * running + 0.4 * batch
AIRBENCH_BN_EPS = 1e-12
AIRBENCH_LOGIT_SCALE = 1 / 9


class AirbenchBatchNorm(nn.BatchNorm2d):
    """BatchNorm with its weight frozen at 1 (only the bias trains), airbench's momentum
    (PyTorch ``momentum`` 0.4, i.e. the paper's 0.6 on the running statistics) and eps 1e-12.

    The weight stays a parameter (``requires_grad=False``), so state dicts, quantization and
    the unlearning methods see the usual BatchNorm layout.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, eps=AIRBENCH_BN_EPS, momentum=AIRBENCH_BN_MOMENTUM)
        self.weight.requires_grad_(False)


def _partial_identity_conv(cin: int, cout: int) -> nn.Conv2d:
    """A 3x3 'same' convolution without bias whose first ``min(cin, cout)`` filters pass their
    input channel through unchanged (a Dirac kernel); the other filters keep PyTorch's default
    (seeded) initialisation."""
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:cin])
    return conv


class AirbenchConvGroup(nn.Module):
    """conv3x3 -> MaxPool2d(2) -> BN -> GELU -> conv3x3 -> BN -> GELU (the pool is skipped
    when ``pool`` is False, for inputs too small to halve)."""

    def __init__(self, cin: int, cout: int, pool: bool = True) -> None:
        super().__init__()
        self.conv1 = _partial_identity_conv(cin, cout)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.norm1 = AirbenchBatchNorm(cout)
        self.conv2 = _partial_identity_conv(cout, cout)
        self.norm2 = AirbenchBatchNorm(cout)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class Airbench(nn.Module):
    """The airbench94 network (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single
    GPU", arXiv 2404.00498), written from the paper's description.

    A 2x2 stem convolution without padding (24 channels, with bias) and GELU; three conv groups
    of widths ``(width, 4 * width, 4 * width)``; a global max pool; a bias-free linear
    classifier whose logits are multiplied by 1/9. ``width=64`` is the paper's network
    (64, 256, 256): 1,972,792 parameters of which 1,971,640 train (the 1,152 BatchNorm weights
    are frozen at 1); 10 classes, 3 channels. raysisa's default ``ModelConfig.width`` of 32
    gives (32, 128, 128) and 498,104 parameters (497,528 trainable).

    Differences from the paper, all in the initialisation:

    - The paper initialises the stem by *patch whitening*: its filters are the eigenvectors of
      the covariance of 2x2 patches of the training images. raysisa cannot: in SISA a shard's
      initial weights must not depend on its training data, or deleting a sample would change
      the initialisation and with it every checkpoint, and exact unlearning by retraining from
      the affected slice would no longer hold. The stem keeps PyTorch's default (seeded) init,
      a zero bias, and trains like every other layer (the paper freezes the whitened weights).
    - Everything else follows the paper: each 3x3 convolution is initialised partially as the
      identity (its first ``in_channels`` filters are Dirac kernels, the rest default), BatchNorm
      weights are frozen at 1 with momentum 0.6 on the running statistics and eps 1e-12
      (:class:`AirbenchBatchNorm`).

    The paper's final ``MaxPool2d(3)`` on its 3x3 map is written as ``AdaptiveMaxPool2d(1)``
    (the same on CIFAR, and it fits other sizes). A group's ``MaxPool2d(2)`` is left out when
    the map is already smaller than 2x2, so 8x8 digits (stem 7x7, pools to 3x3, 1x1, then
    no pool) never reach size 0. Weights come from torch's global RNG: seed it before
    building. Training recipes (Lookahead, label smoothing, the BN-bias learning-rate
    multiplier, alternating flips, TTA) are not part of the model.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 64, size: int = 32) -> None:
        super().__init__()
        if size < 2:
            raise ValueError(f"airbench needs inputs of at least 2x2 pixels, got {size}")
        self.stem = nn.Conv2d(in_channels, AIRBENCH_STEM, 2, padding=0, bias=True)
        with torch.no_grad():
            self.stem.bias.zero_()
        self.stem_act = nn.GELU()
        size -= 1  # the unpadded 2x2 stem
        groups, cin = [], AIRBENCH_STEM
        for cout in (width, 4 * width, 4 * width):
            pool = size >= 2
            groups.append(AirbenchConvGroup(cin, cout, pool))
            size, cin = (size // 2 if pool else size), cout
        self.groups = nn.Sequential(*groups)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(cin, num_classes, bias=False)
        self.logit_scale = AIRBENCH_LOGIT_SCALE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(self.stem_act(self.stem(x)))
        return self.head(torch.flatten(self.pool(x), 1)) * self.logit_scale


@register_model("airbench")
def _airbench(info: DatasetInfo, config: ModelConfig) -> nn.Module:
    return Airbench(info.channels, info.num_classes, config.width, min(info.height, info.width))
