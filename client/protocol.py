"""What the sync SDK (`Client`) and the async one (`AsyncClient`) share: the requests they send, when and how
long to wait before a retry, the bookkeeping that resumes an event stream, and problem+json errors. Only
the I/O differs between the two; everything that decides something lives here once.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

import httpx
from secateurs.pruning.spec import PruneSpec

from .config import resolve

TERMINAL = ("succeeded", "failed", "cancelled")
RETRIED = (429, 503)
STREAM_TIMEOUT = httpx.Timeout(30, read=60)
C = TypeVar("C")
H = TypeVar("H", httpx.Client, httpx.AsyncClient)
PAUSE = 1.0  # seconds between reconnections, and after a stream that closed at once with nothing new


class JobData(Generic[C]):
    """A job object of the service and the client that fetched it (`Job` and `AsyncJob` add the calls)."""

    def __init__(self, client: C, data: dict[str, Any]) -> None:
        self.client, self.data = client, data

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.data.get('id')!r}, status={self.data.get('status')!r})"

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def status(self) -> str:
        return str(self.data["status"])


class APIError(Exception):
    """A problem+json answer from the service."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        super().__init__(f"{status}: {problem.get('detail') or problem.get('title') or 'error'}")


def error(r: httpx.Response) -> APIError:
    """The APIError of a read response."""
    try:
        body = r.json()
    except ValueError:
        body = {"detail": r.text[:300]}
    return APIError(r.status_code, body if isinstance(body, dict) else {"detail": str(body)})


def retry_delay(r: httpx.Response, attempt: int, retries: int) -> float | None:
    """Seconds to wait before sending the request again, or None to answer with this response: 429 and 503
    are retried up to `retries` times, after Retry-After seconds when the service says, else 1, 2, 4 ... 30."""
    if r.status_code not in RETRIED or attempt >= retries:
        return None
    retry_after = r.headers.get("Retry-After", "")
    return float(retry_after) if retry_after.replace(".", "", 1).isdigit() else float(min(2**attempt, 30))


def rewind(kwargs: dict[str, Any]) -> None:
    """Files being uploaded start again from their beginning for the retry."""
    for f in (kwargs.get("files") or {}).values():
        if hasattr(f[1], "seek"):
            f[1].seek(0)


class ClientBase(Generic[H]):
    """How `Client` and `AsyncClient` are made: the service's URL and key from the arguments, else the
    environment, else the config file; an httpx client of the kind `http` for it; the API's parts."""

    http: type[H]
    parts: tuple[type, type, type]  # models, datasets, jobs

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 300,
                 retries: int = 5) -> None:
        self.base_url, key = resolve(base_url, api_key)
        self._http = self.http(base_url=self.base_url, headers={"Authorization": f"Bearer {key}"} if key else {},
                               timeout=timeout)
        self.retries = retries
        models, datasets, jobs = self.parts
        self.models, self.datasets, self.jobs = models(self), datasets(self), jobs(self)


@contextmanager
def upload(path: str | os.PathLike[str], **fields: Any) -> Iterator[dict[str, Any]]:
    """The keyword arguments of a multipart upload of `path`, with the form fields that are set."""
    data = {k: str(v) for k, v in fields.items() if v is not None}
    with open(path, "rb") as f:
        yield {"files": {"file": (Path(path).name, f)}, "data": data}


def create_job(model: str | dict[str, Any], spec: PruneSpec | dict[str, Any] | None, *, webhook_url: str | None,
               webhook_events: list[str] | None, idempotency_key: str | None) -> dict[str, Any]:
    """The keyword arguments of `POST /v1/jobs`. The spec is checked here, before anything is sent, and every
    create carries an idempotency key, so a retried create never makes a second job."""
    checked = spec if isinstance(spec, PruneSpec) else PruneSpec.model_validate(spec or {})
    body = {"model_id": model if isinstance(model, str) else model["id"],
            "spec": checked.model_dump(mode="json", exclude_defaults=True), "webhook_url": webhook_url,
            "webhook_events": webhook_events}
    return {"json": body, "headers": {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}}


def object_id(obj: str | dict[str, Any]) -> str:
    """The id of a model or dataset given as its id or as the object an upload returned."""
    return obj if isinstance(obj, str) else str(obj["id"])


def page_params(limit: int, cursor: str | None, **filters: Any) -> dict[str, Any]:
    return {"limit": limit, **{k: v for k, v in filters.items() if v}, **({"cursor": cursor} if cursor else {})}


class SSE:
    """Server-Sent Events fed line by line: the `data` of each complete event (complete at its blank line)."""

    def __init__(self) -> None:
        self.data: list[str] = []

    def feed(self, line: str) -> dict[str, Any] | None:
        if not line:
            event = json.loads("\n".join(self.data)) if self.data else None
            self.data = []
            return event
        if line.startswith("data:"):
            self.data.append(line[5:].removeprefix(" "))
        return None


class Resume:
    """The bookkeeping of one `job.events()`: which event came last, so that a dropped stream reopens with
    `Last-Event-ID` and every event comes exactly once (a partly received event is dropped and read again)."""

    def __init__(self, follow: bool, reconnect_for: float) -> None:
        self.follow, self.reconnect_for = follow, reconnect_for
        self.last: int | None = None
        self.down_since: float | None = None
        self.connected = False
        self.fresh = 0  # events on the current connection

    def open(self) -> tuple[SSE, dict[str, str]]:
        """A decoder and the headers of the next connection."""
        self.fresh = 0
        headers = {"Accept": "text/event-stream"}
        if self.last is not None:
            headers["Last-Event-ID"] = str(self.last)
        return SSE(), headers

    def opened(self) -> None:
        self.down_since, self.connected = None, True

    def seen(self, event: dict[str, Any]) -> bool:
        """Count an event; True when it is the job's last."""
        self.last, self.fresh = int(event["id"]), self.fresh + 1
        return event["type"] in TERMINAL

    def dropped(self, now: float) -> bool:
        """After a transport error: True to reconnect (after PAUSE), False to raise it: the first connection
        failed, `follow` is off, or no connection for `reconnect_for` seconds."""
        self.down_since = self.down_since or now
        return self.follow and self.connected and now - self.down_since <= self.reconnect_for

    def closed(self) -> str:
        """The server closed the stream before the terminal event (a restart, a proxy's timeout): "stop", "check"
        (nothing new came: stop if the job is over, else reopen after PAUSE, not to spin) or "reopen"."""
        if not self.follow:
            return "stop"
        return "check" if self.fresh == 0 else "reopen"


@contextmanager
def partial_file(path: str | os.PathLike[str]) -> Iterator[tuple[Path, IO[bytes]]]:
    """A download written beside `path` and renamed onto it when complete: a broken one leaves nothing."""
    dest = Path(path)
    tmp = dest.with_name(f".{dest.name}.partial")
    try:
        with open(tmp, "wb") as f:
            yield dest, f
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
