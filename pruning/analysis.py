"""Analyse: the dependency groups of a model (Torch-Pruning's DepGraph) and what each channel costs.

A group is every layer that must lose the same channels together: a conv's outputs, the BatchNorm after
it, the inputs of every consumer, across residual adds and concatenations. For each group we record,
per convolution or linear layer it touches, whether it loses output or input channels, so that the planner
can predict MACs and parameters of a plan without applying it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from .custom_ops import CUSTOM_PRUNERS, ChannelSelect
from .errors import UnsupportedModelError

COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class LayerCost:
    name: str
    macs: float  # at batch 1
    params: float  # weight (+ bias)
    in_channels: int
    out_channels: int
    depthwise: bool


@dataclass
class Touch:
    """One conv/linear layer in a group: which of its channels (local indices) go with which root channel."""

    layer: str
    is_out: bool  # True: the layer loses output channels; False: input channels (it consumes the group)
    idxs: np.ndarray  # the layer's own channel (or feature) indices
    root_idxs: np.ndarray  # the root channel each of them follows (-1: none)


@dataclass
class GroupInfo:
    root: str  # name of the layer whose output channels define the group
    channels: int
    group: object  # tp Group with full indices
    touches: list[Touch]
    # Grouped convolutions and GroupNorm split the channels into blocks that must stay equal in size:
    # the planner removes "units", unit j being channel j of every block.
    blocks: int = 1

    @property
    def units(self) -> int:
        return self.channels // self.blocks

    def unit_scores(self, scores: np.ndarray) -> np.ndarray:
        return scores.reshape(self.blocks, self.units).mean(axis=0)

    def expand(self, units: np.ndarray) -> np.ndarray:
        """Unit indices -> channel indices (sorted)."""
        offsets = np.arange(self.blocks)[:, None] * self.units
        return np.sort((offsets + np.asarray(units)[None, :]).ravel())


@dataclass
class Analysis:
    graph: tp.DependencyGraph
    groups: list[GroupInfo]
    layers: dict[str, LayerCost]
    protected: list[str]
    macs: float = 0.0  # the whole model's MACs at batch 1, counted in the analysing forward pass

    @property
    def prunable_channels(self) -> int:
        return sum(g.channels for g in self.groups)

    def channel_macs(self, g: int) -> np.ndarray:
        """MACs each channel of group g costs (per-channel share of every layer it touches)."""
        info = self.groups[g]
        cost = np.zeros(info.channels)
        for t in info.touches:
            c = self.layers[t.layer]
            per = c.macs / (c.out_channels if t.is_out or c.depthwise else c.in_channels)
            valid = t.root_idxs >= 0
            np.add.at(cost, t.root_idxs[valid], per)
        return cost


    def coupled_layers(self, g: int) -> np.ndarray:
        """How many conv/linear layers lose each channel of group g (as output or input channel)."""
        info = self.groups[g]
        count = np.zeros(info.channels)
        for t in info.touches:
            hit = np.zeros(info.channels, dtype=bool)
            hit[t.root_idxs[t.root_idxs >= 0]] = True
            count += hit
        return count

    def mean_channel_macs(self) -> float:
        """MACs of an average prunable channel of the model (the reference of FLOP-aware scores)."""
        costs = [self.channel_macs(g) for g in range(len(self.groups))]
        every = np.concatenate(costs) if costs else np.zeros(1)
        return float(every.mean()) if every.size else 1.0


def layer_costs(model: nn.Module, example: torch.Tensor) -> tuple[dict[str, LayerCost], float]:
    """Per conv/linear layer its MACs, parameters and channels, and the whole model's MACs (every op
    FlopCounterMode counts, matmuls included), from one forward pass."""
    from torch.utils.flop_counter import FlopCounterMode

    costs: dict[str, LayerCost] = {}
    hooks = []

    def hook(name: str, m: nn.Module):
        def fn(_m: nn.Module, _inp: object, out: torch.Tensor) -> None:
            per_sample = out[0].numel()
            w = m.weight
            macs = per_sample * (w[0].numel())
            params = w.numel() + (m.bias.numel() if getattr(m, "bias", None) is not None else 0)
            if isinstance(m, nn.Linear):
                in_c, out_c, dw = m.in_features, m.out_features, False
            else:
                in_c, out_c = m.in_channels, m.out_channels
                dw = m.groups > 1 and m.groups == in_c
            costs[name] = LayerCost(name, float(macs), float(params), in_c, out_c, dw)

        return fn

    for name, m in model.named_modules():
        if isinstance(m, COUNTED):
            hooks.append(m.register_forward_hook(hook(name, m)))
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return costs, counter.get_total_flops() / 2


def analyse(model: nn.Module, example: torch.Tensor, protect: list[str]) -> Analysis:
    costs, macs = layer_costs(model, example)
    if not costs:
        raise UnsupportedModelError("the model has no convolution or linear layer: nothing to prune")
    names = {m: n for n, m in model.named_modules()}
    # The layer that produces the output keeps its channels: it is the classifier (or the last conv
    # of a fully convolutional head). Execution order is the order hooks fired.
    classifier = list(costs)[-1]
    patterns = [re.compile(p) for p in protect]
    protected = [n for n in costs if n == classifier or any(p.search(n) for p in patterns)]
    ignored = [m for m, n in names.items() if n in protected]
    try:
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=example, customized_pruners=CUSTOM_PRUNERS
        )
    except Exception as e:
        raise UnsupportedModelError(
            f"the dependency graph cannot be traced: {type(e).__name__}: {str(e)[:200]}"
        ) from None

    groups: list[GroupInfo] = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=(*COUNTED, ChannelSelect)):
        root_module = group[0].dep.target.module
        root = names.get(root_module)
        if root is None or (root not in costs and not isinstance(root_module, ChannelSelect)):
            continue
        touches = []
        for item in group:
            layer = names.get(item.dep.target.module)
            if layer not in costs:
                continue
            is_out = graph.is_out_channel_pruning_fn(item.dep.handler)
            root_idxs = np.asarray([-1 if r is None else r for r in item.root_idxs], dtype=np.int64)
            local = np.asarray([int(i) for i in item.idxs], dtype=np.int64)
            touches.append(Touch(layer, is_out, local, root_idxs))
        channels = len(group[0].idxs)
        blocks = _blocks(group, channels)
        groups.append(GroupInfo(root, channels, group, touches, blocks))
    if not groups:
        raise UnsupportedModelError(
            "nothing is prunable: every layer is protected or feeds the output directly"
        )
    return Analysis(graph, groups, costs, protected, macs)


def _blocks(group: object, channels: int) -> int:
    """How many equal blocks the group's channels form (grouped conv, GroupNorm); 1 when free."""
    blocks = 1
    for item in group:  # type: ignore[attr-defined]
        m = item.dep.target.module
        if isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups < m.out_channels:
            blocks = max(blocks, m.groups)
        elif isinstance(m, nn.GroupNorm):
            blocks = max(blocks, m.num_groups)
    if channels % blocks:
        return 1
    return blocks
