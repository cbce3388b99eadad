"""The ASGI application object for uvicorn (`secateurs.api.main:app`), configured from the environment."""

from __future__ import annotations

from .app import create_app

app = create_app()
