"""Calibration and evaluation data: `.npz` with `x` (model inputs) and optional `y` (class labels); for a model with
several inputs, one key per ONNX input name instead of `x`. Other members (a mean, class names, a README) are
ignored, as they always were: only what a model takes is checked, once it is known (`Dataset.bind`).

Loaded with allow_pickle=False: an archive holding object arrays is refused, never unpickled.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import BadDataError
from .headers import UNREADABLE_NPY, _array_header, npy_members


@dataclass
class Dataset:
    """`x` is the model's first input (its only one, for most models), so the many single-input call sites stay
    as they are; `extra` holds the others by ONNX input name, in graph-input order once `bind` matched them to a
    model (the converted module takes its inputs positionally in that order). As `load_npz` returns it, before
    `bind`, `x` and `extra` are the archive's arrays as they are (x first when there is one), unchecked."""

    x: np.ndarray  # N x input dims: float32, or integer for a model's integer first input
    y: np.ndarray | None  # int64 labels
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    x_name: str = "x"  # x's key in the archive: "x", or an ONNX input name

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def names(self) -> list[str]:
        return [self.x_name, *self.extra]

    @property
    def members(self) -> dict[str, np.ndarray]:
        """Every array by key, whole: unlike `arrays()`, also before `bind`, where some may have no batch axis."""
        return {self.x_name: self.x, **self.extra}

    def arrays(self, sel: Any = slice(None)) -> tuple[np.ndarray, ...]:
        """Every input's samples `sel` (a slice or indices), in order: what the model is called with."""
        return (self.x[sel], *(v[sel] for v in self.extra.values()))

    def take(self, sel: Any) -> Dataset:
        return Dataset(self.x[sel], None if self.y is None else self.y[sel],
                       {k: v[sel] for k, v in self.extra.items()}, self.x_name)

    def head(self, n: int) -> Dataset:
        return self.take(slice(None, n))

    def bind(self, names: list[str], dtypes: list[np.dtype]) -> Dataset:
        """The arrays matched to a model's inputs (`names`, in graph order, and their dtypes), each checked: `x` (or
        the input's own name) for a model with one input, one key per input name for a model with several. Other
        keys are not the model's and are left out unchecked. Integer inputs keep integers."""
        members = self.members
        keys = used_keys(names, list(members))
        if isinstance(keys, str):
            raise BadDataError(keys)
        bound: list[np.ndarray] = []
        for key, name, want in zip(keys, names, dtypes, strict=True):
            a = _checked(key, members[key], name, want)
            if bound and a.shape[0] != bound[0].shape[0]:
                raise BadDataError(f"{key} has {a.shape[0]} samples, {keys[0]} {bound[0].shape[0]}: every input "
                                   "needs the same number")
            bound.append(a)
        y = self.y
        if y is not None and y.shape[0] != bound[0].shape[0]:
            raise BadDataError(f"y must be {bound[0].shape[0]} integer class labels, got {y.dtype} {list(y.shape)}")
        return Dataset(bound[0], y, dict(zip(names[1:], bound[1:], strict=True)), names[0])


def used_keys(names: list[str], keys: list[str]) -> list[str] | str:
    """The .npz key feeding each of a model's inputs (`names`, graph order), or why the keys cannot: `x`, else the
    input's own name, for a model with one input; each input's name for a model with several. The API's check at
    job submission and `bind` share it."""
    listed = ", ".join(repr(n) for n in names)
    if len(names) == 1:
        key = "x" if "x" in keys else names[0]
        if key not in keys:
            return f"the model has one input ({listed}): give its samples under key 'x' (keys: {', '.join(keys)})"
        return [key]
    missing = [n for n in names if n not in keys]
    if missing:
        return (f"the .npz has no key {missing[0]!r}: a model with several inputs takes one key per ONNX input name "
                f"({listed}); keys: {', '.join(keys)}")
    return list(names)


def same_kind(have: np.dtype, want: np.dtype) -> bool:
    """Whether data of dtype `have` may feed an input of dtype `want`: floats to floats, integers (signed or not) to
    integers, booleans to booleans."""
    def kind(d: np.dtype) -> str:
        return "i" if d.kind == "u" else d.kind
    return kind(have) == kind(want)


def _checked(key: str, a: np.ndarray, name: str, want: np.dtype) -> np.ndarray:
    """One input's samples as the model's input `name` takes them: N >= 1 first, numbers of its kind, floats finite,
    integers within its dtype's range (never wrapped)."""
    if a.ndim < 1 or a.shape[0] == 0:
        raise BadDataError(f"{key} must be N x (input dims) with N >= 1, got shape {list(a.shape)}")
    if a.dtype.kind not in "fiub":
        raise BadDataError(f"{key} holds {a.dtype}: model inputs are numbers (float, integer or bool)")
    if not same_kind(a.dtype, want):
        raise BadDataError(f"key {key!r} holds {a.dtype}, but the model's input {name!r} takes {want}")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise BadDataError(f"{key} holds NaN or infinite values")
    elif a.dtype.kind in "iu" and a.size and a.dtype != want:
        info = np.iinfo(want)
        low, high = int(a.min()), int(a.max())
        if low < info.min or high > info.max:
            raise BadDataError(f"{key} holds values from {low} to {high}, outside the range of the model's input "
                               f"{name!r} ({want}: {info.min} to {info.max})")
    return np.ascontiguousarray(a, dtype=want)


MAX_MEMBERS = 64
BYTES_PER_ELEMENT = 4  # inputs are used as float32: the budget, in bytes, of the declared arrays


def _check_declared(data: bytes, max_elements: int) -> list[str]:
    """Read only the .npy headers of the members and refuse what they declare, together, before numpy allocates it:
    a small archive can declare (or decompress to) terabytes. Every array counts, used or not; other members (a
    README, __MACOSX/ entries: headers.npy_members) are never read. Returns the arrays' keys, in the archive's order."""
    keys = []
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
            if len(infos) > MAX_MEMBERS:
                raise BadDataError(f"the .npz has {len(infos)} members; send x (or one key per model input) and "
                                   "optional y only")
            total = 0
            arrays = set(npy_members([i.filename for i in infos]).values())
            for info in infos:
                if info.filename not in arrays:
                    continue
                with z.open(info) as f:
                    shape, dtype = _array_header(f)
                if dtype.hasobject:
                    raise BadDataError(f"the .npz cannot be read without pickle: {info.filename} holds Python objects")
                total += int(np.prod(shape, dtype=object)) * max(dtype.itemsize, BYTES_PER_ELEMENT)
                if total > max_elements * BYTES_PER_ELEMENT:
                    raise BadDataError(f"{info.filename} declares shape {list(shape)} ({dtype}), over the limit "
                                       f"of {max_elements} float32 elements: send fewer samples")
                keys.append(info.filename[:-4])
    except zipfile.BadZipFile:
        return []  # not a zip: np.load says what it is (a lone .npy, garbage) below
    except UNREADABLE_NPY as e:
        raise BadDataError(f"not a readable .npz archive: {str(e)[:200]}") from None
    return keys


def load_npz(data: bytes, max_elements: int = 1 << 31) -> Dataset:
    """Every array of the archive but `y`, as it is (floats as float32): `bind` picks and checks the ones a model
    takes (`x`, or one per ONNX input name). Only what no model could take is refused here: no arrays, labels that
    are not labels."""
    keys = _check_declared(data, max_elements)
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
    except (*UNREADABLE_NPY, zipfile.BadZipFile) as e:
        raise BadDataError(f"not a readable .npz archive: {str(e)[:200]}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise BadDataError("data must be an .npz archive with keys x (inputs) and optional y (labels)")
    with archive:
        inputs = [k for k in keys if k != "y"]
        if not inputs:
            raise BadDataError(f"the .npz has no key 'x' (keys: {', '.join(archive.files) or 'none'})")
        try:
            arrays = {k: archive[k] for k in inputs}
            y = archive["y"] if "y" in keys else None
        except ValueError as e:
            # object arrays need pickle, which we never allow
            raise BadDataError(f"the .npz cannot be read without pickle: {str(e)[:160]}") from None
    for k, a in arrays.items():
        if a.dtype.kind == "f":
            arrays[k] = np.ascontiguousarray(a, dtype=np.float32)
    if y is not None:
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise BadDataError(f"y must be integer class labels, one a sample, got {y.dtype} {list(y.shape)}")
        y = y.astype(np.int64)
    first = "x" if "x" in arrays else inputs[0]
    return Dataset(arrays.pop(first), y, arrays, first)
