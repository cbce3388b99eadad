"""What Torch-Pruning's group tracing will cost, estimated before it starts.

`DependencyGraph.get_all_groups` walks, from every root layer, each dependency its output channels trigger, and
carries a list of channel indices along every edge: a reshape that flattens C channels into C x s features
multiplies the list by s, its reverse divides it, a concat or split keeps the part in range. Where reshapes
feed back into each other (attention: a feature map flattened into tokens, multiplied with itself, reshaped back)
the lists double at every turn until the process runs out of memory: YOLO11n's PSA block at any input size,
past 8 GiB in seconds.

The same walk with the lists' lengths instead of the lists costs milliseconds. A root whose walk passes
`RUNAWAY_ENTRIES` is kept whole (not traced), and the rest of the model is traced and pruned as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch_pruning as tp
from torch_pruning.dependency import index_mapping as im

#: Index entries one root's walk may carry before it counts as running away: about 2 GB as Torch-Pruning holds
#: them (a list slot, a (idx, root_idx) named tuple and its ints: ~100 bytes an entry).
RUNAWAY_ENTRIES = 20_000_000
BYTES_PER_ENTRY = 100


def _length(mapping: Any, n: int) -> int:
    """How many indices `mapping` turns n indices into (the lists are contiguous ranges where it matters)."""
    if isinstance(mapping, im._FlattenIndexMapping):
        return math.ceil(n / mapping._stride) if mapping.reverse else n * mapping._stride
    if isinstance(mapping, im._ConcatIndexMapping):
        return min(n, mapping.offset[1] - mapping.offset[0]) if mapping.reverse else n
    if isinstance(mapping, im._SplitIndexMapping):
        return n if mapping.reverse else min(n, mapping.offset[1] - mapping.offset[0])
    if isinstance(mapping, im._GQAIndexMapping):
        return n if mapping.reverse else 0
    return n  # slices and the engine's own mappings keep at most as many


def walk_entries(root: tp.dependency.Node, handler: Any, channels: int, limit: int = RUNAWAY_ENTRIES) -> int:
    """Index entries the group walk from `root` carries, as Torch-Pruning's `get_pruning_group` walks it (a
    dependency is followed again only with a list it has not carried yet, here: a length); stops past `limit`."""
    total = channels
    carried: dict[tuple[int, Any], set[int]] = {}
    visited: set[int] = set()
    stack = [(root, handler, channels)]
    while stack:
        node, fn, n = stack.pop()
        visited.add(id(node))
        for dep in node.dependencies:
            if not dep.is_triggered_by(fn):
                continue
            m = n
            for mapping in dep.index_mapping:
                if mapping is not None:
                    m = _length(mapping, m)
            if m == 0:
                continue
            lengths = carried.setdefault((id(dep.target), dep.handler), set())
            if id(dep.target) in visited and m in lengths:
                continue
            lengths.add(m)
            total += m
            if total > limit:
                return total
            stack.append((dep.target, dep.handler, m))
    return total


@dataclass
class TraceCost:
    entries: int  # carried by the walks that will run
    runaway: dict[Any, int]  # root module -> entries when its walk was stopped

    @property
    def gigabytes(self) -> float:
        return self.entries * BYTES_PER_ENTRY / (1 << 30)


def estimate(graph: tp.DependencyGraph, ignored: list[Any], root_types: tuple[type, ...]) -> TraceCost:
    """The cost of `graph.get_all_groups(ignored_layers=ignored, root_module_types=root_types)`, root by root."""
    entries, runaway = 0, {}
    for module, node in graph.module2node.items():
        if module in ignored or not isinstance(module, root_types):
            continue
        pruner = graph.get_pruner_of_module(module)
        channels = None if pruner is None else pruner.get_out_channels(module)
        if channels is None:
            continue
        n = walk_entries(node, pruner.prune_out_channels, channels)
        if n > RUNAWAY_ENTRIES:
            runaway[module] = n
        else:
            entries += n
    return TraceCost(entries, runaway)
