"""Network slimming's signal: the BatchNorm scale of each channel."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from ..errors import SpecError
from .base import Scorer, ScoringContext, register


@register("bn_scale")
def bn_scale(ctx: ScoringContext) -> Scorer:
    if not ctx.has_batchnorm:
        raise SpecError(
            "signal bn_scale needs BatchNorm layers, and this model has none: the ONNX exporter folds "
            "BatchNorm into the convolutions in eval mode. Send safetensors weights with --arch, or pick "
            "another signal (l2_norm, fpgm)"
        )
    inner = tp.importance.BNScaleImportance(group_reduction="mean", normalizer=None)

    def score(group: object) -> torch.Tensor | None:
        has_bn = any(isinstance(dep.target.module, nn.modules.batchnorm._BatchNorm) for dep, _ in group)  # type: ignore[attr-defined]
        if not has_bn:
            return None
        return inner(group)

    return score
