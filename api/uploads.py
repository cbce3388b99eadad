"""Streaming multipart uploads: the file part goes to a temporary file chunk by chunk, hashed, and the
request is refused (413) the moment it passes the cap; nothing of it is left behind."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header
from secateurs.db.storage import TooLarge

from .problems import Problem

MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 16


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    filename: str = ""
    size: int = 0
    sha256: str = ""

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


async def read_upload(request: Request, limit: int, tmp_dir: Path, over_limit: str | None = None) -> Upload:
    """The form, its file part in `tmp_dir`. A file past `limit` bytes is refused with 413 (saying
    `over_limit` when given: the limit is then what the tenant may still store) as soon as it passes it."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise Problem(415, "send the file as multipart/form-data with a 'file' field", code="multipart")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 1024 * 1024:
        raise Problem(413, over_limit or f"the upload is {declared} bytes, over the limit of {limit} bytes",
                      code="too-large")

    up = Upload()
    state: dict[str, object] = {"headers": {}, "field": b"", "value": b"", "name": None, "file": None, "parts": 0}
    digest = hashlib.sha256()

    def on_part_begin() -> None:
        state["headers"] = {}
        state["value"] = b""
        state["parts"] = int(state["parts"]) + 1  # type: ignore[call-overload]
        if int(state["parts"]) > MAX_PARTS:  # type: ignore[call-overload]
            raise Problem(400, "too many parts in the form", code="multipart")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] = bytes(state["field"]) + data[start:end]  # type: ignore[arg-type]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        headers = state["headers"]
        assert isinstance(headers, dict)
        name = bytes(state["field"]).lower()  # type: ignore[arg-type]
        headers[name] = headers.get(name, b"") + data[start:end]

    def on_header_end() -> None:
        state["field"] = b""

    def on_headers_finished() -> None:
        headers = state["headers"]
        assert isinstance(headers, dict)
        _, disp = parse_options_header(headers.get(b"content-disposition", b""))
        state["name"] = disp.get(b"name", b"").decode("utf-8", "replace")
        filename = disp.get(b"filename")
        if state["name"] == "file":
            if up.path is not None:
                raise Problem(400, "send one 'file' part", code="multipart")
            up.filename = Path((filename or b"upload").decode("utf-8", "replace")).name[:300]
            fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-")
            up.path = Path(name)
            state["file"] = os.fdopen(fd, "wb")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        f = state["file"]
        if state["name"] == "file" and f is not None:
            up.size += len(chunk)
            if up.size > limit:
                raise TooLarge(limit)
            digest.update(chunk)
            f.write(chunk)  # type: ignore[attr-defined]
        else:
            value = bytes(state["value"]) + chunk  # type: ignore[arg-type]
            if len(value) > MAX_FIELD_BYTES:
                raise Problem(413, "a form field is too large", code="too-large")
            state["value"] = value

    def on_part_end() -> None:
        f = state["file"]
        if state["name"] == "file" and f is not None:
            f.close()  # type: ignore[attr-defined]
            state["file"] = None
        elif state["name"]:
            up.fields[str(state["name"])] = bytes(state["value"]).decode("utf-8", "replace")  # type: ignore[arg-type]

    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end,
    })
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except TooLarge:
        _close(state)
        up.discard()
        raise Problem(413, over_limit or f"the upload is over the limit of {limit} bytes", code="too-large") from None
    except Problem:
        _close(state)
        up.discard()
        raise
    except Exception as e:
        _close(state)
        up.discard()
        raise Problem(400, f"malformed multipart body: {e}", code="multipart") from None
    if up.path is None:
        raise Problem(422, "the form has no 'file' part", code="validation", errors=[{"field": "file",
                                                                                     "message": "required"}])
    up.sha256 = digest.hexdigest()
    return up


def _close(state: dict[str, object]) -> None:
    f = state.get("file")
    if f is not None:
        f.close()  # type: ignore[attr-defined]
