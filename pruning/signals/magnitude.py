"""Data-free weight signals: group L1/L2 magnitude, FPGM, and the random baseline.

Scores are aggregated over every coupled layer of the group (Torch-Pruning's group importance with
mean reduction) and left unnormalised; the planner normalises.
"""

from __future__ import annotations

import torch
import torch_pruning as tp

from .base import Scorer, ScoringContext, register


@register("l1_norm")
def l1_norm(ctx: ScoringContext) -> Scorer:
    return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer=None)


@register("l2_norm")
def l2_norm(ctx: ScoringContext) -> Scorer:
    return tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer=None)


@register("fpgm")
def fpgm(ctx: ScoringContext) -> Scorer:
    return tp.importance.FPGMImportance(p=2, group_reduction="mean", normalizer=None)


@register("random")
def random(ctx: ScoringContext) -> Scorer:
    generator = torch.Generator().manual_seed(ctx.seed)

    def score(group: object) -> torch.Tensor:
        n = len(group[0].idxs)  # type: ignore[index]
        return torch.rand(n, generator=generator) + 1e-6

    return score
