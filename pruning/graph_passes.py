"""Rewrites of the converted ONNX graph (a torch.fx GraphModule) into layers Torch-Pruning understands.

onnx2torch keeps every ONNX op as a module and every initializer outside a Conv/Gemm as a buffer.
Torch-Pruning only prunes parameters of layers it knows, so:
- `MatMul(x, W)` with a constant W (plus a following `Add(b)`) becomes an `nn.Linear` (ConvNeXt's
  pointwise MLPs, transformer projections);
- per-channel float constants feeding element-wise ops (layer scales, biases, positional embeddings)
  become parameters, which Torch-Pruning prunes along with the channels they broadcast over;
- chains of reshapes, transposes and slices that only move channels around (channel shuffle, chunk)
  become one `ChannelSelect` with its index list: Torch-Pruning loops forever on a shuffle's reshapes, and
  a slice's constant bounds would be stale after pruning, while an index list is pruned with the channels.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from .inputs import Example, as_tuple


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    return gm.get_submodule(str(node.target))


def _constant(gm: fx.GraphModule, node: object) -> torch.Tensor | None:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    value = gm
    for part in str(node.target).split("."):
        value = getattr(value, part)
    return value if isinstance(value, torch.Tensor) else None


def _kind(m: nn.Module | None) -> str:
    return type(m).__name__ if m is not None else ""


def linearize_matmuls(gm: fx.GraphModule) -> int:
    changed = 0
    for node in list(gm.graph.nodes):
        m = _module(gm, node)
        if _kind(m) != "OnnxMatMul" or len(node.args) != 2:
            continue
        x, w_node = node.args
        w = _constant(gm, w_node)
        if w is None or w.dim() != 2 or not w.is_floating_point():
            continue
        in_features, out_features = w.shape
        bias = None
        users = list(node.users)
        add = users[0] if len(users) == 1 else None
        add_module = _module(gm, add) if add is not None else None
        if add is not None and _kind(add_module) == "OnnxBinaryMathOperation" and add_module.math_op_function is torch.add:
            other = add.args[0] if add.args[1] is node else add.args[1]
            b = _constant(gm, other)
            if b is not None and b.dim() == 1 and b.shape[0] == out_features and getattr(add_module, "broadcast", None) != 1:
                bias = b
        linear = nn.Linear(in_features, out_features, bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(w.t())
            if bias is not None:
                linear.bias.copy_(bias)
        name = f"linear_{changed}_" + str(node.target).replace("/", "_").replace(".", "_")
        gm.add_submodule(name, linear)
        replaced = add if bias is not None else node
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(name, (x,))
        replaced.replace_all_uses_with(new)
        if bias is not None:
            gm.graph.erase_node(add)
        gm.graph.erase_node(node)
        changed += 1
    if changed:
        _finish(gm)
    return changed


ELEMENTWISE = {"OnnxBinaryMathOperation"}


def parametrize_constants(gm: fx.GraphModule) -> int:
    """Float constants with more than one element that feed element-wise ops become parameters."""
    changed = 0
    for node in gm.graph.nodes:
        if _kind(_module(gm, node)) not in ELEMENTWISE:
            continue
        for arg in node.args:
            t = _constant(gm, arg)
            if t is None or isinstance(t, nn.Parameter) or not t.is_floating_point() or t.numel() <= 1:
                continue
            owner_name, _, attr = str(arg.target).rpartition(".")
            owner = gm.get_submodule(owner_name) if owner_name else gm
            delattr(owner, attr)
            owner.register_parameter(attr, nn.Parameter(t.detach().clone(), requires_grad=True))
            changed += 1
    return changed


ROUTING = {"OnnxReshape", "OnnxTranspose", "OnnxSlice", "OnnxSliceV9", "OnnxSqueezeStaticAxes",
           "OnnxUnsqueezeStaticAxes"}


def _values(gm: fx.GraphModule, example: Example) -> dict[fx.Node, object]:
    """Every node's value when the module runs on `example`."""
    rec = _Recorder(gm)
    with torch.no_grad():
        rec.run(*as_tuple(example))
    return rec.values


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[fx.Node, object] = {}

    def run_node(self, n: fx.Node) -> object:
        out = super().run_node(n)
        self.values[n] = out
        return out


def _is_nchw(v: object) -> bool:
    return isinstance(v, torch.Tensor) and v.dim() == 4 and v.shape[0] == 1


def channel_routes(gm: fx.GraphModule, example: Example) -> int:
    """Replace channel-only data movement by `ChannelSelect` (see the module docstring)."""
    from .custom_ops import ChannelSelect

    values = _values(gm, example)
    changed = 0
    for end in list(gm.graph.nodes):
        if _kind(_module(gm, end)) not in ROUTING or not _is_nchw(values.get(end)):
            continue
        chain = [end]
        start = end.args[0]
        while (
            isinstance(start, fx.Node)
            and _kind(_module(gm, start)) in ROUTING
            and len(start.users) == 1
            and not _is_nchw(values.get(start))
        ):
            chain.append(start)
            start = start.args[0]
        if not isinstance(start, fx.Node) or not _is_nchw(values.get(start)):
            continue
        src_val = values[start]
        out_val = values[end]
        assert isinstance(src_val, torch.Tensor) and isinstance(out_val, torch.Tensor)
        if out_val.shape[2:] != src_val.shape[2:]:
            continue
        src = _selection(gm, list(reversed(chain)), start, values, src_val)
        if src is None:
            continue
        name = f"channel_select_{changed}"
        gm.add_submodule(name, ChannelSelect(int(src_val.shape[1]), src, derived=True))
        with gm.graph.inserting_after(start):
            new = gm.graph.call_module(name, (start,))
        end.replace_all_uses_with(new)
        values[new] = out_val  # routes downstream of this one start from it
        changed += 1
    if changed:
        _finish(gm)
    return changed


def channel_broadcasts(gm: fx.GraphModule, example: Example) -> int:
    """An elementwise op between a one-channel map and a C-channel one (MobileViTv2's attention scores times its
    keys) gets the one channel spread to C by a `ChannelSelect`. Torch-Pruning takes both operands of an
    elementwise op to share their channels, so it paired the keys' channel indices with the single score channel
    and pruned that to nothing; spread, the C copies go with the keys and the one channel stays on its own."""
    from .custom_ops import ChannelSelect

    values = _values(gm, example)
    changed = 0
    for node in list(gm.graph.nodes):
        if _kind(_module(gm, node)) not in ELEMENTWISE or len(node.args) != 2:
            continue
        if not all(isinstance(a, fx.Node) and _is_nchw(values.get(a)) for a in node.args):
            continue
        a, b = (values[arg] for arg in node.args)
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
        if sorted((a.shape[1], b.shape[1]))[0] != 1 or a.shape[1] == b.shape[1]:
            continue
        one = 0 if a.shape[1] == 1 else 1
        channels = int(max(a.shape[1], b.shape[1]))
        name = f"channel_broadcast_{changed}"
        gm.add_submodule(name, ChannelSelect(1, [0] * channels))
        with gm.graph.inserting_before(node):
            spread = gm.graph.call_module(name, (node.args[one],))
        node.args = tuple(spread if i == one else arg for i, arg in enumerate(node.args))
        changed += 1
    if changed:
        _finish(gm)
    return changed


def _selection(
    gm: fx.GraphModule, chain: list[fx.Node], start: fx.Node, values: dict[fx.Node, object], x: torch.Tensor
) -> list[int] | None:
    """Run the chain on a tensor whose every element holds its own index; a pure channel selection
    maps output (i, h, w) to input (src[i], h, w) for every position."""
    _, c, h, w = x.shape
    index = torch.arange(c * h * w, dtype=torch.float64).reshape(1, c, h, w)
    cur: object = index
    prev = start
    try:
        for node in chain:
            args = tuple(cur if a is prev else values.get(a, a) if isinstance(a, fx.Node) else a for a in node.args)
            cur = _module(gm, node)(*args)  # type: ignore[misc]
            prev = node
    except Exception:
        return None
    if not isinstance(cur, torch.Tensor) or cur.dim() != 4 or cur.shape[2:] != (h, w):
        return None
    channel = torch.div(cur[0, :, 0, 0], h * w, rounding_mode="floor").long()
    expected = channel[:, None, None] * (h * w) + torch.arange(h * w, dtype=torch.float64).reshape(h, w)[None]
    if not torch.equal(cur[0], expected.to(cur.dtype)):
        return None
    return [int(v) for v in channel]


SPLITS = {"OnnxSplit13", "OnnxSplit"}


def channel_splits(gm: fx.GraphModule, example: Example) -> int:
    """A split of an NCHW tensor along its channels becomes one `ChannelSelect` per chunk (YOLO's C2f and CSP
    blocks split a conv's output in two). Torch-Pruning maps a split's indices by assuming one consumer per
    chunk, and fails (IndexError) or goes out of step when a chunk feeds both a concatenation and the next
    block; index lists are pruned with the channels and shrink with them."""
    import operator

    from .custom_ops import ChannelSelect

    values = _values(gm, example)
    changed = 0
    for node in list(gm.graph.nodes):
        m = _module(gm, node)
        if _kind(m) not in SPLITS or not node.args or getattr(m, "axis", None) not in (1, -3):
            continue
        src, out = node.args[0], values.get(node)
        if not isinstance(src, fx.Node) or not _is_nchw(values.get(src)) or not isinstance(out, (tuple, list)):
            continue
        users = list(node.users)
        if not all(u.op == "call_function" and u.target is operator.getitem and isinstance(u.args[1], int)
                   for u in users):
            continue
        channels = int(values[src].shape[1])  # type: ignore[union-attr]
        offsets = [0]
        for chunk in out:
            offsets.append(offsets[-1] + int(chunk.shape[1]))
        for user in users:
            i = int(user.args[1])
            name = f"channel_split_{changed}_{i}_{len(gm.graph.nodes)}"
            gm.add_submodule(name, ChannelSelect(channels, list(range(offsets[i], offsets[i + 1])), derived=True))
            with gm.graph.inserting_after(src):
                new = gm.graph.call_module(name, (src,))
            user.replace_all_uses_with(new)
            gm.graph.erase_node(user)
        gm.graph.erase_node(node)
        changed += 1
    if changed:
        _finish(gm)
    return changed


def sized_resizes(gm: fx.GraphModule) -> int:
    """onnx2torch's `Resize` to computed sizes becomes `SizedResize`, which keeps the sizes symbolic in a
    re-export (see custom_ops.SizedResize); a resize by constant scales is left as it is."""
    from .custom_ops import SizedResize

    changed = 0
    for node in gm.graph.nodes:
        m = _module(gm, node)
        if _kind(m) != "OnnxResize" or not isinstance(node.kwargs.get("sizes", node.args[3] if len(node.args) > 3
                                                                         else None), fx.Node):
            continue
        if getattr(m, "ignore_bs_ch_size", False) or not getattr(m, "ignore_roi", True):
            continue
        parent, _, name = str(node.target).rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, name, SizedResize(m.onnx_mode, m.align_corners))
        changed += 1
    if changed:
        gm.recompile()
    return changed


def shaped_reshapes(gm: fx.GraphModule) -> int:
    """onnx2torch's `Reshape` to a computed shape becomes `ShapedReshape`, which keeps the shape computed in a
    re-export (see custom_ops.ShapedReshape); a reshape to a constant shape is left as it is."""
    from .custom_ops import ShapedReshape

    changed = 0
    for node in gm.graph.nodes:
        m = _module(gm, node)
        if _kind(m) != "OnnxReshape" or len(node.args) != 2 or _constant(gm, node.args[1]) is not None:
            continue
        parent, _, name = str(node.target).rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, name, ShapedReshape())
        changed += 1
    if changed:
        gm.recompile()
    return changed


def _finish(gm: fx.GraphModule) -> None:
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()


def run_all(gm: nn.Module, example: Example) -> nn.Module:
    if isinstance(gm, fx.GraphModule):
        sized_resizes(gm)
        shaped_reshapes(gm)
        channel_splits(gm, example)
        channel_routes(gm, example)
        channel_broadcasts(gm, example)
        linearize_matmuls(gm)
        parametrize_constants(gm)
    return gm
