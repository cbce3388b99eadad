"""Secateurs: structured channel pruning as a service.

`from secateurs import Client` (or `AsyncClient`) for the SDK; `from secateurs.pruning import prune, PruneSpec` for the engine.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Client", "AsyncClient"):
        from . import client

        return getattr(client, name)
    raise AttributeError(name)
