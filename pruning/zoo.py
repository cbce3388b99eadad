"""Architectures a user can name instead of sending a graph: the torchvision classification zoo and
the CIFAR ResNets of He et al. 2015 (section 4.2), keyed like the shared pretrained weights."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .archs import CIFAR_ARCHS, TORCHVISION_ARCHS, check_arch
from .archs import default_input_shape as default_input_shape  # where the importer looks it up
from .custom_ops import ChannelSelect


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


def build(arch: str, num_classes: int) -> nn.Module:
    """A freshly initialised model of the named architecture, in eval mode."""
    check_arch(arch, num_classes)
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
    raise AssertionError(f"check_arch let {arch!r} through")
