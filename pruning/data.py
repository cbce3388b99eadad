"""Calibration and evaluation data: `.npz` with `x` (model inputs, float) and optional `y` (class labels).

Loaded with allow_pickle=False: an archive holding object arrays is refused, never unpickled.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np

from .errors import BadDataError
from .headers import UNREADABLE_NPY, _array_header


@dataclass
class Dataset:
    x: np.ndarray  # float32, N x input dims
    y: np.ndarray | None  # int64 labels

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def head(self, n: int) -> Dataset:
        return Dataset(self.x[:n], None if self.y is None else self.y[:n])


MAX_MEMBERS = 64
BYTES_PER_ELEMENT = 4  # x is used as float32: the budget, in bytes, of the declared arrays


def _check_declared(data: bytes, max_elements: int) -> None:
    """Read only the .npy headers of x and y and refuse what they declare before numpy allocates it: a
    small archive can declare (or decompress to) terabytes. Other members are never read."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
            if len(infos) > MAX_MEMBERS:
                raise BadDataError(f"the .npz has {len(infos)} members; send x and optional y only")
            for info in infos:
                if info.filename not in ("x.npy", "y.npy", "x", "y"):  # np.load finds x as either
                    continue
                with z.open(info) as f:
                    shape, dtype = _array_header(f)
                elements = int(np.prod(shape, dtype=object))
                if elements * max(dtype.itemsize, BYTES_PER_ELEMENT) > max_elements * BYTES_PER_ELEMENT:
                    raise BadDataError(f"{info.filename} declares shape {list(shape)} ({dtype}), over the limit "
                                       f"of {max_elements} float32 elements: send fewer samples")
    except zipfile.BadZipFile:
        return  # not a zip: np.load says what it is (a lone .npy, garbage) below
    except UNREADABLE_NPY as e:
        raise BadDataError(f"not a readable .npz archive: {str(e)[:200]}") from None


def load_npz(data: bytes, max_elements: int = 1 << 31) -> Dataset:
    _check_declared(data, max_elements)
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
    except (*UNREADABLE_NPY, zipfile.BadZipFile) as e:
        raise BadDataError(f"not a readable .npz archive: {str(e)[:200]}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise BadDataError("data must be an .npz archive with keys x (inputs) and optional y (labels)")
    with archive:
        if "x" not in archive.files:
            raise BadDataError(f"the .npz has no key 'x' (keys: {', '.join(archive.files) or 'none'})")
        try:
            x = archive["x"]
            y = archive["y"] if "y" in archive.files else None
        except ValueError as e:
            # object arrays need pickle, which we never allow
            raise BadDataError(f"the .npz cannot be read without pickle: {str(e)[:160]}") from None
    if x.size > max_elements:
        raise BadDataError(f"x has {x.size} elements, over the limit of {max_elements}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise BadDataError(f"x must be N x (input dims) with N >= 1, got shape {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise BadDataError(
            f"x must hold float model inputs exactly as the model takes them (normalised), got {x.dtype}"
        )
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise BadDataError("x holds NaN or infinite values")
    if y is not None:
        if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
            raise BadDataError(f"y must be {x.shape[0]} integer class labels, got {y.dtype} {list(y.shape)}")
        y = y.astype(np.int64)
    return Dataset(x, y)
