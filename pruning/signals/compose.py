"""The taxonomy of channel pruning signals as code: a signal is four mostly orthogonal choices.

- measure: what is looked at: `weight`s, `bn_scale`, `activation`s, `gradient`s, or
  `activation_gradient` (their product, the first-order Taylor term);
- reduce: how the tensor becomes one number per channel (a norm or statistic);
- aggregate: how the layers coupled in one dependency group combine (sum, mean, max, first);
- normalise: how scores are scaled within a group so groups compare under one threshold.
Then two corrections after normalising: `coupling` (count: multiply by the number of layers that lose the
channel, over 2, since a channel of a residual stream leaves every block it runs through; a plain
conv->conv channel touches 2) and `per_mac` (divide by the MACs the channel costs relative to the model's
average channel: Theis et al.'s FLOP-aware variant; relative to the model, not the group, or it would
cancel in the group's normalisation).
The named signals are presets of this; `{"compose": {...}}` in a spec runs any combination.
"""

from __future__ import annotations

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from ..catalog import COMPOSE_PRESETS
from ..errors import SpecError
from .base import GroupScorer, ScoringContext, as_numpy, normalise, register

_TP_REDUCTION = {"sum": "sum", "mean": "mean", "max": "max", "first": "first"}


def composed(ctx: ScoringContext, axes: dict[str, object]) -> GroupScorer:
    measure = str(axes["measure"])
    reduce = str(axes["reduce"])
    aggregate = str(axes.get("aggregate", "mean"))
    norm = str(axes.get("normalize", "mean"))
    coupling = str(axes.get("coupling", "none"))
    per_mac = bool(axes.get("per_mac", False))
    score = _measure(ctx, measure, reduce, aggregate)
    reference: list[float] = []  # the model's mean channel MACs, computed once

    def scorer(g: int) -> np.ndarray | None:
        s = score(g)
        if s is None:
            return None
        s = normalise(np.nan_to_num(np.asarray(s, dtype=np.float64), nan=0.0), norm)
        if coupling == "count":
            s = s * np.maximum(ctx.analysis.coupled_layers(g), 1.0) / 2.0
        if per_mac:
            if not reference:
                reference.append(max(ctx.analysis.mean_channel_macs(), 1e-12))
            cost = ctx.analysis.channel_macs(g)
            s = s / np.maximum(cost / reference[0], 1e-6)
        return s

    return scorer


def _measure(ctx: ScoringContext, measure: str, reduce: str, aggregate: str) -> GroupScorer:
    groups = ctx.analysis.groups
    if measure == "weight":
        imp = tp.importance.GroupMagnitudeImportance(
            p=1 if reduce == "l1" else 2, group_reduction=_TP_REDUCTION[aggregate], normalizer=None
        )
        return lambda g: as_numpy(imp(groups[g].group))
    if measure == "bn_scale":
        if not ctx.has_batchnorm:
            raise SpecError(
                "signal bn_scale needs BatchNorm layers, and this model has none: the ONNX exporter folds "
                "BatchNorm into the convolutions in eval mode. Send safetensors weights with --arch, or pick "
                "another signal (l2_norm, fpgm)"
            )
        imp = tp.importance.BNScaleImportance(group_reduction=_TP_REDUCTION[aggregate], normalizer=None)

        def bn(g: int) -> np.ndarray | None:
            group = groups[g].group
            if not any(isinstance(d.target.module, nn.modules.batchnorm._BatchNorm) for d, _ in group):  # type: ignore[attr-defined]
                return None  # a group without BatchNorm has no scale to read: it stays whole
            return as_numpy(imp(group))

        return bn
    if measure == "random":
        rng = np.random.default_rng(ctx.seed)
        return lambda g: rng.random(groups[g].channels) + 1e-6

    collector = ctx.collect(gradients=measure in ("gradient", "activation_gradient"))
    st = collector.stats
    count = {k: v.count for k, v in st.items()}
    samples = {k: torch.full_like(v.count, float(max(v.samples, 1))) for k, v in st.items()}
    if measure == "activation":
        num, den, post = {
            "mean_abs": ({k: v.total_abs for k, v in st.items()}, count, None),
            "mean": ({k: v.total for k, v in st.items()}, count, np.abs),
            "l2": ({k: v.total_sq for k, v in st.items()}, count, np.sqrt),
            "nonzero": ({k: v.count - v.zeros for k, v in st.items()}, count, None),
            "var": ({k: v.std() ** 2 * v.count for k, v in st.items()}, count, np.sqrt),
        }[reduce]
    elif measure == "gradient":
        num, den, post = {k: v.grad_sq for k, v in st.items()}, count, np.sqrt
    else:  # activation_gradient
        num, den, post = {
            "abs_mean": ({k: v.act_grad for k, v in st.items()}, count, np.abs),
            "l1": ({k: v.act_grad_abs for k, v in st.items()}, count, None),
            "fisher": ({k: v.fisher / 2 for k, v in st.items()}, samples, None),
        }[reduce]

    def stat(g: int) -> np.ndarray | None:
        n = collector.group_stack(ctx.analysis, g, num)
        d = collector.group_stack(ctx.analysis, g, den)
        if n.shape[0] == 0:
            return None
        per_consumer = n / np.maximum(d, 1e-12)
        if post is not None:
            per_consumer = post(per_consumer)
        if aggregate == "mean":
            return per_consumer.mean(0)
        if aggregate == "max":
            return per_consumer.max(0)
        if aggregate == "first":
            return per_consumer[0]
        return per_consumer.sum(0)

    return stat


def _preset(name: str) -> None:
    axes = COMPOSE_PRESETS[name]

    @register(name)
    def factory(ctx: ScoringContext) -> GroupScorer:
        return composed(ctx, axes)


for _name in COMPOSE_PRESETS:
    _preset(_name)
