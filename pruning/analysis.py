"""Analyse: the dependency groups of a model (Torch-Pruning's DepGraph) and what each channel costs.

A group is every layer that must lose the same channels together: a conv's outputs, the BatchNorm after
it, the inputs of every consumer, across residual adds and concatenations. For each group we record,
per convolution or linear layer it touches, whether it loses output or input channels, so that the planner
can predict MACs and parameters of a plan without applying it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from . import trace_cost
from .custom_ops import CUSTOM_PRUNERS, ChannelSelect
from .errors import SpecError, UnsupportedModelError
from .inputs import Example, as_tuple

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
    # groups left unpruned because their indices do not fit their layers: root layer, channels, why
    frozen: list[dict[str, object]] = field(default_factory=list)
    # index entries Torch-Pruning's group walks were estimated to carry before they ran (trace_cost.py): at most
    trace_entries: int = 0

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


def layer_costs(model: nn.Module, example: Example) -> tuple[dict[str, LayerCost], float]:
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
            model(*as_tuple(example))
    finally:
        for h in hooks:
            h.remove()
    return costs, counter.get_total_flops() / 2


def analyse(model: nn.Module, example: Example, protect: list[str]) -> Analysis:
    costs, macs = layer_costs(model, example)
    if not costs:
        raise UnsupportedModelError("the model has no convolution or linear layer: nothing to prune")
    names = {m: n for n, m in model.named_modules()}
    try:
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=example, customized_pruners=CUSTOM_PRUNERS
        )
    except Exception as e:
        raise UnsupportedModelError(
            f"the dependency graph cannot be traced: {type(e).__name__}: {str(e)[:200]}"
        ) from None
    # Every layer whose output channels reach a model output with no channel-mixing layer between keeps them:
    # the classifier, every head of a detector, the last conv of a dense map. The last layer executed is kept too
    # (a model the graph walk cannot follow still keeps its classifier).
    heads = output_layers(graph)
    patterns = [re.compile(p) for p in protect]
    last = list(costs)[-1]
    protected = [n for n in costs if n == last or model.get_submodule(n) in heads
                 or any(p.search(n) for p in patterns)]
    ignored = [m for m, n in names.items() if n in protected or (m in heads and n not in costs)]

    groups: list[GroupInfo] = []
    frozen: list[dict[str, object]] = []
    # estimated before Torch-Pruning walks it: a root whose index lists run away is kept whole, not traced
    cost = trace_cost.estimate(graph, ignored, (*COUNTED, ChannelSelect))
    for module, entries in cost.runaway.items():
        ignored.append(module)
        pruner = graph.get_pruner_of_module(module)
        frozen.append({"root": names.get(module, type(module).__name__),
                       "channels": pruner.get_out_channels(module) if pruner else None,
                       "reason": f"tracing its channels runs away: past {entries:,} index entries (over "
                                 f"{entries * trace_cost.BYTES_PER_ENTRY / (1 << 30):.0f} GB) through reshapes "
                                 "that feed back into each other, as in attention; kept whole"})
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
        why = _inconsistent(graph, group, names)
        if why is not None:
            frozen.append({"root": root, "channels": channels, "reason": why})
            continue
        blocks = _blocks(group, channels)
        groups.append(GroupInfo(root, channels, group, touches, blocks))
    if not groups:
        by_spec = [n for n in protected if any(p.search(n) for p in patterns)]
        if by_spec and not frozen:  # the user's protect patterns took what the model would have let go
            raise SpecError(f"nothing is prunable: the spec's protect patterns cover {len(by_spec)} of the "
                            f"{len(costs)} layers, and the others feed an output directly")
        raise UnsupportedModelError(
            "nothing is prunable: every layer is protected or feeds the output directly"
        )
    return Analysis(graph, groups, costs, protected, macs, frozen, cost.entries)


MIXING = (nn.modules.conv._ConvNd, nn.Linear)


def output_layers(graph: tp.DependencyGraph) -> set[nn.Module]:
    """The conv/linear layers whose outputs reach a model output through channel-preserving ops only."""
    nodes = list(graph.module2node.values())
    ends = [n for n in nodes if not n.outputs]
    found: set[nn.Module] = set()
    seen: set[int] = set()
    stack = list(ends)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, MIXING):
            found.add(node.module)
            continue
        stack.extend(node.inputs)
    return found


def _size(module: nn.Module, out: bool) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features if out else module.in_features
    if isinstance(module, nn.modules.conv._ConvNd):
        if out:
            return module.out_channels
        return module.in_channels
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1])
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, ChannelSelect):
        return len(module.src) if out else module.in_channels
    return None


def _inconsistent(graph: tp.DependencyGraph, group: object, names: dict[nn.Module, str]) -> str | None:
    """Why a dependency group's indices cannot be right (an index past a member's size, a member asked to lose
    more channels than it has), or None. Torch-Pruning maps indices through reshapes, splits and concatenations
    it understands; where it does not (a reshape of channels into a box head's (4, 16) bins, a fused qkv split, a
    concatenation with constants) the indices overrun, and pruning them would fail or cut the wrong channels."""
    for item in group:  # type: ignore[attr-defined]
        module = item.dep.target.module
        if not isinstance(module, nn.Module):
            continue
        size = _size(module, graph.is_out_channel_pruning_fn(item.dep.handler))
        if size is None:
            continue
        idxs = [int(i) for i in item.idxs]
        if any(i < 0 or i >= size for i in idxs) or len(set(idxs)) > size:
            layer = names.get(module, type(module).__name__)
            return (f"{layer}: indices up to {max(idxs)} for {size} channels (a reshape, split or concatenation the "
                    "dependency graph does not map)")
    return None


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
