from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from ..catalog import SIGNALS
from ..errors import SpecError


@dataclass
class ScoringContext:
    """What a signal may look at besides the group itself."""

    model: nn.Module
    seed: int = 0
    has_batchnorm: bool = True
    notes: list[str] = field(default_factory=list)


class Scorer(Protocol):
    def __call__(self, group: object) -> torch.Tensor | None:
        """Raw importance per channel of the group (None: this group cannot be scored, leave it whole)."""


ScorerFactory = Callable[[ScoringContext], Scorer]
REGISTRY: dict[str, ScorerFactory] = {}


def register(name: str) -> Callable[[ScorerFactory], ScorerFactory]:
    if name not in SIGNALS:
        raise AssertionError(f"signal {name!r} must be described in catalog.SIGNALS first")

    def wrap(factory: ScorerFactory) -> ScorerFactory:
        REGISTRY[name] = factory
        return factory

    return wrap


def make_scorer(name: str, ctx: ScoringContext) -> Scorer:
    try:
        factory = REGISTRY[name]
    except KeyError:
        raise SpecError(f"signal {name!r} is not implemented in this engine") from None
    return factory(ctx)
