"""The Python SDK: a typed client over httpx for pipelines that call the service.

    from secateurs import Client
    client = Client("http://127.0.0.1:8000", api_key="sk_...")
    model = client.models.upload("model.onnx")
    job = client.jobs.create(model, {"signal": "l2_norm", "target": {"macs": 0.5}})
    job.wait()
    job.download("pruned.onnx")

Specs are validated on the client with the same pydantic model the engine uses, so a bad spec fails
before any upload. Creates carry an idempotency key; 429 and 503 are retried honouring Retry-After.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from secateurs.pruning.spec import PruneSpec

from .config import resolve

TERMINAL = ("succeeded", "failed", "cancelled")


class APIError(Exception):
    """A problem+json answer from the service."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        super().__init__(f"{status}: {problem.get('detail') or problem.get('title') or 'error'}")


@dataclass
class Job:
    client: Client = field(repr=False)
    data: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def status(self) -> str:
        return str(self.data["status"])

    def refresh(self) -> Job:
        self.data = self.client._request("GET", f"/v1/jobs/{self.id}").json()
        return self

    def events(self, follow: bool = True, *, reconnect_for: float = 120.0) -> Iterator[dict[str, Any]]:
        """Events as they happen (Server-Sent Events), oldest first, ending after the job's terminal event.

        A dropped connection, or a stream that ends before the terminal event, is reopened with
        `Last-Event-ID`, so every event comes exactly once; a partly received event is dropped and read
        again. Raises the transport error when the first connection fails, after `reconnect_for` seconds
        without a connection, or (with `follow=False`) on the first drop."""
        last: int | None = None
        down_since: float | None = None
        connected = False
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            fresh = 0
            try:
                with self.client._http.stream("GET", f"/v1/jobs/{self.id}/events", headers=headers,
                                              timeout=httpx.Timeout(30, read=60)) as r:
                    if r.status_code >= 400:
                        r.read()
                        raise _error(r)
                    down_since, connected = None, True
                    for event in _sse(r.iter_lines()):
                        last, fresh = int(event["id"]), fresh + 1
                        yield event
                        if event["type"] in TERMINAL:
                            return
            except httpx.TransportError:
                now = time.monotonic()
                down_since = down_since or now
                if not follow or not connected or now - down_since > reconnect_for:
                    raise
                time.sleep(1.0)
                continue
            # The server closed the stream before the terminal event (a restart, a proxy's timeout):
            # open it again, unless the job is over and nothing more came.
            if not follow or (fresh == 0 and self.refresh().status in TERMINAL):
                return
            if fresh == 0:
                time.sleep(1.0)  # closed at once with nothing new: do not spin

    def history(self, page_size: int = 500) -> Iterator[dict[str, Any]]:
        """The events so far, oldest first (the JSON pages, no stream)."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size, **({"cursor": cursor} if cursor else {})}
            page = self.client._request("GET", f"/v1/jobs/{self.id}/events", params=params).json()
            yield from page["data"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def wait(self, timeout: float | None = None, poll: float = 1.0) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.refresh().status not in TERMINAL:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still {self.status} after {timeout} s")
            time.sleep(poll)
        return self

    def cancel(self) -> Job:
        self.data = self.client._request("POST", f"/v1/jobs/{self.id}/cancel").json()
        return self

    def report(self) -> dict[str, Any]:
        return self.client._request("GET", f"/v1/jobs/{self.id}/artifacts/report.json").json()

    def download(self, path: str | os.PathLike[str], artifact: str = "model.onnx") -> Path:
        dest = Path(path)
        tmp = dest.with_name(f".{dest.name}.partial")
        try:
            with self.client._http.stream("GET", f"/v1/jobs/{self.id}/artifacts/{artifact}") as r:
                if r.status_code >= 400:
                    r.read()
                    raise _error(r)
                with open(tmp, "wb") as f:
                    for chunk in r.iter_bytes():
                        f.write(chunk)
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)  # a broken download leaves nothing behind
        return dest


class _Models:
    def __init__(self, client: Client) -> None:
        self.client = client

    def upload(self, path: str | os.PathLike[str], *, arch: str | None = None,
               num_classes: int | None = None) -> dict[str, Any]:
        data = {k: str(v) for k, v in (("arch", arch), ("num_classes", num_classes)) if v is not None}
        with open(path, "rb") as f:
            return self.client._request("POST", "/v1/models", files={"file": (Path(path).name, f)}, data=data).json()

    def get(self, model_id: str) -> dict[str, Any]:
        return self.client._request("GET", f"/v1/models/{model_id}").json()


class _Datasets:
    def __init__(self, client: Client) -> None:
        self.client = client

    def upload(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        with open(path, "rb") as f:
            return self.client._request("POST", "/v1/datasets", files={"file": (Path(path).name, f)}).json()


class _Jobs:
    def __init__(self, client: Client) -> None:
        self.client = client

    def create(self, model: str | dict[str, Any], spec: PruneSpec | dict[str, Any] | None = None, *,
               webhook_url: str | None = None, webhook_events: list[str] | None = None,
               idempotency_key: str | None = None) -> Job:
        checked = spec if isinstance(spec, PruneSpec) else PruneSpec.model_validate(spec or {})
        body = {"model_id": model if isinstance(model, str) else model["id"],
                "spec": checked.model_dump(mode="json", exclude_defaults=True), "webhook_url": webhook_url,
                "webhook_events": webhook_events}
        r = self.client._request("POST", "/v1/jobs", json=body,
                                 headers={"Idempotency-Key": idempotency_key or str(uuid.uuid4())})
        return Job(self.client, r.json())

    def get(self, job_id: str) -> Job:
        return Job(self.client, self.client._request("GET", f"/v1/jobs/{job_id}").json())

    def list(self, status: str | None = None, limit: int = 50) -> Iterator[Job]:
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": limit, **({"status": status} if status else {}),
                                      **({"cursor": cursor} if cursor else {})}
            page = self.client._request("GET", "/v1/jobs", params=params).json()
            for item in page["data"]:
                yield Job(self.client, item)
            cursor = page.get("next_cursor")
            if not cursor:
                return


class Client:
    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 300,
                 retries: int = 5) -> None:
        self.base_url, key = resolve(base_url, api_key)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self.retries = retries
        self.models = _Models(self)
        self.datasets = _Datasets(self)
        self.jobs = _Jobs(self)

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.retries + 1):
            r = self._http.request(method, url, **kwargs)
            if r.status_code in (429, 503) and attempt < self.retries:
                retry_after = r.headers.get("Retry-After", "")
                time.sleep(float(retry_after) if retry_after.replace(".", "", 1).isdigit() else min(2**attempt, 30))
                for f in (kwargs.get("files") or {}).values():
                    if hasattr(f[1], "seek"):
                        f[1].seek(0)
                continue
            if r.status_code >= 400:
                raise _error(r)
            return r
        raise AssertionError("unreachable")

    def webhook_secret(self) -> str:
        """The tenant's `whsec_` secret, for `secateurs.client.webhooks.verify` on the receiving end."""
        return str(self._request("GET", "/v1/webhooks/secret").json()["secret"])

    def ready(self) -> dict[str, Any]:
        """`/readyz` once, without retries: raises APIError (503) when a dependency is down."""
        r = self._http.get("/readyz", timeout=10)
        if r.status_code >= 400:
            raise _error(r)
        return dict(r.json())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The `data` of each complete Server-Sent Event; an event is complete at its blank line."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield json.loads("\n".join(data))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


def _error(r: httpx.Response) -> APIError:
    try:
        body = r.json()
    except ValueError:
        body = {"detail": r.text[:300]}
    return APIError(r.status_code, body if isinstance(body, dict) else {"detail": str(body)})
