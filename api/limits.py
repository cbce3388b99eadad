"""Request bodies other than uploads are small JSON: refuse anything larger (413) before reading it all;
headers past 32 KiB are refused too (431).

Uploads (POST /v1/models, /v1/datasets) stream to disk under their own cap (uploads.py); every other body
is read into memory by the framework, so it is capped here, by Content-Length and while it streams."""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException

MAX_JSON_BODY = 1024 * 1024
MAX_HEADER_BYTES = 32 * 1024  # uvicorn's h11 drops the connection past 64 KiB; below that, refuse here
UPLOADS = ("/v1/models", "/v1/datasets")


def _detail(limit: int) -> str:
    return f"the request body is over the limit of {limit} bytes for JSON requests"


def _problem(status: int, title: str, detail: str) -> tuple[dict[str, Any], bytes]:
    body = json.dumps({"type": "https://secateurs.dev/problems/too-large", "title": title, "status": status,
                       "detail": detail}).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode()),
                         (b"connection", b"close")]}
    return start, body


class BodyLimit:
    """ASGI middleware: bodies of non-upload requests over `limit` bytes answer 413 problem+json."""

    def __init__(self, app: Any, limit: int = MAX_JSON_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
            await self._refuse(send, 431, "Request header fields too large",
                               f"the request headers are over the limit of {MAX_HEADER_BYTES} bytes")
            return
        if scope["type"] != "http" or (scope["method"] == "POST" and scope["path"].rstrip("/") in UPLOADS):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send, 413, "Payload too large", _detail(self.limit))
            return
        seen = 0

        async def counting_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # a chunked body: the framework passes HTTP errors through to problems.py
                    raise HTTPException(413, _detail(self.limit))
            return message

        await self.app(scope, counting_receive, send)

    async def _refuse(self, send: Any, status: int, title: str, detail: str) -> None:
        start, body = _problem(status, title, detail)
        await send(start)
        await send({"type": "http.response.body", "body": body})
