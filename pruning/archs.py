"""Names and input sizes of the architectures a user can name instead of sending a graph. No torch here:
the API checks an upload's `arch` against these without loading the engine."""

from __future__ import annotations

from .errors import InputError

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


def check_arch(arch: str, num_classes: int | None) -> None:
    """InputError unless `arch` is one we build and `num_classes` (when given) is a sane class count."""
    if arch not in CIFAR_ARCHS and arch not in TORCHVISION_ARCHS:
        raise InputError(f"unknown arch {arch!r}; known: {', '.join(known_archs())}")
    if num_classes is not None and not 1 <= num_classes <= 100_000:
        raise InputError(f"num_classes must be between 1 and 100000, got {num_classes}")
