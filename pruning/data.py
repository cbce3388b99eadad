"""Calibration and evaluation data: `.npz` with `x` (model inputs) and optional `y` (class labels); for a model with
several inputs, one key per ONNX input name instead of `x`.

Loaded with allow_pickle=False: an archive holding object arrays is refused, never unpickled.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import BadDataError
from .headers import UNREADABLE_NPY, _array_header


@dataclass
class Dataset:
    """`x` is the model's first input (its only one, for most models), so the many single-input call sites stay
    as they are; `extra` holds the others by ONNX input name, in graph-input order once `bind` matched them to a
    model (the converted module takes its inputs positionally in that order)."""

    x: np.ndarray  # N x input dims: float32, or integer for a model's integer first input
    y: np.ndarray | None  # int64 labels
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    x_name: str = "x"  # x's key in the archive: "x", or an ONNX input name

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def names(self) -> list[str]:
        return [self.x_name, *self.extra]

    def arrays(self, sel: Any = slice(None)) -> tuple[np.ndarray, ...]:
        """Every input's samples `sel` (a slice or indices), in order: what the model is called with."""
        return (self.x[sel], *(v[sel] for v in self.extra.values()))

    def take(self, sel: Any) -> Dataset:
        return Dataset(self.x[sel], None if self.y is None else self.y[sel],
                       {k: v[sel] for k, v in self.extra.items()}, self.x_name)

    def head(self, n: int) -> Dataset:
        return self.take(slice(None, n))

    def bind(self, names: list[str], dtypes: list[np.dtype]) -> Dataset:
        """The arrays matched to a model's inputs (`names`, in graph order, and their dtypes): `x` for a model with
        one input, one key per input name for a model with several; integer inputs keep integers."""
        arrays = dict(zip(self.names, self.arrays(), strict=True))
        if len(names) == 1 and self.names in (["x"], names):
            arrays = {names[0]: self.x}
        else:
            listed = ", ".join(repr(n) for n in names)
            if len(names) == 1:
                raise BadDataError(f"the model has one input ({listed}): give its samples under key 'x' "
                                   f"(keys: {', '.join(self.names)})")
            missing = [n for n in names if n not in arrays]
            if missing:
                raise BadDataError(f"the .npz has no key {missing[0]!r}: a model with several inputs takes one key "
                                   f"per ONNX input name ({listed}); keys: {', '.join(self.names)}")
            unknown = [k for k in arrays if k not in names]
            if unknown:
                raise BadDataError(f"key {unknown[0]!r} of the .npz is none of the model's inputs ({listed})")
        bound = []
        for name, want in zip(names, dtypes, strict=True):
            a = arrays[name]
            if {"u": "i"}.get(a.dtype.kind, a.dtype.kind) != {"u": "i"}.get(want.kind, want.kind):
                key = "x" if self.names == ["x"] else name
                raise BadDataError(f"key {key!r} holds {a.dtype}, but the model's input {name!r} takes {want}")
            bound.append(a if a.dtype == want else a.astype(want))
        return Dataset(bound[0], self.y, dict(zip(names[1:], bound[1:], strict=True)), names[0])


MAX_MEMBERS = 64
BYTES_PER_ELEMENT = 4  # inputs are used as float32: the budget, in bytes, of the declared arrays


def _check_declared(data: bytes, max_elements: int) -> None:
    """Read only the .npy headers of the members and refuse what they declare, together, before numpy allocates it:
    a small archive can declare (or decompress to) terabytes."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
            if len(infos) > MAX_MEMBERS:
                raise BadDataError(f"the .npz has {len(infos)} members; send x (or one key per model input) and "
                                   "optional y only")
            total = 0
            for info in infos:
                with z.open(info) as f:
                    shape, dtype = _array_header(f)
                total += int(np.prod(shape, dtype=object)) * max(dtype.itemsize, BYTES_PER_ELEMENT)
                if total > max_elements * BYTES_PER_ELEMENT:
                    raise BadDataError(f"{info.filename} declares shape {list(shape)} ({dtype}), over the limit "
                                       f"of {max_elements} float32 elements: send fewer samples")
    except zipfile.BadZipFile:
        return  # not a zip: np.load says what it is (a lone .npy, garbage) below
    except UNREADABLE_NPY as e:
        raise BadDataError(f"not a readable .npz archive: {str(e)[:200]}") from None


def load_npz(data: bytes, max_elements: int = 1 << 31) -> Dataset:
    """Every key but `y` is a model input (`x`, or one per ONNX input name), in the archive's order: `bind` matches
    them to a model's inputs."""
    _check_declared(data, max_elements)
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
    except (*UNREADABLE_NPY, zipfile.BadZipFile) as e:
        raise BadDataError(f"not a readable .npz archive: {str(e)[:200]}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise BadDataError("data must be an .npz archive with keys x (inputs) and optional y (labels)")
    with archive:
        keys = [k for k in archive.files if k != "y"]
        if not keys:
            raise BadDataError(f"the .npz has no key 'x' (keys: {', '.join(archive.files) or 'none'})")
        try:
            inputs = {k: archive[k] for k in keys}
            y = archive["y"] if "y" in archive.files else None
        except ValueError as e:
            # object arrays need pickle, which we never allow
            raise BadDataError(f"the .npz cannot be read without pickle: {str(e)[:160]}") from None
    n = None
    for key, a in list(inputs.items()):
        inputs[key] = a = _checked(key, a, alone=keys == ["x"])
        if n is not None and a.shape[0] != n:
            raise BadDataError(f"{key} has {a.shape[0]} samples, {keys[0]} {n}: every input needs the same number")
        n = a.shape[0]
    assert n is not None
    if y is not None:
        if y.ndim != 1 or y.shape[0] != n or not np.issubdtype(y.dtype, np.integer):
            raise BadDataError(f"y must be {n} integer class labels, got {y.dtype} {list(y.shape)}")
        y = y.astype(np.int64)
    first = keys[0]
    return Dataset(inputs.pop(first), y, inputs, first)


def _checked(key: str, a: np.ndarray, alone: bool) -> np.ndarray:
    """One input's samples: N >= 1 first; floats as float32 and finite; integers (ids, sizes) and booleans as they
    are. `x` alone is a single-input model's input, which the engine takes as float."""
    if a.ndim < (2 if alone else 1) or a.shape[0] == 0:
        raise BadDataError(f"{key} must be N x (input dims) with N >= 1, got shape {list(a.shape)}")
    if alone and not np.issubdtype(a.dtype, np.floating):
        raise BadDataError(f"x must hold float model inputs exactly as the model takes them (normalised), got {a.dtype}")
    if np.issubdtype(a.dtype, np.floating):
        a = np.ascontiguousarray(a, dtype=np.float32)
        if not np.isfinite(a).all():
            raise BadDataError(f"{key} holds NaN or infinite values")
        return a
    if a.dtype.kind not in "iub":
        raise BadDataError(f"{key} holds {a.dtype}: model inputs are numbers (float, integer or bool)")
    return np.ascontiguousarray(a)
