"""`GET /`: the web dashboard, and `/static/...`: its files, shipped in the package (api/static).

No CDN and no build step: plain HTML, CSS and ES modules that call the same REST API with the same Bearer
keys. The page runs under a strict Content-Security-Policy: only its own scripts and styles, requests only to
this origin, so a value that slipped into the page as markup could neither run nor send the key elsewhere.
Where the key lives (sessionStorage) and why is said at the top of static/dashboard.js.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..problems import Problem

router = APIRouter(include_in_schema=False)
STATIC = Path(__file__).resolve().parent.parent / "static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}


def _load() -> dict[str, tuple[bytes, str]]:
    """Every asset read once: name -> (bytes, ETag)."""
    return {p.name: (p.read_bytes(), '"' + hashlib.sha256(p.read_bytes()).hexdigest()[:16] + '"')
            for p in sorted(STATIC.iterdir()) if p.suffix in TYPES}


ASSETS = _load()


def _serve(name: str, request: Request) -> Response:
    if name not in ASSETS:
        raise Problem(404, f"no dashboard file {name!r}", code="not-found")
    body, etag = ASSETS[name]
    headers = {**HEADERS, "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=TYPES[Path(name).suffix], headers=headers)


@router.get("/")
def dashboard(request: Request) -> Response:
    return _serve("index.html", request)


@router.get("/static/{name}")
def dashboard_asset(name: str, request: Request) -> Response:
    return _serve(name, request)
