"""The Secateurs engine: dependency-aware structured channel pruning, ONNX in and ONNX out.

`PruneSpec` imports only pydantic; `prune` (and torch) load on first use, so the light client can share
the spec without the engine's dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import InputError, PruningError
from .spec import PruneSpec, Target

if TYPE_CHECKING:
    from .pipeline import PruneResult, prune

__all__ = ["InputError", "PruneResult", "PruneSpec", "PruningError", "Target", "prune"]


def __getattr__(name: str) -> Any:
    if name in ("prune", "PruneResult"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
