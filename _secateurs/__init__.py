"""Secateurs: structured channel pruning as a service.

`from secateurs import Client` for the SDK; `from secateurs.pruning import prune, PruneSpec` for the engine.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Client", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError(name)
