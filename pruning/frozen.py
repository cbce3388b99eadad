"""Frozen regions: the part of a graph the engine does not prune stays as it is in ONNX, and the rest is pruned.

Recurrent layers (a CRNN's LSTM head), quantized ops, custom domains, control flow, post-processing (NMS) and
any op the converter does not know cannot be converted to an editable PyTorch module. Instead of refusing the
model, the graph is split: every such node and everything downstream of it is the frozen region; the rest (the
prunable part) is converted and pruned as a model of its own whose outputs are the tensors it hands the frozen
region (the boundary) and the model outputs it computes. Those outputs keep their channels like any model
output (analysis.output_layers), so the frozen nodes get exactly the tensors they had. The pruned part's ONNX
and the frozen nodes are then joined into one graph with the sent model's interface.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import onnx

from .errors import UnsupportedModelError
from .prepasses import graph_inputs, probe_feed, run_ort

# Converted or not, these are never pruned through: recurrent state, integer arithmetic, data-dependent control.
ALWAYS_FROZEN = {
    "LSTM", "GRU", "RNN", "Loop", "If", "Scan", "NonMaxSuppression",
    "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QLinearAdd",
    "QLinearMul", "MatMulInteger", "ConvInteger", "QGemm",
}


LAYERS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


@dataclass
class FrozenRegion:
    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    boundary: list[str]  # tensors the prunable part computes for the frozen nodes
    outputs: list[onnx.ValueInfoProto]  # the model's outputs, in the sent order
    opset_imports: list[onnx.OperatorSetIdProto]
    reasons: dict[str, str] = field(default_factory=dict)  # node -> why it is frozen (the nodes that started it)

    def describe(self, macs: int) -> dict[str, Any]:
        """For the report; `macs`, what the frozen nodes cost, is counted on the joined graph."""
        return {"nodes": len(self.nodes), "ops": dict(sorted(Counter(n.op_type for n in self.nodes).items())),
                "because": self.reasons, "macs": macs, "boundary": self.boundary}


def _convertible(node: onnx.NodeProto, opset: int) -> str | None:
    """Why the node cannot be pruned through, or None."""
    if node.domain not in ("", "ai.onnx"):
        return f"custom domain {node.domain!r}"
    if node.op_type in ALWAYS_FROZEN:
        return f"{node.op_type} is not pruned through"
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return "control flow"
    try:
        from onnx2torch.node_converters.registry import get_converter

        get_converter(operation_type=node.op_type, version=opset, domain=node.domain or "")
    except NotImplementedError:
        return f"{node.op_type} (opset {opset}) cannot be converted"
    return None


def _inputs(node: onnx.NodeProto) -> list[str]:
    """A node's inputs, with the outer-scope tensors its subgraphs (Loop, If, Scan bodies) read by name."""
    names = [t for t in node.input if t]
    for a in node.attribute:
        for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
            local = {i.name for i in g.input} | {t.name for t in g.initializer} | {t for n in g.node for t in n.output}
            names += [t for n in g.node for t in _inputs(n) if t not in local]
    return list(dict.fromkeys(names))


def _is_float(types: dict[str, int], name: str) -> bool:
    return types.get(name, onnx.TensorProto.FLOAT) in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                                        onnx.TensorProto.DOUBLE)


def split(proto: onnx.ModelProto, opset: int) -> tuple[onnx.ModelProto, FrozenRegion | None]:
    """The prunable part of `proto` as a model of its own, and the frozen region (None when nothing is frozen)."""
    nodes = list(proto.graph.node)
    reasons = {}
    for n in nodes:
        why = _convertible(n, opset)
        if why is not None:
            reasons[n.name or n.output[0]] = why
    if not reasons:
        return proto, None
    starts = [n for n in nodes if (n.name or n.output[0]) in reasons]
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for t in _inputs(n):
            consumers.setdefault(t, []).append(i)
    frozen: set[int] = set()
    stack = [nodes.index(n) for n in starts]
    while stack:  # everything downstream of a frozen node is frozen
        i = stack.pop()
        if i in frozen:
            continue
        frozen.add(i)
        for t in nodes[i].output:
            stack.extend(consumers.get(t, []))
    types = _elem_types(proto)
    # Tensors made from the input's shape alone (an LSTM's zero initial state) or shape arithmetic that only
    # frozen nodes read go with them: they carry no channel of a layer the engine prunes.
    layered: set[str] = set()  # tensors downstream of a conv/linear layer
    for n in nodes:  # a tensor's shape carries no channel: Shape and Size end the chain
        if n.op_type in LAYERS or (n.op_type not in ("Shape", "Size") and any(t in layered for t in n.input)):
            layered.update(n.output)
    graph_out = {o.name for o in proto.graph.output}
    changed = True
    while changed:
        changed = False
        for i, n in enumerate(nodes):
            if i in frozen or not n.output:
                continue
            users = [j for t in n.output for j in consumers.get(t, [])]
            carries = any(t in layered and _is_float(types, t) for t in n.output)
            if users and all(j in frozen for j in users) and not any(t in graph_out for t in n.output) \
                    and not carries:
                frozen.add(i)
                changed = True
    prunable = [n for i, n in enumerate(nodes) if i not in frozen]
    frozen_nodes = [n for i, n in enumerate(nodes) if i in frozen]
    produced = {t for n in prunable for t in n.output}
    inits = {t.name: t for t in proto.graph.initializer}
    used_by_frozen = {t for n in frozen_nodes for t in _inputs(n)} | {o.name for o in proto.graph.output}
    boundary = [t for t in dict.fromkeys(t for n in frozen_nodes for t in _inputs(n)) if t in produced]
    part_outputs = [*boundary, *[o.name for o in proto.graph.output if o.name in produced and o.name not in boundary]]
    if not part_outputs or not any(n.op_type in LAYERS for n in prunable):
        first = starts[0]
        raise UnsupportedModelError(
            f"nothing prunable is left outside what the engine keeps as it is: node {first.name or first.output[0]!r} "
            f"({reasons[first.name or first.output[0]]}) comes before every convolution")
    used_by_part = {t for n in prunable for t in n.input}
    part = onnx.helper.make_graph(
        prunable, proto.graph.name or "prunable", list(graph_inputs(proto)),
        [_value_info(proto, t, types) for t in part_outputs],
        [inits[t] for t in inits if t in used_by_part],
    )
    model = onnx.helper.make_model(part, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    region = FrozenRegion(
        nodes=frozen_nodes, initializers=[inits[t] for t in inits if t in used_by_frozen],
        boundary=boundary, outputs=list(proto.graph.output), opset_imports=list(proto.opset_import),
        reasons=reasons,
    )
    return model, region


def _elem_types(proto: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:
        inferred = proto
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def _value_info(proto: onnx.ModelProto, name: str, types: dict[str, int]) -> onnx.ValueInfoProto:
    for o in proto.graph.output:
        if o.name == name:
            return o
    return onnx.helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None)


def batch_axes(part: onnx.ModelProto, shapes: dict[str, list[int]],
               fixed_batch: int | None) -> dict[str, dict[int, str]]:
    """Which axis of each of the part's outputs follows the batch, found by running it at two batch sizes
    (`shapes`: each input's, the batch first)."""
    if fixed_batch:
        return {}
    try:
        one = run_ort(part.SerializeToString(), probe_feed(part, {k: [1, *s[1:]] for k, s in shapes.items()}))
        two = run_ort(part.SerializeToString(), probe_feed(part, {k: [2, *s[1:]] for k, s in shapes.items()}))
    except Exception:  # it does not run at batch 2 after all: exported as traced, checked afterwards
        return {}
    axes: dict[str, dict[int, str]] = {}
    for out, a, b in zip(part.graph.output, one, two, strict=True):
        varying = {i: "batch" for i, (x, y) in enumerate(zip(a.shape, b.shape, strict=False)) if x != y}
        if varying:
            axes[out.name] = varying
    return axes


def join(pruned: bytes, region: FrozenRegion) -> bytes:
    """The pruned part's ONNX with the frozen nodes after it, under the sent model's outputs."""
    part = onnx.load_model_from_string(pruned)
    g = part.graph
    taken = {t.name for t in g.initializer} | {t for n in g.node for t in n.output}
    # the exporter named the part's tensors afresh: a frozen tensor of the same name is renamed (the model's
    # outputs keep theirs)
    outputs = {o.name for o in region.outputs}
    internal = [t.name for t in region.initializers] + [t for n in region.nodes for t in n.output if t]
    rename = {t: f"frozen::{t}" for t in internal if t in taken and t not in outputs}
    for t in region.initializers:
        copy = onnx.TensorProto()
        copy.CopyFrom(t)
        copy.name = rename.get(t.name, t.name)
        g.initializer.append(copy)
    for n in region.nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(n)
        for i, t in enumerate(copy.input):
            copy.input[i] = rename.get(t, t)
        for i, t in enumerate(copy.output):
            copy.output[i] = rename.get(t, t)
        g.node.append(copy)
    del g.output[:]
    g.output.extend(region.outputs)
    have = {o.domain: o for o in part.opset_import}
    for o in region.opset_imports:
        if o.domain not in have:
            part.opset_import.append(o)
    data = part.SerializeToString()
    onnx.checker.check_model(onnx.load_model_from_string(data))
    return data
