"""The budget search: with `fidelity.max_drop` and no target, the smallest model that stays within the budget.

Each probe is a whole job at one MACs fraction (analyse, score, plan, recover, export, verify), its fidelity against
the original measured on data set apart for the search. Fidelity falls, roughly monotonically, as the fraction falls,
so the search keeps a bracket: the smallest fraction seen to hold, and the largest seen to miss (or that the
protected layers and the layer floor cannot reach). It halves the fraction while every probe holds, then bisects
the bracket, until the bracket is narrower than `resolution`, the probes run out, or the time left cannot hold
another probe as long as the longest so far.

This module holds the search's logic only; the pipeline gives it the probe (pipeline.py: `_search`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FIRST = 0.5  # the first fraction tried
RESOLUTION = 0.05  # a bracket narrower than this is the answer
FLOOR = 0.05  # no fraction below this is tried


@dataclass
class Probe:
    fraction: float  # the MACs fraction asked for
    held: bool  # within the budget (False too when the fraction cannot be reached)
    seconds: float
    drop_points: float | None = None  # the worst output's drop against the original, in points
    macs_kept: float | None = None  # what the pruned model measured
    reason: str | None = None  # why a probe that did not hold has no figures (unreachable)
    result: Any = field(default=None, repr=False)  # the probe's PruneResult, kept while it is the best
    report: dict[str, Any] | None = field(default=None, repr=False)  # its report, kept for every probe

    def point(self) -> dict[str, Any]:
        """The probe as the report and the events give it."""
        out: dict[str, Any] = {"macs_fraction": round(self.fraction, 4), "held": self.held,
                               "seconds": round(self.seconds, 2)}
        if self.macs_kept is not None:
            out["macs_kept"] = round(self.macs_kept, 4)
        if self.drop_points is not None:
            out["drop_points"] = round(self.drop_points, 4)
        if self.reason is not None:
            out["reason"] = self.reason
        return out


@dataclass
class Outcome:
    probes: list[Probe]
    best: Probe | None  # the smallest fraction that held
    stopped: str  # why the search ended


def next_fraction(held: float, missed: float | None) -> float:
    """The next fraction to try between the smallest that held and the largest that missed."""
    if missed is None:
        return max(held / 2, FLOOR)
    return (held + missed) / 2


def run(probe: Callable[[float], Probe], *, probes: int, seconds: float,
        clock: Callable[[], float] = time.monotonic, on_probe: Callable[[Probe, int], None] | None = None) -> Outcome:
    """Search with `probe(fraction)`, at most `probes` of them within `seconds`; `on_probe(p, i)` after each."""
    start = clock()
    done: list[Probe] = []
    held, missed = 1.0, None  # the original holds by definition
    best: Probe | None = None
    fraction = FIRST
    stopped = "probes"
    for i in range(probes):
        p = probe(fraction)
        done.append(p)
        if on_probe is not None:
            on_probe(p, i)
        if p.held:
            held = fraction
            if best is not None:
                best.result = None  # only the best probe's model is kept in memory
            best = p
        else:
            missed = fraction if missed is None else max(missed, fraction)
            p.result = None
        if missed is not None and held - missed < RESOLUTION:
            stopped = "resolution"
            break
        if missed is None and held <= FLOOR:
            stopped = "floor"
            break
        longest = max(q.seconds for q in done)
        if clock() - start + longest > seconds:
            stopped = "time"
            break
        fraction = next_fraction(held, missed)
    return Outcome(done, best, stopped)
