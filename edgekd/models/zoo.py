"""Compact CNN families that edge runtimes run well, a teacher, and tiny test models.

Every model takes a float32 normalized NCHW batch and returns logits. Only ops that export cleanly to
ONNX and TFLite and quantize with PT2E are used: Conv2d, BatchNorm2d, ReLU/ReLU6, residual adds,
AdaptiveAvgPool2d, flatten, Linear. Named stages (`features.N`) give stable names for feature taps.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(name: str, import_folder: str | None = None, **kwargs) -> nn.Module:
    """Build `name` with exactly `kwargs`: a zoo name, 'torchvision:NAME', 'timm:NAME' or 'package.module:Callable'.

    `import_folder` (e.g. the recipe's folder) is searched first for a 'package.module' (edgekd.models.names).
    """
    from edgekd.models.names import resolve_model

    factory = resolve_model(name, import_folder)
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise EdgeKDError(f"model {name!r} rejected its arguments {kwargs}: {e}") from e
    if not isinstance(model, nn.Module):
        raise EdgeKDError(f"model {name!r} returned a {type(model).__name__}, not a torch nn.Module")
    return model


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=False))
    return nn.Sequential(*layers)


class Classifier(nn.Module):
    """`features` (a Sequential of named stages) -> global average pool -> dropout -> linear head."""

    def __init__(self, features: nn.Sequential, width: int, num_classes: int, dropout: float = 0.0,
                 hidden: int | None = None):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        head: list[nn.Module] = []
        if hidden:
            head += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        elif dropout:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(width, num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


@MODELS.register("teacher_cnn")
def teacher_cnn(num_classes: int = 10, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128),
                hidden: int = 512, dropout: float = 0.3) -> nn.Module:
    """VGG-style teacher: per block two 3x3 conv+BN+ReLU, then 2x2 downsampling (a stride-2 conv)."""
    stages: list[nn.Module] = []
    cin = in_channels
    for w in widths:
        stages += [conv_bn(cin, w), conv_bn(w, w, stride=2)]
        cin = w
    return Classifier(nn.Sequential(*stages), cin, num_classes, dropout, hidden)


@MODELS.register("tiny_cnn")
def tiny_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 16, depth: int = 3) -> nn.Module:
    """Plain CNN: `depth` stride-2 conv blocks doubling width (capped at 4x); the cheapest useful student."""
    stages: list[nn.Module] = []
    cin, w = in_channels, width
    for i in range(depth):
        stages.append(conv_bn(cin, w, stride=2 if i < 3 else 1))
        cin, w = w, min(w * 2, width * 4)
    return Classifier(nn.Sequential(*stages), cin, num_classes)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear project; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, k=1))
        layers += [conv_bn(hidden, hidden, stride=stride, groups=hidden), conv_bn(hidden, cout, k=1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


def _scaled(c: int, mult: float) -> int:
    return max(4, int(round(c * mult / 4)) * 4)


@MODELS.register("mobilenet_student")
def mobilenet_student(num_classes: int = 10, in_channels: int = 1, width_mult: float = 1.0, depth: int = 1,
                      expand: int = 4) -> nn.Module:
    """Inverted-residual student: a stem then three stages (16, 32, 64 channels x width_mult), `depth` blocks each."""
    stem = _scaled(16, width_mult)
    stages: list[nn.Module] = [conv_bn(in_channels, stem, stride=1)]
    cin = stem
    for base, stride in ((16, 2), (32, 2), (64, 2)):
        cout = _scaled(base, width_mult)
        for i in range(depth):
            stages.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    return Classifier(nn.Sequential(*stages), cin, num_classes)


class BasicBlock(nn.Module):
    """ResNet basic block with a 1x1 projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, stride=stride), conv_bn(cout, cout, act=False))
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout
                         else conv_bn(cin, cout, k=1, stride=stride, act=False))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


@MODELS.register("resnet_student")
def resnet_student(num_classes: int = 10, in_channels: int = 1, width: int = 16, depth: int = 1) -> nn.Module:
    """ResNet-style student: stem then three stages of `depth` basic blocks (width, 2x, 4x)."""
    stages: list[nn.Module] = [conv_bn(in_channels, width)]
    cin = width
    for mult, stride in ((1, 1), (2, 2), (4, 2)):
        for i in range(depth):
            stages.append(BasicBlock(cin, width * mult, stride if i == 0 else 1))
            cin = width * mult
    return Classifier(nn.Sequential(*stages), cin, num_classes)


@MODELS.register("mlp")
def mlp(num_classes: int = 10, in_channels: int = 1, input_size: int = 8, hidden: int = 32) -> nn.Module:
    """Tiny MLP for tests on 8x8 digits."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size * input_size, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))
