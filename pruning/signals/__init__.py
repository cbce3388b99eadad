"""Pruning signals: which channels matter. One module per family; each registers by name.

A signal turns a dependency group (every layer coupled to a set of channels) into one score per
channel, higher meaning more important, normalised so that groups compare under one threshold.
"""

from __future__ import annotations

from . import activity, bandit, compose, magnitude  # noqa: F401  (registration side effects)
from .base import REGISTRY, GroupScorer, ScoringContext, make_scorer

__all__ = ["REGISTRY", "GroupScorer", "ScoringContext", "make_scorer"]
