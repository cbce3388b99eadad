"""How uvicorn serves the app: httptools' C parser and uvloop when installed (the `server` extra installs both),
h11 and asyncio's own loop otherwise; a request head (request line and headers) past 64 KiB is refused either way.

With both, a status poll cost the API process 0.35 ms of CPU where h11 and asyncio's loop took 0.52 ms (the
service benchmark, two workers under wrk). But httptools buffers a header of any size: `BoundedHttpTools`
counts the bytes of a head still being parsed and answers 431 problem+json past `MAX_HEAD_BYTES`, as h11's
`max_incomplete_event_size` bounds it for h11. Below that, `limits.BodyLimit` answers 431 problem+json past
32 KiB of headers."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

MAX_HEAD_BYTES = 64 * 1024


def uvicorn_options() -> dict[str, Any]:
    """uvicorn.run's `http` and `loop` arguments, and h11's head limit for when h11 it is."""
    return {"http": "h11" if HttpToolsProtocol is None else "secateurs.api.server:BoundedHttpTools",
            "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
            "h11_max_incomplete_event_size": MAX_HEAD_BYTES}


if HttpToolsProtocol is not None:

    class BoundedHttpTools(HttpToolsProtocol):
        """uvicorn's httptools protocol, refusing (431, then closing) a request head over `MAX_HEAD_BYTES`.
        The bytes of each read that neither ended a head nor a message while a head was being parsed are
        counted after parsing, so at most a read or two past the limit is buffered."""

        def connection_made(self, transport: Any) -> None:
            self._in_head, self._head_bytes, self._marks = True, 0, 0
            super().connection_made(transport)

        def on_headers_complete(self) -> None:
            self._in_head, self._head_bytes, self._marks = False, 0, self._marks + 1
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_head, self._marks = True, self._marks + 1  # what comes next is the next request's head
            super().on_message_complete()

        def data_received(self, data: bytes) -> None:
            marks = self._marks
            super().data_received(data)
            # a chunk in which no head and no message ended, received inside a head, is all head bytes
            if self._in_head and marks == self._marks and not self.transport.is_closing():
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:
                    self._refuse_head()

        def _refuse_head(self) -> None:
            body = json.dumps({"type": "https://secateurs.dev/problems/too-large",
                               "title": "Request header fields too large", "status": 431,
                               "detail": f"the request line and headers are over {MAX_HEAD_BYTES} bytes"}).encode()
            head = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
            for name, value in self.server_state.default_headers:
                head.append(name + b": " + value + b"\r\n")
            head.append(b"content-type: application/problem+json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                        % len(body))
            self.transport.write(b"".join(head) + body)
            self.transport.close()


