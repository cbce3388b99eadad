"""FPGM (He et al. 2019): a filter close to the geometric median of its layer's filters is the most
replaceable by the others. Scored as the sum of Euclidean distances from the filter to every other
filter of its layer (the paper's approximation of distance to the median), averaged over the layers
of the group whose output channels these are; then, like the magnitude presets, multiplied by how many
layers lose the channel over 2 (the taxonomy's `coupling: count`), so residual streams are not ranked as
if they were one layer."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .base import GroupScorer, ScoringContext, normalise, register


@register("fpgm")
def fpgm(ctx: ScoringContext) -> GroupScorer:
    modules = dict(ctx.model.named_modules())

    @torch.no_grad()
    def scorer(g: int) -> np.ndarray | None:
        info = ctx.analysis.groups[g]
        total = np.zeros(info.channels)
        seen = 0
        for t in info.touches:
            m = modules.get(t.layer)
            if not t.is_out or not isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                continue
            valid = t.root_idxs >= 0
            filters = m.weight.detach().double()[torch.from_numpy(t.idxs[valid])].flatten(1)
            dist = torch.cdist(filters[None], filters[None])[0].sum(0).cpu().numpy()
            np.add.at(total, t.root_idxs[valid], dist)
            seen += 1
        if seen == 0:
            return None
        return normalise(total / seen, "mean") * np.maximum(ctx.analysis.coupled_layers(g), 1.0) / 2.0

    return scorer
