"""Import: bytes from a user -> an editable PyTorch module, without ever unpickling anything.

Accepted: ONNX (opset >= 7, upgraded and simplified by `prepasses`; one file, no external data) and safetensors + an architecture name.
Everything that loads by running code (pickles, TorchScript, .pt2 archives) is refused by sniffing
its bytes, whatever the file is called.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from google.protobuf.message import Message
from torch import nn

from . import frozen, prepasses, zoo
from .errors import BadModelError, InputError, SpecError, UnsupportedModelError
from .frozen import FrozenRegion
from .headers import MAX_TENSOR_ELEMENTS, SEND_INSTEAD, refuse_old_opset
from .headers import sniff as _sniff_file
from .inputs import Example, GraphInput
from .inputs import example as zeros_example


@dataclass
class LoadedModel:
    module: nn.Module
    input_name: str
    output_names: list[str]
    input_shape: list[int]  # with batch 1, or the batch the model fixes
    dynamic_axes: dict[str, dict[int, str]]
    opset: int
    source: str  # "onnx" or "safetensors"
    onnx_bytes: bytes | None = None  # the original graph, when one was sent
    arch: str | None = None
    notes: list[str] = field(default_factory=list)
    fixed_batch: int | None = None  # the batch size the model declares, when it is not symbolic
    prepasses: list[dict[str, Any]] = field(default_factory=list)  # import passes that ran, with what they did
    symbolic_dims: list[int] = field(default_factory=list)  # input axes besides the batch the model leaves free
    # the part of the graph kept as it is (frozen.py); `module` is then the prunable part only, and its outputs
    # (`output_names`) are what it hands the frozen nodes
    frozen: FrozenRegion | None = None
    part_opset: int | None = None  # the opset the prunable part is exported at, to join the frozen nodes
    input_dtype: str = "float32"  # the first input's
    other_inputs: list[GraphInput] = field(default_factory=list)  # the model's inputs after the first, in graph order

    @property
    def inputs(self) -> list[GraphInput]:
        """Every input in graph order: the order the module takes them in."""
        first = GraphInput(self.input_name, self.input_shape, self.input_dtype, self.symbolic_dims)
        return [first, *self.other_inputs]

    @property
    def has_batchnorm(self) -> bool:
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.module.modules())


def sniff(data: bytes) -> str:
    """'onnx', 'safetensors', or raise saying what the bytes are and what to send instead."""
    return _sniff_file(io.BytesIO(data), len(data))


def load_model(
    data: bytes,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    input_shape: list[int] | None = None,
    data_shapes: dict[str, list[int]] | None = None,
) -> LoadedModel:
    """`data_shapes`, the shapes of the calibration or evaluation arrays (batch first) by .npz key, size an ONNX
    input's symbolic dimensions when `input_shape` (the first input's) does not."""
    kind = sniff(data)
    if kind == "safetensors":
        if arch is None:
            raise BadModelError("safetensors weights need an architecture: give --arch (and --num-classes)")
        return _load_safetensors(data, arch, num_classes, input_shape)
    if arch is not None:
        raise BadModelError("--arch goes with safetensors weights; this file is not safetensors")
    return _load_onnx(data, input_shape, data_shapes)


# ---------------------------------------------------------------------------------------------- safetensors


def _load_safetensors(
    data: bytes, arch: str, num_classes: int | None, input_shape: list[int] | None
) -> LoadedModel:
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    try:
        state = load_safetensors(data)
    except (SafetensorError, ValueError, json.JSONDecodeError) as e:
        raise BadModelError(f"the safetensors file cannot be read: {e}") from None
    if num_classes is None:
        num_classes = _guess_num_classes(state)
    model = zoo.build(arch, num_classes)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
        raise BadModelError(f"the weights do not match arch {arch!r}: " + "; ".join(parts))
    for k, t in state.items():
        if tuple(t.shape) != tuple(expected[k].shape):
            raise BadModelError(
                f"the weights do not match arch {arch!r} with num_classes={num_classes}: "
                f"{k} has shape {list(t.shape)}, expected {list(expected[k].shape)}"
            )
    model.load_state_dict(state, strict=False)  # strictness checked above, num_batches_tracked may be absent
    shape = input_shape or zoo.default_input_shape(arch)
    return LoadedModel(
        module=model.float().eval(),
        input_name="input",
        output_names=["output"],
        input_shape=[1, *shape[1:]],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        opset=17,
        source="safetensors",
        arch=arch,
    )


def _guess_num_classes(state: dict[str, torch.Tensor]) -> int:
    # The last 2-D (or 4-D 1x1) weight with a bias is the classifier in every zoo architecture.
    for key in reversed(list(state)):
        if key.endswith(".weight") and state[key].dim() in (2, 4) and key[: -len("weight")] + "bias" in state:
            return int(state[key].shape[0])
    raise InputError("cannot tell the number of classes from the weights: give --num-classes")


# --------------------------------------------------------------------------------------------------- ONNX


def _load_onnx(data: bytes, input_shape: list[int] | None,
               data_shapes: dict[str, list[int]] | None = None) -> LoadedModel:
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as e:  # protobuf raises its own DecodeError, or RuntimeError, depending on version
        raise BadModelError(
            f"not an ONNX model or safetensors file (protobuf: {str(e)[:120]}); " + SEND_INSTEAD
        ) from None
    if not proto.graph.node:
        raise BadModelError("not an ONNX model (no graph nodes); " + SEND_INSTEAD)
    _refuse_external_data(proto)
    opset = prepasses.default_opset(proto)
    refuse_old_opset(opset)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise BadModelError(f"the ONNX model fails onnx.checker: {str(e).splitlines()[0][:300]}") from None

    _refuse_absurd_shapes(proto)

    dynamic_axes: dict[str, dict[int, str]] = {}
    inputs = _graph_inputs(proto, dynamic_axes)
    data_shapes = dict(data_shapes or {})
    if len(inputs) == 1 and "x" in data_shapes:  # a single input's samples come under key x (Dataset.bind)
        data_shapes[inputs[0].name] = data_shapes["x"]
    for k, graph_input in enumerate(inputs):
        shape = graph_input.shape
        given = input_shape if k == 0 else None
        if given is not None:
            if len(given) != len(shape) or any(s not in (-1, g) for s, g in zip(shape[1:], given[1:], strict=True)):
                raise SpecError(f"input_shape {given} does not fit the model's input {shape}")
            graph_input.shape = [shape[0], *given[1:]]
        elif len(data_shapes.get(graph_input.name, [])) == len(shape):
            sizes = data_shapes[graph_input.name]
            graph_input.shape = [d if i and s == -1 else s for i, (s, d) in enumerate(zip(shape, sizes, strict=True))]
    fixed_batch = _fixed_batch(inputs)
    for graph_input in inputs:  # a fixed batch stays what the model declares; a symbolic one is probed at 1
        graph_input.shape[0] = fixed_batch or 1
    if any(s == -1 for i in inputs for s in i.shape):
        trace_shapes(data, inputs)
    shape = inputs[0].shape
    for out in proto.graph.output:
        for i, d in enumerate(out.type.tensor_type.shape.dim):
            if not d.HasField("dim_value"):
                dynamic_axes.setdefault(out.name, {})[i] = d.dim_param or f"dim{i}"

    prepared = prepasses.prepare(proto, {i.name: i.shape for i in inputs})
    part, region = frozen.split(prepared.proto, prepasses.default_opset(prepared.proto))
    output_names = [o.name for o in proto.graph.output]
    expected: list[Any] | None = prepared.expected  # what the converted module must reproduce
    if region is not None:
        # the prunable part is a model of its own: its outputs are what it hands the frozen nodes
        output_names = [o.name for o in part.graph.output]
        dynamic_axes = {**{i.name: dynamic_axes.get(i.name, {}) for i in inputs},
                        **frozen.batch_axes(part, {i.name: i.shape for i in inputs}, fixed_batch)}
        expected = None
    module = _to_torch(_prepare(part), zeros_example(inputs))
    _check_conversion(part.SerializeToString() if expected is None else data, module, prepared.feed, expected)
    first = inputs[0]
    return LoadedModel(
        module=module,
        input_name=first.name,
        output_names=output_names,
        input_shape=shape,
        dynamic_axes={k: v for k, v in dynamic_axes.items() if v},
        opset=opset,
        source="onnx",
        onnx_bytes=data,
        fixed_batch=fixed_batch,
        prepasses=prepared.passes,
        symbolic_dims=first.symbolic,
        frozen=region,
        part_opset=prepasses.default_opset(prepared.proto) if region is not None else None,
        input_dtype=first.dtype,
        other_inputs=inputs[1:],
    )


def _graph_inputs(proto: onnx.ModelProto, dynamic_axes: dict[str, dict[int, str]]) -> list[GraphInput]:
    """The graph's inputs with their dtypes and declared shapes (-1 where symbolic, named in `dynamic_axes`)."""
    inputs = []
    for graph_input in prepasses.graph_inputs(proto):
        elem = graph_input.type.tensor_type.elem_type
        dtype = prepasses.NUMPY_TYPES.get(elem)
        if dtype is None:
            raise UnsupportedModelError(f"input {graph_input.name!r} is "
                                        f"{onnx.TensorProto.DataType.Name(elem).lower()}: not a type the engine feeds")
        shape: list[int] = []
        for i, d in enumerate(graph_input.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(d.dim_value)
            else:
                dynamic_axes.setdefault(graph_input.name, {})[i] = d.dim_param or f"dim{i}"
                shape.append(-1)
        if not shape:
            what = "the model's input" if len(proto.graph.input) == 1 else f"input {graph_input.name!r}"
            raise UnsupportedModelError(f"{what} has no shape: re-export it with its input shape (every input "
                                        "takes the batch on its first axis)")
        inputs.append(GraphInput(graph_input.name, shape, np.dtype(dtype).name,
                                 [i for i, s in enumerate(shape) if s == -1 and i > 0]))
    floats = [i for i in inputs if np.issubdtype(np.dtype(i.dtype), np.floating)]
    if not floats:
        raise UnsupportedModelError(
            f"input {inputs[0].name!r} is {inputs[0].dtype}: the engine prunes models with a float32 input (images, "
            "spectrograms, features); integer inputs beside it are fed as they are")
    odd = next((i for i in floats if i.dtype != "float32"), None)
    if odd is not None:
        raise UnsupportedModelError(f"input {odd.name!r} is {odd.dtype}: float inputs are taken as float32 tensors; "
                                    "re-export the model with float32 inputs")
    return inputs


def _fixed_batch(inputs: list[GraphInput]) -> int | None:
    """The batch the inputs fix, if any does; inputs that fix different batches are not a model we can feed."""
    fixed = {i.name: i.shape[0] for i in inputs if i.shape[0] > 0}
    if len(set(fixed.values())) > 1:
        raise UnsupportedModelError(f"the inputs fix different batch sizes on their first axis ({fixed}): every "
                                    "input must take the batch there")
    return next(iter(fixed.values()), None)


TRACE_SIZES = (224, 256, 320, 384, 448, 512, 640)  # multiples of 32, as detectors' strides want


def trace_shapes(data: bytes, inputs: list[GraphInput]) -> None:
    """Sizes for the inputs' symbolic dimensions (height, width, sequence) when neither the data nor the spec
    gives them: the first of TRACE_SIZES the sent model runs at in ONNX Runtime, written into `inputs`."""
    from .inputs import arrays

    for size in TRACE_SIZES:
        candidates = [GraphInput(i.name, [size if s == -1 else s for s in i.shape], i.dtype) for i in inputs]
        if any(_elements(c.shape[1:]) > MAX_TENSOR_ELEMENTS for c in candidates):
            break
        try:
            prepasses.run_ort(data, dict(zip([i.name for i in inputs], arrays(candidates), strict=True)))
        except Exception:
            continue
        for i, c in zip(inputs, candidates, strict=True):
            i.shape = c.shape
        return
    shapes = {i.name: i.shape for i in inputs if -1 in i.shape}
    what = f"input {inputs[0].shape}" if len(inputs) == 1 else f"inputs {shapes}"
    raise InputError(f"the model's {what} has symbolic dimensions and it runs at none of the sizes "
                     f"{list(TRACE_SIZES)}: give input_shape (--input-shape) or calibration data of the size it takes")


def second_shape(shape: list[int], symbolic: list[int]) -> list[int] | None:
    """A second input shape to check a model with symbolic dimensions at: each one 32 larger."""
    if not symbolic:
        return None
    return [s + 32 if i in symbolic else s for i, s in enumerate(shape)]


def _elements(dims: Iterable[int]) -> int:
    n = 1
    for d in dims:
        n *= max(int(d), 1)
    return n


def _refuse_absurd_shapes(proto: onnx.ModelProto) -> None:
    """Shapes are declared, not stored: a few bytes can ask for terabytes. Refuse, before anything is
    allocated, any input or intermediate tensor whose shape (dynamic dimensions taken as 1, constants
    propagated) exceeds MAX_TENSOR_ELEMENTS. (onnx.checker already refuses initializers declaring more
    than they hold.)"""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as e:
        raise BadModelError(f"ONNX shape inference fails: {str(e).splitlines()[0][:300]}") from None
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim]
        if _elements(dims) > MAX_TENSOR_ELEMENTS:
            raise BadModelError(f"tensor {value.name!r} has shape {dims} ({_elements(dims)} elements at batch 1), "
                                f"over the limit of {MAX_TENSOR_ELEMENTS}")


def _all_tensors(message: Message) -> Iterator[onnx.TensorProto]:
    """Every TensorProto anywhere in a message: initializers, sparse ones, attributes, model-local functions,
    training graphs, subgraphs, and whatever a future field adds."""
    if isinstance(message, onnx.TensorProto):
        yield message
        return
    for descriptor, value in message.ListFields():
        if descriptor.type == descriptor.TYPE_MESSAGE:
            for item in [value] if isinstance(value, Message) else value:
                yield from _all_tensors(item)


def _refuse_external_data(proto: onnx.ModelProto) -> None:
    """Before onnx.checker, shape inference, onnx2torch or ONNX Runtime see the model: each of them resolves an
    external-data location against the process's working directory (the checker stats it, a loader reads it)."""
    for t in _all_tensors(proto):
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data) > 0:
            raise BadModelError(
                f"tensor {t.name!r} keeps its data in an external file: refused; "
                "save the model as one file (onnx.save(model, path, save_as_external_data=False))"
            )


def _prepare(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Pre-passes that make exporter output readable by onnx2torch.

    The legacy exporter de-duplicates identical constant tensors by routing one initializer through
    `Identity` nodes; onnx2torch looks initializers up by name and cannot follow them, so each such
    Identity becomes an initializer of its own. `Constant` nodes become initializers for the same reason.
    Optional inputs left empty at the end of a node's inputs (`Clip(x, min, "")`, as F.normalize exports) are
    dropped, which ONNX allows: onnx2torch looks the empty name up as a constant and fails.
    """
    proto_copy = onnx.ModelProto()
    proto_copy.CopyFrom(proto)
    graph = proto_copy.graph
    inits = {i.name: i for i in graph.initializer}
    kept = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            t = onnx.TensorProto()
            t.CopyFrom(inits[node.input[0]])
            t.name = node.output[0]
            graph.initializer.append(t)
            inits[t.name] = t
            continue
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(node.attribute[0].t)
            t.name = node.output[0]
            graph.initializer.append(t)
            inits[t.name] = t
            continue
        while len(node.input) and not node.input[-1]:
            node.input.pop()
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    graph_outputs = {o.name for o in graph.output}
    if graph_outputs & set(inits):
        raise UnsupportedModelError("a model whose output is a constant has nothing to prune")
    _layernorm_shapes(graph, inits)
    return proto_copy


def _layernorm_shapes(graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto]) -> None:
    """onnx2torch sizes a LayerNorm from its input's value_info, which shape inference leaves without dimensions
    after the reshapes and transposes of window attention (Swin, MobileViT): normalized_shape came out [0]. The
    normalized dimensions are the scale's, so they are written into the input's value_info from it."""
    infos = {v.name: v for v in graph.value_info}
    for node in graph.node:
        if node.op_type != "LayerNormalization" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        scale = list(inits[node.input[1]].dims)
        info = infos.get(node.input[0])
        dims = list(info.type.tensor_type.shape.dim) if info is not None else []
        if axis >= 0 and len(dims) != axis + len(scale):
            continue  # the rank is unknown: nothing to anchor a positive axis to
        lead = max(len(dims) - len(scale), 0) if dims else 1
        if dims and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims[lead:]):
            continue
        elem = info.type.tensor_type.elem_type if info is not None else onnx.TensorProto.FLOAT
        shape: list[int | str] = [f"d{i}" for i in range(lead)] + scale
        fixed = onnx.helper.make_tensor_value_info(node.input[0], elem or onnx.TensorProto.FLOAT, shape)
        if info is not None:
            info.CopyFrom(fixed)
        else:
            graph.value_info.append(fixed)
            infos[node.input[0]] = graph.value_info[-1]


def _to_torch(proto: onnx.ModelProto, example: Example) -> nn.Module:
    from onnx2torch import convert

    from .compat import onnx2torch_opset_lookup

    onnx2torch_opset_lookup()

    try:
        module = convert(proto)
    except NotImplementedError as e:
        found = re.search(r"operation_type='([^']+)', version=(\d+)", str(e))
        what = f"{found.group(1)} (opset {found.group(2)})" if found else str(e).splitlines()[0][:200]
        raise UnsupportedModelError(f"unsupported ONNX operation {what}: it cannot be converted for pruning") from None
    except Exception as e:
        raise UnsupportedModelError(
            f"the ONNX graph cannot be converted for pruning: {type(e).__name__}: {str(e)[:200]}"
        ) from None
    from .graph_passes import run_all

    try:
        return run_all(module.float().eval(), example)
    except Exception as e:
        raise UnsupportedModelError(
            f"the converted graph cannot be prepared for pruning: {type(e).__name__}: {str(e)[:200]}"
        ) from None


def _check_conversion(data: bytes, module: nn.Module, feed: dict[str, Any], expected: list[Any] | None) -> None:
    """The editable graph must compute what `data` computes on the probe `feed`, every output of it, or every
    later check is moot. `expected`: data's outputs on it, when already known."""
    if expected is None:
        try:
            expected = prepasses.run_ort(data, feed)
        except Exception as e:
            raise BadModelError(f"ONNX Runtime cannot run the model: {str(e).splitlines()[0][:200]}") from None
    with torch.no_grad():
        got = outputs_of(module(*(torch.from_numpy(x) for x in feed.values())))
    why = prepasses.same_outputs(expected, [t.detach().numpy() for t in got])
    if why is not None:
        raise UnsupportedModelError(
            f"the converted graph does not reproduce the model ({why}); an operation is not converted faithfully"
        )


def outputs_of(result: object) -> list[torch.Tensor]:
    """A module's outputs as a flat list, in the order of the graph's outputs."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)):
        return [t for item in result for t in outputs_of(item)]
    if isinstance(result, dict):
        return [t for item in result.values() for t in outputs_of(item)]
    raise TypeError(f"a model output of type {type(result).__name__}")


def read_file(path: str | Path, limit: int = 4 << 30) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"no such file: {p}")
    size = p.stat().st_size
    if size > limit:
        raise InputError(f"{p} is {size} bytes, over the {limit}-byte limit")
    return p.read_bytes()
