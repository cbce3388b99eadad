"""Export, verify and measure in ONNX Runtime: what the user downloads is what we checked."""

from __future__ import annotations

import io
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from .errors import PruningError, VerificationError
from .inputs import Example, GraphInput, arrays, as_tuple
from .prepasses import constant_parameters, disagreement

Inputs = np.ndarray | Sequence[np.ndarray]  # one input's values, or each input's in graph order
Shapes = list[int] | Sequence[GraphInput]  # the one float input's shape, or each input's (with its dtype)


def _values(x: Inputs) -> list[np.ndarray]:
    return [x] if isinstance(x, np.ndarray) else list(x)


def _inputs(shapes: Shapes) -> list[GraphInput]:
    if len(shapes) and isinstance(shapes[0], GraphInput):
        return list(shapes)  # type: ignore[arg-type]
    return [GraphInput("input", [int(s) for s in shapes])]  # type: ignore[union-attr]


def export(
    model: nn.Module,
    example: Example,
    *,
    input_name: str | Sequence[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
) -> bytes:
    buf = io.BytesIO()
    names = [input_name] if isinstance(input_name, str) else list(input_name)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            as_tuple(example),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=names,
            output_names=output_names,
            dynamic_axes=dynamic_axes or None,
            do_constant_folding=True,
        )
    data = _keep_inputs(buf.getvalue(), names, as_tuple(example), dynamic_axes)
    try:
        onnx.checker.check_model(onnx.load_model_from_string(data), full_check=True)
    except Exception as e:
        raise PruningError(f"the exported ONNX fails onnx.checker: {str(e)[:300]}") from None
    return data


def _keep_inputs(data: bytes, names: list[str], example: tuple[torch.Tensor, ...],
                 dynamic_axes: dict[str, dict[int, str]]) -> bytes:
    """The exporter drops an input the module does not read (a detector's scale factor that only frozen nodes
    after the pruned part use): it is put back, in its place, so the model keeps the interface it was sent with."""
    proto = onnx.load_model_from_string(data)
    have = {i.name: i for i in proto.graph.input}
    if all(n in have for n in names):
        return data
    ordered = []
    for name, t in zip(names, example, strict=True):
        if name in have:
            ordered.append(have.pop(name))
            continue
        dims = [dynamic_axes.get(name, {}).get(i, d) for i, d in enumerate(t.shape)]
        elem = onnx.helper.np_dtype_to_tensor_dtype(t.detach().cpu().numpy().dtype)
        ordered.append(onnx.helper.make_tensor_value_info(name, elem, dims))
    del proto.graph.input[:]
    proto.graph.input.extend([*ordered, *have.values()])
    return proto.SerializeToString()


def session(data: bytes, threads: int = 1, spin: bool = True) -> ort.InferenceSession:
    """`spin=False` when other work shares the threads between runs (ONNX Runtime's pool spins after each)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4  # failures come back as exceptions, said once in the engine's words
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, *xs: np.ndarray) -> np.ndarray:
    """The first output."""
    return run_outputs(sess, *xs)[0]


def run_outputs(sess: ort.InferenceSession, *xs: np.ndarray, names: list[str] | None = None) -> list[np.ndarray]:
    """Every output, the inputs `xs` given in graph order, or, with `names` (the inputs' names, as many), fed by
    name wherever the session's inputs carry those names: a file whose inputs come in another order than the data's
    still gets each array at its own input."""
    inputs = [i.name for i in sess.get_inputs()]
    if names is not None and len(xs) > 1 and sorted(inputs) == sorted(names):
        feed = dict(zip(names, xs, strict=True))
    else:
        feed = dict(zip(inputs, xs, strict=True))
    return [np.asarray(v) for v in sess.run(None, feed)]


def _checked_run(sess: ort.InferenceSession, xs: list[np.ndarray], what: str) -> list[np.ndarray]:
    """run_outputs, where a model that does not run is a failed check of the pruned model, said in one line."""
    try:
        return run_outputs(sess, *xs)
    except Exception as e:
        text = str(e).strip().splitlines()
        first = text[0] if text else type(e).__name__
        shapes = list(xs[0].shape) if len(xs) == 1 else [list(x.shape) for x in xs]
        raise VerificationError(f"{what} does not run in ONNX Runtime on {'an input' if len(xs) == 1 else 'inputs'} "
                                f"of shape {shapes} ({first[:300]}); no model was produced") from None


def verify(
    data: bytes, model: nn.Module, inputs: Inputs, expected_shapes: list[list[int | str]] | None,
    *, fixed_batch: int | None = None, batch_name: str | None = "batch",
) -> float:
    """max |ORT - torch| over every output on the inputs (in chunks of the model's fixed batch, if it has one);
    raises when beyond ~1e-3 of an output's magnitude. Then every output's shape is checked against
    `expected_shapes` (symbolic dimensions as names; `batch_name` is the input's batch) at the batch the model
    fixes, or at 1 and 4."""
    from .loading import outputs_of

    xs = _values(inputs)
    sess = session(data)
    step = fixed_batch or len(xs[0])
    diff = 0.0
    for start in range(0, len(xs[0]) - step + 1, step):
        chunk = [x[start : start + step] for x in xs]
        got = _checked_run(sess, chunk, "the pruned model")
        with torch.no_grad():
            ref = [t.detach().cpu().numpy() for t in outputs_of(model(*(torch.from_numpy(c) for c in chunk)))]
        if len(got) != len(ref):
            raise VerificationError(f"the ONNX has {len(got)} outputs, the pruned model {len(ref)}")
        for i, (g, r) in enumerate(zip(got, ref, strict=True)):
            if g.shape != r.shape:
                raise VerificationError(f"ONNX output {i} has shape {g.shape}, PyTorch's {r.shape}")
            if not g.size:
                continue
            d, tolerance, scale = disagreement(r, g)
            if not d <= tolerance:
                raise VerificationError(
                    f"the exported ONNX disagrees with the pruned model: output {i} max abs diff {d:.3g} "
                    f"> tolerance {tolerance:.3g} (output magnitude {scale:.3g}); no model was produced"
                )
            diff = max(diff, d)
    if expected_shapes is not None:
        for batch in (fixed_batch,) if fixed_batch else (1, 4):
            outs = _checked_run(sess, [np.repeat(x[:1], batch, axis=0) for x in xs], "the pruned model")
            for out, shape in zip(outs, expected_shapes, strict=False):
                # the batch's own name takes the batch; other names (a sequence length, say) are free
                want = [batch if d == batch_name else d for d in shape]
                if len(want) != out.ndim or any(isinstance(w, int) and w != n for w, n in zip(want, out.shape,
                                                                                             strict=True)):
                    raise VerificationError(f"at batch {batch} an output's shape is {list(out.shape)}, expected {want}")
    return diff


@dataclass
class OnnxStats:
    macs: int
    params: int
    bytes: int
    output_shapes: list[list[int | str]]  # each output's declared dimensions, symbolic ones by name
    per_node: dict[str, int] = field(default_factory=dict)  # MACs of each counted node, by name (or first output)


def stats(data: bytes, input_shape: Shapes) -> OnnxStats:
    """MACs of Conv, ConvTranspose, Gemm, MatMul (attention's too) and recurrent layers at the given input shape;
    parameters = float elements of
    initializers and `Constant` nodes."""
    proto = onnx.load_model_from_string(data)
    inits = {i.name: i for i in proto.graph.initializer}
    output_shapes: list[list[int | str]] = [
        [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in out.type.tensor_type.shape.dim]
        for out in proto.graph.output
    ]
    # Shapes come from running the graph once at batch 1: static shape inference gives up on the
    # Shape/Gather/Concat chains the exporter writes for pads and reshapes.
    wanted: list[str] = []
    for node in proto.graph.node:
        if node.op_type in _WEIGHT_AT:
            at = _WEIGHT_AT[node.op_type]
            wanted += [n for n in (node.input[0], node.input[at], node.output[0]) if n and n not in inits]
        elif node.op_type in ("LSTM", "GRU", "RNN"):
            wanted += [n for n in node.input[:3] if n and n not in inits]
    shapes: dict[str, list[int]] = {name: list(t.dims) for name, t in inits.items()}
    if wanted:
        names = list(dict.fromkeys(wanted))
        values = intermediates(proto, names, arrays(_inputs(input_shape), seed=None))
        shapes.update({n: list(v.shape) for n, v in zip(names, values, strict=True)})

    def known(name: str) -> list[int] | None:
        return shapes.get(name)

    per_node: dict[str, int] = {}
    for node in proto.graph.node:
        out = known(node.output[0]) if node.output else None
        n = 0
        kind = _KIND.get(node.op_type, node.op_type)
        if kind == "Conv":
            w = known(node.input[_WEIGHT_AT[node.op_type]])
            if out is None or w is None:
                raise PruningError(f"cannot count MACs of {node.name or node.op_type}: unknown shapes")
            n = int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type == "ConvTranspose":
            x, w = known(node.input[0]), known(node.input[1])
            if x is None or w is None:
                raise PruningError(f"cannot count MACs of {node.name or node.op_type}: unknown shapes")
            n = int(np.prod(x)) * int(np.prod(w[1:]))
        elif kind in ("Gemm", "MatMul"):
            a = known(node.input[0])
            if out is None or a is None:
                raise PruningError(f"cannot count MACs of {node.name or node.op_type}: unknown shapes")
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            k = a[-2] if (node.op_type == "Gemm" and trans_a) else a[-1]
            n = int(np.prod(out)) * int(k)
        elif node.op_type in ("LSTM", "GRU", "RNN"):
            n = recurrent_macs(node, known)
        if n:
            per_node[node.name or node.output[0]] = n
    macs = sum(per_node.values())
    return OnnxStats(macs=macs, params=constant_parameters(proto), bytes=len(data), output_shapes=output_shapes,
                     per_node=per_node)


# where each counted op takes its weight (or second operand); quantized ops count as their float kind
_WEIGHT_AT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "ConvInteger": 1, "MatMulInteger": 1,
              "QLinearConv": 3, "QLinearMatMul": 3}
_KIND = {"ConvInteger": "Conv", "QLinearConv": "Conv", "MatMulInteger": "MatMul", "QLinearMatMul": "MatMul"}


def intermediates(proto: onnx.ModelProto, names: list[str], x: Inputs) -> list[np.ndarray]:
    """The values of tensors inside the graph (`names`, in order) on input `x`: the graph run with them as its
    outputs."""
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    del probe.graph.output[:]
    probe.graph.output.extend([onnx.ValueInfoProto(name=n) for n in names])
    return run_outputs(session(probe.SerializeToString()), *_values(x))


def recurrent_macs(node: onnx.NodeProto, known: Any) -> int:
    """An LSTM/GRU/RNN's MACs: per step, batch element and direction, (gates x hidden) x (input + hidden),
    from its W [dirs, gates*hidden, input] and R [dirs, gates*hidden, hidden]."""
    x, w, r = known(node.input[0]), known(node.input[1]), known(node.input[2])
    if x is None or w is None or r is None:
        return 0
    batch_first = any(a.name == "layout" and a.i == 1 for a in node.attribute)
    steps = x[1] if batch_first else x[0]
    batch = x[0] if batch_first else x[1]
    return int(steps) * int(batch) * (int(np.prod(w)) + int(np.prod(r)))


def same_output_shapes(before: bytes, after: bytes, input_shape: Shapes, batches: tuple[int, ...],
                       *, original_may_fail: bool = False) -> bool:
    """Both models take the same input and give outputs of the same names and shapes at each batch. With
    `original_may_fail`, a shape the original itself does not run at is no check (False); else it raises."""
    sessions = [session(before), session(after)]
    names = [[o.name for o in s.get_outputs()] for s in sessions]
    if names[0] != names[1]:
        raise VerificationError(f"the pruned model's outputs are {names[1]}, the original's {names[0]}")
    for batch in batches:
        x = arrays(_inputs(input_shape), batch, seed=batch)
        try:
            original = [o.shape for o in run_outputs(sessions[0], *x)]
        except Exception:
            if original_may_fail:
                return False
            _checked_run(sessions[0], x, "the original model")  # says why, in one line
            raise
        pruned = [o.shape for o in _checked_run(sessions[1], x, "the pruned model")]
        if original != pruned:
            raise VerificationError(f"at batch {batch} the pruned model's outputs have shapes {pruned}, the "
                                    f"original's {original}")
    return True


def latency(
    before: bytes, after: bytes, input_shape: Shapes, *, batch: int, threads: int, repeats: int
) -> tuple[float, float]:
    """Median ONNX Runtime latency (ms) of both models over `repeats` runs each, interleaved so drift hits
    both alike. Interleaved in blocks (ABBA order), the first run of each block dropped: an idle session's
    intra-op workers keep spinning for a while after its run, and with threads > 1 a session timed right
    after the other shares the cores with the other's spinning workers (ResNet-50 at 2 threads on 2 cores:
    42 ms alone, 67 ms interleaved run by run)."""
    x = arrays(_inputs(input_shape), batch, seed=0)
    sessions = [session(before, threads), session(after, threads)]
    for s in sessions:
        for _ in range(3):
            run(s, *x)
    block = max(2, min(10, repeats // 3 + 1))
    times: list[list[float]] = [[], []]
    turn = 0
    while min(len(t) for t in times) < repeats:
        for i in ((0, 1) if turn % 2 == 0 else (1, 0)):
            for k in range(block):
                t0 = time.perf_counter()
                run(sessions[i], *x)
                if k:
                    times[i].append((time.perf_counter() - t0) * 1000)
        turn += 1
    return statistics.median(times[0][:repeats]), statistics.median(times[1][:repeats])
