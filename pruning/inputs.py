"""A model's graph inputs, and the arrays and tensors made to fit them.

Every input takes the batch on its first axis (the .npz gives every input the same N); the converted module takes
the inputs positionally, in graph-input order, and so do the ONNX Runtime helpers (onnx_tools). A model with one
input is called with one tensor, as before; with several, with a tuple.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

Example = torch.Tensor | tuple[torch.Tensor, ...]  # what a module is called with: one input, or each in order


@dataclass
class GraphInput:
    name: str
    shape: list[int]  # with the batch first (1, or the batch the model fixes), symbolic dimensions sized
    dtype: str = "float32"  # numpy's name
    symbolic: list[int] = field(default_factory=list)  # axes besides the batch the model leaves free

    def at(self, batch: int) -> list[int]:
        return [batch, *self.shape[1:]]


def arrays(inputs: Sequence[GraphInput], batch: int | None = None, seed: int | None = 0) -> list[np.ndarray]:
    """One array per input at its shape (the first axis `batch`, when given): float inputs standard normal from
    `seed` (zeros when it is None), the others (ids, sizes, masks) zeros."""
    rng = np.random.default_rng(seed)
    out = []
    for i in inputs:
        shape = i.shape if batch is None else i.at(batch)
        dtype = np.dtype(i.dtype)
        floating = np.issubdtype(dtype, np.floating) and seed is not None
        out.append(rng.standard_normal(shape).astype(dtype) if floating else np.zeros(shape, dtype))
    return out


def example(inputs: Sequence[GraphInput], batch: int | None = None) -> Example:
    """Zeros at each input's shape and dtype: what tracing and exporting call the module with."""
    tensors = tuple(torch.from_numpy(a) for a in arrays(inputs, batch, seed=None))
    return tensors[0] if len(tensors) == 1 else tensors


def as_tuple(x: Example) -> tuple[torch.Tensor, ...]:
    return x if isinstance(x, tuple) else (x,)


def to(x: Example, device: torch.device | str) -> Example:
    moved = tuple(t.to(device) for t in as_tuple(x))
    return moved if isinstance(x, tuple) else moved[0]


def call(model: Callable[..., object], x: Example) -> object:
    """`model` (a module, or anything called as one) on the inputs `x`."""
    return model(*as_tuple(x))


def tensors(values: Sequence[np.ndarray], device: torch.device | str = "cpu") -> Example:
    """A batch of numpy inputs (Dataset.arrays) as what the module is called with."""
    moved = tuple(torch.from_numpy(np.ascontiguousarray(v)).to(device) for v in values)
    return moved[0] if len(moved) == 1 else moved
