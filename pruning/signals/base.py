"""The signal interface: a factory gets a `ScoringContext` and returns a function scoring one group.

Scores are one number per channel of the group, higher meaning more important; `normalise` then makes
groups comparable for a global threshold. A signal may also force channels out whatever the target
(`ctx.forced`, e.g. dead units) and leave notes for the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..analysis import Analysis
from ..calibration import Collector
from ..catalog import SIGNALS
from ..data import Dataset
from ..errors import SpecError
from ..fidelity import OutputKind

GroupScorer = Callable[[int], np.ndarray | None]


@dataclass
class ScoringContext:
    model: nn.Module
    analysis: Analysis
    calibration: Dataset | None = None
    teacher: nn.Module | None = None
    samples: int = 512
    device: str = "cpu"
    seed: int = 0
    has_batchnorm: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    # group index -> channel indices removed whatever the target (dead units)
    forced: dict[int, np.ndarray] = field(default_factory=dict)
    # consumer layer -> {input index: (None, 0, constant)}: the input's constant value, folded into the
    # layer's bias when that input is removed (dead units)
    folds: dict[str, dict[int, tuple[int | None, float, float]]] = field(default_factory=dict)
    # group -> {channel: (kept channel, alpha, beta)}: channel ~ alpha * kept + beta, folded into the
    # consumers of the kept channel when the channel is removed (similarity)
    merges: dict[int, dict[int, tuple[int, float, float]]] = field(default_factory=dict)
    progress: Callable[[float, str, dict[str, float]], None] | None = None
    check: Callable[[], None] | None = None  # raises Cancelled when the job is cancelled
    # what each output is (fidelity.py), asked for only when gradients are taken without labels
    output_kinds: Callable[[], list[OutputKind] | None] | None = None
    _collectors: dict[tuple[bool, int], Collector] = field(default_factory=dict)

    def collect(self, *, gradients: bool = False, rows: int = 0) -> Collector:
        """Statistics of the feature maps (and gradients) over the calibration data, computed once."""
        if self.calibration is None:
            raise SpecError("this signal needs calibration data (calibration.dataset_id, or --calib DATA.npz)")
        for (has_grad, has_rows), c in self._collectors.items():
            if (has_grad or not gradients) and has_rows >= rows:
                return c
        c = Collector(self.model, self.analysis, gradients=gradients, rows=rows, device=self.device, seed=self.seed)
        kinds = None
        if gradients and self.calibration.y is None and self.output_kinds is not None:
            kinds = self.output_kinds()
        c.run(self.calibration, self.samples, teacher=self.teacher, kinds=kinds)
        self._collectors[(gradients, rows)] = c
        return c


SignalFactory = Callable[[ScoringContext], GroupScorer]
REGISTRY: dict[str, SignalFactory] = {}


def register(name: str) -> Callable[[SignalFactory], SignalFactory]:
    if name not in SIGNALS:
        raise AssertionError(f"signal {name!r} must be described in catalog.SIGNALS first")

    def wrap(factory: SignalFactory) -> SignalFactory:
        REGISTRY[name] = factory
        return factory

    return wrap


def make_scorer(name: str, ctx: ScoringContext) -> GroupScorer:
    try:
        factory = REGISTRY[name]
    except KeyError:
        raise SpecError(f"signal {name!r} is not implemented in this engine") from None
    return factory(ctx)


def normalise(scores: np.ndarray, how: str) -> np.ndarray:
    """Per-group normalisation, the taxonomy's third axis."""
    s = np.maximum(np.nan_to_num(scores, nan=0.0), 0.0)
    if how == "mean":
        d = s.mean()
    elif how == "max":
        d = s.max()
    elif how == "l2":
        d = np.sqrt((s * s).sum())
    elif how == "sum":
        d = s.sum()
    else:
        return s
    return s / d if d > 0 else s


def as_numpy(t: torch.Tensor | np.ndarray | None) -> np.ndarray | None:
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        return t.detach().double().cpu().numpy()
    return np.asarray(t, dtype=np.float64)
