"""Architectures a user can name instead of sending a graph: the torchvision classification zoo and
the CIFAR ResNets of He et al. 2015 (section 4.2), keyed like the shared pretrained weights."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .custom_ops import ChannelSelect
from .errors import InputError


def _shortcut_a(in_planes: int, planes: int) -> ChannelSelect:
    """Option-A shortcut: subsample by 2, input channel c lands on c + planes//4, the rest are zeros."""
    pad = planes // 4
    src = [-1] * pad + list(range(in_planes)) + [-1] * (planes - pad - in_planes)
    return ChannelSelect(in_planes, src, stride=2)


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = _shortcut_a(in_planes, planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


CIFAR_ARCHS: dict[str, int] = {f"resnet{d}_cifar": d for d in (20, 32, 44, 56, 110)}

#: torchvision classification builders we accept by name (no weights are ever downloaded).
TORCHVISION_ARCHS = (
    "alexnet",
    "convnext_tiny", "convnext_small", "convnext_base", "convnext_large",
    "densenet121", "densenet161", "densenet169", "densenet201",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
    "efficientnet_b4", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7",
    "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l",
    "googlenet", "inception_v3",
    "mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3",
    "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
    "regnet_x_400mf", "regnet_x_800mf", "regnet_x_1_6gf", "regnet_x_3_2gf", "regnet_x_8gf",
    "regnet_x_16gf", "regnet_x_32gf",
    "regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf", "regnet_y_8gf",
    "regnet_y_16gf", "regnet_y_32gf",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
    "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
    "squeezenet1_0", "squeezenet1_1",
    "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "wide_resnet50_2", "wide_resnet101_2",
)  # fmt: skip


def known_archs() -> list[str]:
    return sorted([*CIFAR_ARCHS, *TORCHVISION_ARCHS])


def default_input_shape(arch: str) -> list[int]:
    if arch in CIFAR_ARCHS:
        return [1, 3, 32, 32]
    if arch == "inception_v3":
        return [1, 3, 299, 299]
    return [1, 3, 224, 224]


def build(arch: str, num_classes: int) -> nn.Module:
    """A freshly initialised model of the named architecture, in eval mode."""
    if not 1 <= num_classes <= 100_000:
        raise InputError(f"num_classes must be between 1 and 100000, got {num_classes}")
    factory: Callable[..., nn.Module]
    if arch in CIFAR_ARCHS:
        return CifarResNet(CIFAR_ARCHS[arch], num_classes).eval()
    if arch in TORCHVISION_ARCHS:
        import torchvision

        factory = getattr(torchvision.models, arch)
        kwargs: dict[str, object] = {"weights": None, "num_classes": num_classes}
        if arch in ("googlenet", "inception_v3"):
            # Auxiliary heads only run in training; without them the state dict matches an exported model.
            kwargs["aux_logits"] = False
            kwargs["init_weights"] = False
        return factory(**kwargs).eval()
    raise InputError(f"unknown arch {arch!r}; known: {', '.join(known_archs())}")
