"""Pruning signals: which channels matter. One module per family; each registers by name.

A signal turns a dependency group (every layer coupled to a set of channels) into one raw score per
channel, higher meaning more important. Normalising and comparing scores across groups is the planner's job.
"""

from __future__ import annotations

from . import batchnorm, magnitude  # noqa: F401  (registration side effects)
from .base import REGISTRY, Scorer, ScoringContext, make_scorer

__all__ = ["REGISTRY", "Scorer", "ScoringContext", "make_scorer"]
