"""Import pre-passes: an exporter's ONNX made into the graph the converter reads, each step reported and
each checked in ONNX Runtime against the file the user sent.

- Opset 7-12 (Paddle2ONNX, tf2onnx and older PyTorch exports write them) is upgraded with
  `onnx.version_converter` to `UPGRADE_TO`.
- The graph is simplified with onnxslim: constant folding (shape sub-graphs, `Reshape(Constant)` biases),
  `Constant` nodes to initializers, bias `Add`s folded into the Conv before them, Identity chains removed.
  BatchNorm is kept, not fused: BatchNorm-based signals and recovery need it.
  Chosen by trying the four candidates on the Paddle2ONNX-style graph of tests/pruning/exporters.py (opset 11,
  `Constant` weights, `Add(Conv, Reshape(bias))`), 2026-12-07: onnxsim folds the bias but, told to keep BatchNorm, leaves `Constant`+`Squeeze` chains in place of weights;
  onnxoptimizer does not fold a bias that reaches the Add through `Reshape(Constant)`; ONNX Runtime's offline
  optimizer fuses BatchNorm and writes its own contrib ops at higher levels. onnxslim leaves plain Conv, BatchNorm and
  Gemm with initializers, keeps input and output names and dimensions, and is pure Python.

The returned model computes what the sent one does: a pass whose result differs in ONNX Runtime (beyond
~1e-3 of the output's magnitude) is dropped (simplification) or refused (an upgrade that changes the outputs).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from .errors import BadModelError, UnsupportedModelError
from .headers import refuse_old_opset

UPGRADE_BELOW = 13  # older graphs are upgraded: onnx2torch converts opset 13 and newer faithfully
UPGRADE_TO = 17
_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
NUMPY_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.DOUBLE: np.float64,
       onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.UINT8: np.uint8,
       onnx.TensorProto.INT8: np.int8, onnx.TensorProto.BOOL: np.bool_}


@dataclass
class Prepared:
    proto: onnx.ModelProto
    feed: dict[str, np.ndarray]  # the probe inputs every pass was checked on
    expected: list[np.ndarray]  # the sent model's outputs on them
    passes: list[dict[str, Any]] = field(default_factory=list)


def default_opset(proto: onnx.ModelProto) -> int:
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    raise BadModelError("the ONNX model declares no default-domain opset")


def graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {i.name for i in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in initializers]


def probe_feed(proto: onnx.ModelProto, shapes: dict[str, list[int]], seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of each graph input's dtype at the given shapes."""
    rng = np.random.default_rng(seed)
    feed = {}
    for value in graph_inputs(proto):
        elem = value.type.tensor_type.elem_type
        dtype = NUMPY_TYPES.get(elem)
        if dtype is None:
            raise UnsupportedModelError(f"input {value.name!r} has ONNX element type {elem}, which is not supported")
        shape = shapes[value.name]
        if np.issubdtype(dtype, np.floating):
            feed[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[value.name] = np.zeros(shape, dtype=dtype)
    return feed


def run_ort(data: bytes, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return [np.asarray(v) for v in sess.run(None, feed)]


def disagreement(expected: np.ndarray, got: np.ndarray) -> tuple[float, float, float]:
    """max |expected - got|, the tolerance it is held to (~1e-3 of the expected output's magnitude) and that
    magnitude; NaN or inf differences are over any tolerance."""
    if not expected.size:
        return 0.0, 1e-5, 0.0
    diff = float(np.max(np.abs(expected.astype(np.float64) - got.astype(np.float64))))
    scale = float(np.max(np.abs(expected)))
    return diff, 1e-3 * max(scale, 1e-3) + 1e-5, scale


def same_outputs(expected: list[np.ndarray], got: list[np.ndarray]) -> str | None:
    """None when `got` matches `expected` output by output (~1e-3 of each output's magnitude), else why not."""
    if len(expected) != len(got):
        return f"{len(got)} outputs instead of {len(expected)}"
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        if e.shape != g.shape:
            return f"output {i} has shape {list(g.shape)} instead of {list(e.shape)}"
        if not e.size:
            continue
        if not np.issubdtype(e.dtype, np.floating):
            if not np.array_equal(e, g):
                return f"output {i} differs"
            continue
        diff, tolerance, scale = disagreement(e, g)
        if not diff <= tolerance:
            return f"output {i} differs by up to {diff:.3g} (magnitude {scale:.3g})"
    return None


def prepare(proto: onnx.ModelProto, shapes: dict[str, list[int]]) -> Prepared:
    """Upgrade and simplify `proto` (already checked for external data), each pass checked against the sent
    graph in ONNX Runtime on probe inputs at `shapes` (one per graph input)."""
    sent = proto.SerializeToString()
    feed = probe_feed(proto, shapes)
    try:
        expected = run_ort(sent, feed)
    except Exception as e:
        raise BadModelError(f"ONNX Runtime cannot run the model: {_first_line(e)}") from None
    result = Prepared(proto, feed, expected)
    opset = default_opset(proto)
    refuse_old_opset(opset)
    if opset < UPGRADE_BELOW:
        result.proto = _upgrade(proto, opset, expected, feed)
        result.passes.append({"pass": "opset-upgrade", "from": opset, "to": UPGRADE_TO, "checked": "onnxruntime"})
    simplified = _simplify(result.proto, expected, feed)
    if simplified is not None:
        result.passes.append(simplified[1])
        result.proto = simplified[0]
    return result


def _upgrade(proto: onnx.ModelProto, opset: int, expected: list[np.ndarray],
             feed: dict[str, np.ndarray]) -> onnx.ModelProto:
    from onnx import version_converter

    try:
        with _quiet():
            upgraded = version_converter.convert_version(proto, UPGRADE_TO)
        onnx.checker.check_model(upgraded)
        got = run_ort(upgraded.SerializeToString(), feed)
    except Exception as e:
        raise UnsupportedModelError(
            f"ONNX opset {opset} could not be upgraded to {UPGRADE_TO} ({_first_line(e)}): re-export with opset 13 or "
            "newer") from None
    why = same_outputs(expected, got)
    if why is not None:
        raise UnsupportedModelError(
            f"upgrading ONNX opset {opset} to {UPGRADE_TO} changes what the model computes ({why}): re-export with "
            "opset 13 or newer")
    return upgraded


def _simplify(proto: onnx.ModelProto, expected: list[np.ndarray],
              feed: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, dict[str, Any]] | None:
    """onnxslim, BatchNorm kept; None when it fails or changes the outputs (the graph goes on unsimplified)."""
    try:
        import onnxslim

        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        with _quiet():
            slim = onnxslim.slim(copy, skip_fusion_patterns=["FusionConvBN"])
        if not isinstance(slim, onnx.ModelProto):
            return None
        _restore_interface(proto, slim)
        onnx.checker.check_model(slim)
        got = run_ort(slim.SerializeToString(), feed)
    except Exception:
        return None
    if same_outputs(expected, got) is not None:
        return None
    before, after = Counter(n.op_type for n in proto.graph.node), Counter(n.op_type for n in slim.graph.node)
    removed = {op: before[op] - after.get(op, 0) for op in before if before[op] > after.get(op, 0)}
    return slim, {"pass": "simplify", "tool": "onnxslim", "nodes_before": len(proto.graph.node),
                  "nodes_after": len(slim.graph.node), "removed": dict(sorted(removed.items())),
                  "checked": "onnxruntime"}


def _restore_interface(sent: onnx.ModelProto, slim: onnx.ModelProto) -> None:
    """The simplified graph keeps the sent one's input and output names, dtypes and dimensions, in order."""
    want_in = [v.name for v in graph_inputs(sent)]
    got_in = [v.name for v in graph_inputs(slim)]
    want_out = [v.name for v in sent.graph.output]
    got_out = [v.name for v in slim.graph.output]
    if got_in != want_in or got_out != want_out:
        raise ValueError(f"the interface changed: {got_in} -> {got_out} instead of {want_in} -> {want_out}")
    for sent_v, slim_v in zip([*graph_inputs(sent), *sent.graph.output],
                              [*graph_inputs(slim), *slim.graph.output], strict=True):
        slim_v.type.CopyFrom(sent_v.type)


def constant_parameters(proto: onnx.ModelProto) -> int:
    """Float elements held in initializers and in `Constant` nodes (Paddle2ONNX keeps weights in the latter)."""
    n = sum(int(np.prod(t.dims)) for t in proto.graph.initializer if t.data_type in _FLOAT)
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type in _FLOAT:
                    n += int(np.prod(a.t.dims))
    return n


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


@contextlib.contextmanager
def _quiet():  # type: ignore[no-untyped-def]
    """The converter and onnxslim print to stdout and stderr; the CLI's stderr is for one-line messages."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(io.StringIO()):
        yield
