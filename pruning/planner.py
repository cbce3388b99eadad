"""Plan: which channels of which group go, so that the target is met and not far under.

Scores arrive normalised per group by the signal, so that a single global threshold compares channels of
different layers (`scope=global`); or every group loses the same fraction (`scope=local`). Channels a
signal forces out (dead units) go first in either scope. The planner predicts the
MACs/parameters of a plan from the layer costs, searches the threshold for the largest plan that fits,
and the caller then measures the applied plan and tightens the goal if the prediction was optimistic.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .analysis import Analysis


@dataclass
class Plan:
    removed: dict[int, np.ndarray]  # group index -> sorted channel indices to remove
    estimate: float  # predicted kept fraction of the target quantity

    @property
    def channels_removed(self) -> int:
        return sum(len(v) for v in self.removed.values())


def auto_round(channels: int) -> int:
    """The default channel step of a group. ONNX Runtime's CPU convolutions work on blocks of 16 channels
    with AVX-512 (8 with AVX2; 16 is a multiple of both): a count that is not a multiple computes the
    padded block anyway, and below a multiple of 4 the convolution falls back to a slower NCHW kernel
    (BENCHMARKS.md, latency: ResNet-50 at macs=0.5 saves 0.99 of the MACs saving in latency with 16,
    0.78 with 1). Narrow groups take steps of 4, where a 16-channel step would be a quarter of the layer."""
    if channels >= 64:
        return 16
    return 4 if channels >= 16 else 1


class Planner:
    def __init__(
        self,
        analysis: Analysis,
        scores: dict[int, np.ndarray],
        *,
        kind: str,
        round_to: int | None,
        layer_floor: float,
        extra_macs: float = 0.0,
        forced: dict[int, np.ndarray] | None = None,
    ) -> None:
        self.a = analysis
        self.kind = kind
        self.scores = {g: s.copy() for g, s in scores.items()}
        self.forced = {g: len(f) for g, f in (forced or {}).items() if g in scores}
        for g, f in (forced or {}).items():
            if g in self.scores:
                self.scores[g][f] = -1.0  # below any threshold: removed first
        self.order = {g: np.argsort(s, kind="stable") for g, s in self.scores.items()}
        self.normalised = self.scores
        # all counts below are in units (see GroupInfo.blocks); a unit is `blocks` channels
        self.round = {}
        for g in scores:
            info = self.a.groups[g]
            self.round[g] = max(1, (round_to or auto_round(info.channels)) // info.blocks)
        self.max_remove = {}
        for g in scores:
            c = self.a.groups[g].units
            floor = max(1, math.ceil(layer_floor * c))
            floor = min(c, math.ceil(floor / self.round[g]) * self.round[g])
            self.max_remove[g] = c - floor
        self.extra_macs = extra_macs  # MACs outside conv/linear layers (matmuls), assumed unprunable
        base = self._cost({})
        self.base = base if base > 0 else 1.0

    # --- prediction -------------------------------------------------------------------------------
    def _cost(self, counts: dict[int, int]) -> float:
        if self.kind == "channels":
            total = self.a.prunable_channels
            return float(total - sum(n * self.a.groups[g].blocks for g, n in counts.items()))
        out_rm: dict[str, int] = defaultdict(int)
        in_rm: dict[str, int] = defaultdict(int)
        for g, n in counts.items():
            if n == 0:
                continue
            info = self.a.groups[g]
            gone = np.zeros(info.channels, dtype=bool)
            gone[info.expand(self.order[g][:n])] = True
            for t in info.touches:
                hit = int(gone[t.root_idxs[t.root_idxs >= 0]].sum())
                (out_rm if t.is_out else in_rm)[t.layer] += hit
        total = self.extra_macs if self.kind == "macs" else 0.0
        for name, c in self.a.layers.items():
            keep_out = 1 - min(out_rm.get(name, 0), c.out_channels) / c.out_channels
            keep_in = 1 - min(in_rm.get(name, 0), c.in_channels) / c.in_channels
            f = keep_out if c.depthwise else keep_out * keep_in
            total += (c.macs if self.kind == "macs" else c.params) * f
        return total

    def _rounded(self, g: int, n_remove: int) -> int:
        c = self.a.groups[g].units
        n_remove = min(max(n_remove, 0), self.max_remove[g])
        r = self.round[g]
        kept = min(c, math.ceil((c - n_remove) / r) * r)
        return c - kept

    def counts_at(self, t: float, scope: str) -> dict[int, int]:
        if scope == "global":
            return {g: self._rounded(g, int((s < t).sum())) for g, s in self.normalised.items()}
        return {
            g: self._rounded(g, max(int(math.floor(t * self.a.groups[g].units)), self.forced.get(g, 0)))
            for g in self.scores
        }

    def fraction(self, counts: dict[int, int]) -> float:
        return self._cost(counts) / self.base

    # --- search -----------------------------------------------------------------------------------
    def search(self, goal: float, scope: str) -> Plan:
        """Largest removal whose predicted kept fraction is <= goal (or the most we may remove)."""
        if scope == "global":
            lo, hi = 0.0, max(float(s.max()) for s in self.normalised.values()) + 1.0
        else:
            lo, hi = 0.0, 1.0
        best = self.counts_at(hi, scope)  # removes everything allowed: the smallest reachable
        if self.fraction(best) > goal:
            return self._plan(best)
        best_lo = self.counts_at(lo, scope)
        if self.fraction(best_lo) <= goal:
            return self._plan(best_lo)
        for _ in range(60):
            mid = (lo + hi) / 2
            counts = self.counts_at(mid, scope)
            if self.fraction(counts) <= goal:
                hi, best = mid, counts
            else:
                lo = mid
            if hi - lo < 1e-9:
                break
        if scope == "global":
            best = self._fill(best, goal)
        return self._plan(best)

    def _fill(self, counts: dict[int, int], goal: float, max_moves: int = 4000) -> dict[int, int]:
        """Spend what the threshold left of the budget: one channel of a wide coupled group (a residual
        stream) moves the MACs in a big step, so the threshold plan can land well under the target.
        Give channels back, the highest-scored first, while the prediction stays within the goal."""
        counts = dict(counts)

        def next_score(g: int) -> float:
            n = counts.get(g, 0)
            if n <= self.forced.get(g, 0):
                return -np.inf  # nothing to give back (forced channels never come back)
            return float(self.normalised[g][self.order[g][n - 1]])

        blocked: set[int] = set()
        for _ in range(max_moves):
            candidates = [(next_score(g), g) for g in counts if g not in blocked and counts[g] > 0]
            candidates = [c for c in candidates if np.isfinite(c[0])]
            if not candidates:
                break
            _, g = max(candidates)
            trial = dict(counts)
            trial[g] = self._rounded(g, counts[g] - self.round[g])
            if trial[g] >= counts[g] or self.fraction(trial) > goal:
                blocked.add(g)  # the next channel of this group does not fit; others still may
                continue
            counts = trial
        return counts

    def _plan(self, counts: dict[int, int]) -> Plan:
        removed = {g: self.a.groups[g].expand(self.order[g][:n]) for g, n in counts.items() if n > 0}
        return Plan(removed, self.fraction(counts))
