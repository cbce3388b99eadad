"""A model or data file checked from its headers, without loading its tensors: what it is, its input shape,
and whether the importer can be expected to take it. Memory stays bounded whatever the file's size (weights
are skipped with seeks, never read) and nothing here imports torch or onnx, so the API runs it on every upload.

The full import (onnx.checker, conversion to PyTorch, the ONNX Runtime comparison) runs where the job runs;
a file that passes here but not there fails its job with the importer's message.
"""

from __future__ import annotations

import json
import math
import struct
import tokenize
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .archs import check_arch, default_input_shape
from .errors import BadDataError, BadModelError, UnsafeFormatError, UnsupportedModelError

MIN_OPSET = 7  # the oldest opset ONNX Runtime runs; older than 13 is upgraded on import (prepasses.py)
SEND_INSTEAD = (
    "send an ONNX file (export with torch.onnx.export, or `secateurs export`) or safetensors weights "
    "with --arch (convert a state dict with `secateurs convert-weights`)"
)
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit
MAX_NAME = 64 * 1024  # longer strings (names, domains) are not a model we take
# What numpy raises on a malformed .npy header: it parses the header dict with ast.literal_eval (SyntaxError,
# RecursionError when nested deep) after tokenizing it (TokenError), besides its own ValueErrors.
UNREADABLE_NPY = (ValueError, OSError, EOFError, SyntaxError, RecursionError, MemoryError, tokenize.TokenError)
MAX_TENSOR_ELEMENTS = 1 << 28  # per tensor at batch 1: 1 GiB of float32, far above any image classifier


@dataclass
class ModelHeader:
    format: str  # "onnx" or "safetensors"
    input_shape: list[int]  # with batch 1
    opset: int | None = None
    inputs: dict[str, list[int]] = field(default_factory=dict)  # every input's shape, in graph order (ONNX)
    dtypes: dict[str, str] = field(default_factory=dict)  # every input's numpy dtype name, where ONNX says it
    # every input's dimensions as the model declares them (what a user's .npz must fit): an int when fixed, the
    # dimension's name when symbolic, None when neither (a dynamic dimension without a name)
    dims: dict[str, list[int | str | None]] = field(default_factory=dict)


@dataclass
class DataHeader:
    samples: int  # the labels', or the first array's (x's) when unlabelled
    shape: list[int]  # of one sample of the first array: x, else the archive's first
    labelled: bool
    inputs: dict[str, list[int]] = field(default_factory=dict)  # every array but y: its sample shape, archive order
    # every array but y: {"samples": N (None for a scalar), "dtype": numpy's name, "finite": False for floats holding
    # NaN or inf}. Which arrays a model takes is known only at job submission, which checks them from this.
    arrays: dict[str, dict[str, object]] = field(default_factory=dict)


def sniff(f: BinaryIO, size: int) -> str:
    """'onnx', 'safetensors', or raise saying what the file is and what to send instead. Reads 16 bytes
    (and, for a zip, its directory)."""
    f.seek(0)
    head = f.read(16)
    if size < 16:
        raise BadModelError(f"the file is empty or truncated ({size} bytes); " + SEND_INSTEAD)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise UnsafeFormatError("this is a Python pickle (torch.save / .pt / .pth / .pkl): refused; " + SEND_INSTEAD)
    if head[:4] == b"PK\x03\x04":
        raise UnsafeFormatError(describe_zip(f) + ": refused, loading it would run code; " + SEND_INSTEAD)
    header_len = struct.unpack("<Q", head[:8])[0]
    if 2 <= header_len <= size - 8 and head[8:9] == b"{":
        return "safetensors"
    return "onnx"


def describe_zip(f: BinaryIO) -> str:
    try:
        names = zipfile.ZipFile(f).namelist()  # the central directory only
    except zipfile.BadZipFile:
        return "this is a damaged zip archive"
    if any(n.endswith("serialized_exported_program.json") or "/models/" in n for n in names) or any(
        n.endswith("archive_format") for n in names
    ):
        return "this is a torch.export .pt2 archive"
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        return "this is a TorchScript archive"
    if any(n.endswith("data.pkl") for n in names):
        return "this is a torch.save zip (a pickle inside)"
    if any(n.endswith(".npy") for n in names):
        return "this is a NumPy .npz archive, not a model"
    return "this is a zip archive"


def read_model_header(path: str | Path, *, arch: str | None = None, num_classes: int | None = None) -> ModelHeader:
    size = Path(path).stat().st_size
    with open(path, "rb", buffering=64 * 1024) as f:
        kind = sniff(f, size)
        if kind == "safetensors":
            if arch is None:
                raise BadModelError("safetensors weights need an architecture: give --arch (and --num-classes)")
            check_arch(arch, num_classes)
            _check_safetensors(f, size)
            # the engine's module takes one float32 input it calls "input", batch "batch" (loading._load_safetensors)
            sample = default_input_shape(arch)[1:]
            return ModelHeader("safetensors", [1, *sample], inputs={"input": [1, *sample]},
                               dtypes={"input": "float32"}, dims={"input": ["batch", *sample]})
        if arch is not None:
            raise BadModelError("--arch goes with safetensors weights; this file is not safetensors")
        try:
            return _read_onnx(f, size)
        except _Malformed as e:
            raise BadModelError(f"not an ONNX model or safetensors file (protobuf: {e}); " + SEND_INSTEAD) from None


# ---------------------------------------------------------------------------------------------- safetensors

_ST_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _check_safetensors(f: BinaryIO, size: int) -> None:
    """The header is JSON naming every tensor's dtype, shape and byte range; the ranges must tile the data."""
    f.seek(0)
    header_len = struct.unpack("<Q", f.read(8))[0]
    if header_len > MAX_SAFETENSORS_HEADER:
        raise BadModelError(f"the safetensors header is {header_len} bytes, over the format's 100 MiB limit")
    try:
        header = json.loads(f.read(header_len))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadModelError(f"the safetensors file cannot be read: header: {e}") from None
    if not isinstance(header, dict):
        raise BadModelError("the safetensors file cannot be read: the header is not a JSON object")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            itemsize = _ST_ITEMSIZE[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            begin, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise BadModelError(f"the safetensors file cannot be read: bad header entry for {name!r}") from None
        # Python ints: a declared 2^70 must not overflow numpy's int64 (or C long) on its way to the check
        if any(d < 0 for d in shape) or end - begin != itemsize * math.prod(shape):
            raise BadModelError(f"the safetensors file cannot be read: {name!r} has {end - begin} bytes for "
                                f"shape {shape}")
        spans.append((begin, end))
    spans.sort()
    data_bytes = size - 8 - header_len
    position = 0
    for begin, end in spans:
        if begin != position:
            raise BadModelError("the safetensors file cannot be read: tensor data overlaps or leaves holes")
        position = end
    if position != data_bytes:
        raise BadModelError(f"the safetensors file cannot be read: the tensors take {position} bytes, the file "
                            f"holds {data_bytes}")


# --------------------------------------------------------------------------------------------------- ONNX
# A protobuf wire-format walk over ModelProto (onnx/onnx.proto): small fields are read, tensor data is
# skipped by seeking. Field numbers are ONNX's.


class _Malformed(Exception):
    pass


def _varint(f: BinaryIO) -> int:
    result = shift = 0
    while True:
        b = f.read(1)
        if not b:
            raise _Malformed("truncated")
        result |= (b[0] & 0x7F) << shift
        if b[0] < 0x80:
            return result
        shift += 7
        if shift > 63:
            raise _Malformed("a varint is too long")


def _fields(f: BinaryIO, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, wire type, value) up to `end`. For length-delimited fields the value is the length and
    the file stands at the field's start: the caller reads what it wants, the walk then skips the rest."""
    while (pos := f.tell()) < end:
        key = _varint(f)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed(f"field number 0 at byte {pos}")
        if wire == 0:
            yield number, wire, _varint(f)
        elif wire in (1, 5):
            f.seek(8 if wire == 1 else 4, 1)
            yield number, wire, 0
        elif wire == 2:
            length = _varint(f)
            start = f.tell()
            if start + length > end:
                raise _Malformed(f"a field at byte {pos} runs past its message")
            yield number, wire, length
            f.seek(start + length)
        else:
            raise _Malformed(f"wire type {wire} at byte {pos}")
    if f.tell() != end:
        raise _Malformed("a message runs past its end")


def _string(f: BinaryIO, wire: int, length: int) -> str:
    if wire != 2 or length > MAX_NAME:
        raise _Malformed("a name field is malformed or too long")
    return f.read(length).decode("utf-8", "replace")


def _message_end(f: BinaryIO, wire: int, length: int) -> int:
    if wire != 2:
        raise _Malformed("a message field has the wrong wire type")
    return f.tell() + length


def _tensor(f: BinaryIO, end: int) -> tuple[str, bool]:
    """TensorProto: its name, and whether its data lives in an external file (13 external_data,
    14 data_location)."""
    name, external = "", False
    for number, wire, value in _fields(f, end):
        if number == 8:
            name = _string(f, wire, value)
        elif number == 13 or (number == 14 and wire == 0 and value == 1):
            external = True
    return name, external


def refuse_old_opset(opset: int) -> None:
    """An opset older than any the engine upgrades from: a valid model it cannot take (upload, CLI and engine)."""
    if opset < MIN_OPSET:
        raise UnsupportedModelError(f"ONNX opset {opset} is too old (the oldest taken is {MIN_OPSET}): re-export "
                                    "with opset 13 or newer")


def _refuse_external(name: str, external: bool) -> None:
    if external:
        raise BadModelError(
            f"tensor {name!r} keeps its data in an external file: refused; "
            "save the model as one file (onnx.save(model, path, save_as_external_data=False))"
        )


def _sparse_tensor(f: BinaryIO, end: int) -> None:
    """SparseTensorProto: its values (1) and indices (2) are tensors, each of which may point outside."""
    for number, wire, value in _fields(f, end):
        if number in (1, 2):
            _refuse_external(*_tensor(f, _message_end(f, wire, value)))


MAX_GRAPH_NESTING = 32  # control flow inside control flow; protobuf's own parser stops at 100 messages deep


def _attribute(f: BinaryIO, end: int, op_type: str, depth: int = 0) -> None:
    """AttributeProto: tensors (5 t, 10 tensors, 22 sparse_tensor, 23 sparse_tensors) must be inline, in
    subgraphs (6 g, 11 graphs: control flow, kept frozen on import) too."""
    for number, wire, value in _fields(f, end):
        if number in (5, 10):
            _refuse_external(*_tensor(f, _message_end(f, wire, value)))
        elif number in (22, 23):
            _sparse_tensor(f, _message_end(f, wire, value))
        elif number in (6, 11):
            if depth >= MAX_GRAPH_NESTING:
                raise BadModelError(f"subgraphs nested over {MAX_GRAPH_NESTING} deep ({op_type})")
            _other_graph(f, _message_end(f, wire, value), depth + 1)


def _node(f: BinaryIO, end: int, depth: int = 0) -> None:
    """NodeProto (4 op_type, 5 attribute)."""
    op_type = ""
    for number, wire, value in _fields(f, end):
        if number == 4:
            op_type = _string(f, wire, value)
        elif number == 5:
            _attribute(f, _message_end(f, wire, value), op_type, depth)


def _function(f: BinaryIO, end: int) -> None:
    """FunctionProto, a model-local function: its nodes (7) and its attributes' default values (11)."""
    for number, wire, value in _fields(f, end):
        if number == 7:
            _node(f, _message_end(f, wire, value))
        elif number == 11:
            _attribute(f, _message_end(f, wire, value), "a function's attribute")


def _other_graph(f: BinaryIO, end: int, depth: int = 0) -> None:
    """A GraphProto other than the model's: only whether a tensor of it points outside matters
    (1 node, 5 initializer, 15 sparse_initializer)."""
    for number, wire, value in _fields(f, end):
        if number == 1:
            _node(f, _message_end(f, wire, value), depth)
        elif number == 5:
            _refuse_external(*_tensor(f, _message_end(f, wire, value)))
        elif number == 15:
            _sparse_tensor(f, _message_end(f, wire, value))


# TensorProto.DataType (onnx/onnx.proto) -> numpy's name, for the types a model input fed from an .npz may have
ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
               10: "float16", 11: "float64", 12: "uint32", 13: "uint64"}


def _value_info(f: BinaryIO, end: int) -> tuple[str, list[int | str], str | None]:
    """ValueInfoProto -> (name, dims, numpy dtype name or None): TypeProto.tensor_type's elem_type and shape.dim, a
    dim as dim_value or dim_param."""
    name, dims, dtype = "", [], None
    for number, wire, value in _fields(f, end):
        if number == 1:
            name = _string(f, wire, value)
        elif number == 2:
            for t_number, t_wire, t_value in _fields(f, _message_end(f, wire, value)):
                if t_number != 1:  # tensor_type
                    continue
                for s_number, s_wire, s_value in _fields(f, _message_end(f, t_wire, t_value)):
                    if s_number == 1 and s_wire == 0:  # elem_type
                        dtype = ONNX_DTYPES.get(s_value)
                    if s_number != 2:  # shape
                        continue
                    for d_number, d_wire, d_value in _fields(f, _message_end(f, s_wire, s_value)):
                        if d_number == 1:  # dim
                            dims.append(_dimension(f, _message_end(f, d_wire, d_value)))
    return name, dims, dtype


def _dimension(f: BinaryIO, end: int) -> int | str:
    dim: int | str = ""
    for number, wire, value in _fields(f, end):
        if number == 1 and wire == 0:
            dim = value if value < 1 << 63 else value - (1 << 64)
        elif number == 2:
            dim = _string(f, wire, value)
    return dim


def _read_onnx(f: BinaryIO, size: int) -> ModelHeader:
    opset: int | None = None
    nodes = 0
    initializers: set[str] = set()
    inputs: list[tuple[str, list[int | str], str | None]] = []
    outputs = 0
    f.seek(0)
    for number, wire, value in _fields(f, size):
        if number == 8:  # opset_import
            domain, version = "", None
            for o_number, o_wire, o_value in _fields(f, _message_end(f, wire, value)):
                if o_number == 1:
                    domain = _string(f, o_wire, o_value)
                elif o_number == 2 and o_wire == 0:
                    version = o_value
            if domain in ("", "ai.onnx") and version is not None:
                opset = version
        elif number == 25:  # functions
            _function(f, _message_end(f, wire, value))
        elif number == 20:  # training_info: initialization (1) and algorithm (2) graphs
            for t_number, t_wire, t_value in _fields(f, _message_end(f, wire, value)):
                if t_number in (1, 2):
                    _other_graph(f, _message_end(f, t_wire, t_value))
        elif number == 7:  # graph
            for g_number, g_wire, g_value in _fields(f, _message_end(f, wire, value)):
                g_end = _message_end(f, g_wire, g_value) if g_number in (1, 5, 11, 12, 15) else 0
                if g_number == 1:
                    nodes += 1
                    _node(f, g_end)
                elif g_number == 5:
                    name, external = _tensor(f, g_end)
                    _refuse_external(name, external)
                    initializers.add(name)
                elif g_number == 15:  # sparse_initializer
                    _sparse_tensor(f, g_end)
                elif g_number == 11:
                    inputs.append(_value_info(f, g_end))
                elif g_number == 12:
                    outputs += 1
    if not nodes:
        raise BadModelError("not an ONNX model (no graph nodes); " + SEND_INSTEAD)
    if opset is None:
        raise BadModelError("the ONNX model declares no default-domain opset")
    refuse_old_opset(opset)
    if not outputs:
        raise BadModelError("the ONNX graph has no outputs")
    graph_inputs = [(name, dims) for name, dims, _ in inputs if name not in initializers]
    declared = {name: [d if (isinstance(d, int) and d > 0) or (isinstance(d, str) and d) else None for d in dims]
                for name, dims in graph_inputs}
    dtypes = {name: dtype for name, _, dtype in inputs if name not in initializers and dtype is not None}
    if not graph_inputs:
        raise UnsupportedModelError("the model has no inputs: nothing to feed it")
    shapes = {}
    for name, dims in graph_inputs:
        shape = [d if isinstance(d, int) and d > 0 else -1 for d in dims]
        what = "the model's input" if len(graph_inputs) == 1 else f"input {name!r}"
        if not shape:
            raise UnsupportedModelError(f"{what} has no shape: re-export it with its input shape")
        # symbolic dimensions besides the batch (-1 here) are chosen where the job runs: from its data, the spec's
        # input_shape, or sizes the model runs at (loading.trace_shapes)
        if math.prod(abs(s) for s in shape[1:]) > MAX_TENSOR_ELEMENTS:  # the worker would allocate it to trace it
            raise BadModelError(f"{what} {shape} is over the limit of {MAX_TENSOR_ELEMENTS} elements a sample")
        shapes[name] = [1, *shape[1:]]
    return ModelHeader("onnx", next(iter(shapes.values())), opset, shapes, dtypes, declared)


# ------------------------------------------------------------------------------------------------- .npz


def read_npz_header(path: str | Path, max_elements: int = 1 << 31, chunk: int = 4 << 20) -> DataHeader:
    """What data.load_npz refuses, from the archive's .npy headers: no arrays, arrays over the size limit (all of
    them count), arrays needing pickle, labels that are not labels; and x, when it is the only array besides y, as
    Dataset.bind checks a single-input model's input. Which other arrays a model takes (one key per ONNX input name,
    or x and others to ignore) is known at job submission: each array's samples, dtype and finiteness are kept for
    it (`DataHeader.arrays`). Floats are scanned for NaN/inf a chunk at a time: bounded memory whatever the size.
    Members that are not .npy (a README, __MACOSX/ entries) are ignored, as load_npz ignores them."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise BadDataError(f"not a readable .npz archive: {str(e)[:200]}") from None
    with archive:
        names = npy_members(archive.namelist())
        keys = [k for k in names if k != "y"]
        if not keys:
            raise BadDataError(f"the .npz has no key 'x' (keys: {', '.join(sorted(names)) or 'none'})")
        alone = keys == ["x"]  # what a single-input model takes, and nothing else: checked as bind will check it
        headers = {k: _npy_header(archive, names[k]) for k in names}
        n_elements = sum(math.prod(shape) for shape, _ in headers.values())  # Python ints: no overflow past the check
        if n_elements > max_elements:
            raise BadDataError(f"{'x has' if alone else 'the arrays have'} {n_elements} elements, over the limit of "
                               f"{max_elements}")
        if alone:
            shape, dtype = headers["x"]
            if len(shape) < 2 or shape[0] == 0:
                raise BadDataError(f"x must be N x (input dims) with N >= 1, got shape {list(shape)}")
            if not np.issubdtype(dtype, np.floating):
                raise BadDataError(
                    f"x must hold float model inputs exactly as the model takes them (normalised), got {dtype}")
        batched = [k for k in keys if headers[k][0]]
        if not batched:
            raise BadDataError(f"the .npz has no array of samples, N first (keys: {', '.join(keys)})")
        first = "x" if "x" in batched else batched[0]
        samples = headers[first][0][0]
        y_shape, y_dtype = headers.get("y", (None, None))
        if y_shape is not None:
            if len(y_shape) != 1 or not np.issubdtype(y_dtype, np.integer) or (alone and y_shape[0] != samples):
                raise BadDataError(f"y must be {samples if alone else 'N'} integer class labels, got {y_dtype} "
                                   f"{list(y_shape)}")
            samples = y_shape[0]
        arrays: dict[str, dict[str, object]] = {}
        for key in keys:
            shape, dtype = headers[key]
            finite = not np.issubdtype(dtype, np.floating) or _finite(archive, names[key], dtype, chunk)
            if alone and not finite:
                raise BadDataError("x holds NaN or infinite values")  # else refused at submission if a model takes it
            arrays[key] = {"samples": int(shape[0]) if shape else None, "dtype": str(dtype), "finite": finite}
    inputs = {k: [int(d) for d in headers[k][0][1:]] for k in batched}
    return DataHeader(samples=int(samples), shape=inputs[first], labelled=y_shape is not None, inputs=inputs,
                      arrays=arrays)


def npy_members(names: list[str]) -> dict[str, str]:
    """The archive's arrays, member by key: its .npy members, but for the resource forks a Mac's zip adds
    (__MACOSX/._x.npy), which are no arrays. Other members (a README) are not read."""
    return {n[:-4]: n for n in names
            if n.endswith(".npy") and not n.startswith("__MACOSX/") and not n.rsplit("/", 1)[-1].startswith("._")}


def _npy_header(archive: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        with archive.open(member) as f:
            shape, dtype = _array_header(f)
    except (*UNREADABLE_NPY, zipfile.BadZipFile) as e:
        raise BadDataError(f"not a readable .npz archive: {member}: {str(e)[:160]}") from None
    if dtype.hasobject:
        raise BadDataError(f"the .npz cannot be read without pickle: {member} holds Python objects")
    return shape, dtype


def _array_header(f: BinaryIO) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f".npy format version {version} is not supported")
    return shape, dtype


def _finite(archive: zipfile.ZipFile, member: str, dtype: np.dtype, chunk: int) -> bool:
    step = max(chunk // dtype.itemsize, 1) * dtype.itemsize
    try:
        with archive.open(member) as f:
            _array_header(f)
            while block := f.read(step):
                values = np.frombuffer(block, dtype=dtype, count=len(block) // dtype.itemsize)
                if not np.isfinite(values).all():
                    return False
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise BadDataError(f"not a readable .npz archive: {member}: {str(e)[:160]}") from None
    return True
