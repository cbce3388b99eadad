"""The Python SDK: a typed client over httpx for pipelines that call the service.

    from secateurs import Client
    client = Client("http://127.0.0.1:8000", api_key="sk_...")
    model = client.models.upload("model.onnx")
    job = client.jobs.create(model, {"signal": "l2_norm", "target": {"macs": 0.5}})
    job.wait()
    job.download("pruned.onnx")

Specs are validated on the client with the same pydantic model the engine uses, so a bad spec fails
before any upload. Creates carry an idempotency key; 429 and 503 are retried honouring Retry-After.
`AsyncClient` (client/aio.py) is the same for asyncio; both decide everything in client/protocol.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from secateurs.pruning.spec import PruneSpec

from . import protocol
from .protocol import TERMINAL, APIError

__all__ = ["TERMINAL", "APIError", "Client", "Job"]


class Job(protocol.JobData["Client"]):
    """A job on the service: `data` is its latest JSON object; `refresh()` fetches it again."""

    def refresh(self) -> Job:
        self.data = self.client._request("GET", f"/v1/jobs/{self.id}").json()
        return self

    def events(self, follow: bool = True, *, reconnect_for: float = 120.0) -> Iterator[dict[str, Any]]:
        """Events as they happen (Server-Sent Events), oldest first, ending after the job's terminal event.

        A dropped connection, or a stream that ends before the terminal event, is reopened with
        `Last-Event-ID`, so every event comes exactly once; a partly received event is dropped and read
        again. Raises the transport error when the first connection fails, after `reconnect_for` seconds
        without a connection, or (with `follow=False`) on the first drop."""
        resume = protocol.Resume(follow, reconnect_for)
        while True:
            sse, headers = resume.open()
            try:
                with self.client._stream(f"/v1/jobs/{self.id}/events", headers, protocol.STREAM_TIMEOUT) as r:
                    resume.opened()
                    for line in r.iter_lines():
                        if (event := sse.feed(line)) is not None:
                            yield event
                            if resume.seen(event):
                                return
            except httpx.TransportError:
                if not resume.dropped(time.monotonic()):
                    raise
                time.sleep(protocol.PAUSE)
                continue
            step = resume.closed()
            if step == "stop" or (step == "check" and self.refresh().status in TERMINAL):
                return
            if step == "check":
                time.sleep(protocol.PAUSE)

    def history(self, page_size: int = 500) -> Iterator[dict[str, Any]]:
        """The events so far, oldest first (the JSON pages, no stream)."""
        yield from self.client._pages(f"/v1/jobs/{self.id}/events", page_size)

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

    def delete(self) -> None:
        """Delete the job with its events and files, once it has finished (409 APIError while queued or running)."""
        self.client.jobs.delete(self.id)

    def report(self) -> dict[str, Any]:
        return self.client._request("GET", f"/v1/jobs/{self.id}/artifacts/report.json").json()

    def download(self, path: str | os.PathLike[str], artifact: str = "model.onnx") -> Path:
        with protocol.partial_file(path) as (dest, f), \
                self.client._stream(f"/v1/jobs/{self.id}/artifacts/{artifact}") as r:
            for chunk in r.iter_bytes():
                f.write(chunk)
        return dest


class _Models:
    def __init__(self, client: Client) -> None:
        self.client = client

    def upload(self, path: str | os.PathLike[str], *, arch: str | None = None,
               num_classes: int | None = None) -> dict[str, Any]:
        with protocol.upload(path, arch=arch, num_classes=num_classes) as form:
            return self.client._request("POST", "/v1/models", **form).json()

    def get(self, model_id: str) -> dict[str, Any]:
        return self.client._request("GET", f"/v1/models/{model_id}").json()

    def delete(self, model: str | dict[str, Any]) -> None:
        """Delete the model and its file (409 APIError while a queued or running job uses it)."""
        self.client._request("DELETE", f"/v1/models/{protocol.object_id(model)}")


class _Datasets:
    def __init__(self, client: Client) -> None:
        self.client = client

    def upload(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        with protocol.upload(path) as form:
            return self.client._request("POST", "/v1/datasets", **form).json()

    def get(self, dataset_id: str) -> dict[str, Any]:
        return self.client._request("GET", f"/v1/datasets/{dataset_id}").json()

    def delete(self, dataset: str | dict[str, Any]) -> None:
        """Delete the dataset and its file (409 APIError while a queued or running job uses it)."""
        self.client._request("DELETE", f"/v1/datasets/{protocol.object_id(dataset)}")


class _Jobs:
    def __init__(self, client: Client) -> None:
        self.client = client

    def create(self, model: str | dict[str, Any], spec: PruneSpec | dict[str, Any] | None = None, *,
               webhook_url: str | None = None, webhook_events: list[str] | None = None,
               idempotency_key: str | None = None) -> Job:
        request = protocol.create_job(model, spec, webhook_url=webhook_url, webhook_events=webhook_events,
                                      idempotency_key=idempotency_key)
        return Job(self.client, self.client._request("POST", "/v1/jobs", **request).json())

    def get(self, job_id: str) -> Job:
        return Job(self.client, self.client._request("GET", f"/v1/jobs/{job_id}").json())

    def list(self, status: str | None = None, limit: int = 50) -> Iterator[Job]:
        for item in self.client._pages("/v1/jobs", limit, status=status):
            yield Job(self.client, item)

    def delete(self, job: str | Job) -> None:
        """Delete a finished job with its events and files (409 APIError while queued or running: cancel it first)."""
        self.client._request("DELETE", f"/v1/jobs/{job if isinstance(job, str) else job.id}")


class Client(protocol.ClientBase[httpx.Client]):
    http = httpx.Client
    parts = (_Models, _Datasets, _Jobs)
    models: _Models
    datasets: _Datasets
    jobs: _Jobs

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while (delay := protocol.retry_delay(r := self._http.request(method, url, **kwargs), attempt,
                                             self.retries)) is not None:
            time.sleep(delay)
            protocol.rewind(kwargs)
            attempt += 1
        if r.status_code >= 400:
            raise protocol.error(r)
        return r

    def _pages(self, url: str, limit: int, **filters: Any) -> Iterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            page = self._request("GET", url, params=protocol.page_params(limit, cursor, **filters)).json()
            yield from page["data"]
            if not (cursor := page.get("next_cursor")):
                return

    @contextmanager
    def _stream(self, url: str, headers: dict[str, str] | None = None,
                timeout: httpx.Timeout | None = None) -> Iterator[httpx.Response]:
        """A streamed GET; a problem answer raised as APIError."""
        with self._http.stream("GET", url, headers=headers, **({"timeout": timeout} if timeout else {})) as r:
            if r.status_code >= 400:
                r.read()
                raise protocol.error(r)
            yield r

    def webhook_secret(self) -> str:
        """The tenant's `whsec_` secret, for `secateurs.client.webhooks.verify` on the receiving end."""
        return str(self._request("GET", "/v1/webhooks/secret").json()["secret"])

    def ready(self) -> dict[str, Any]:
        """`/readyz` once, without retries: raises APIError (503) when a dependency is down."""
        r = self._http.get("/readyz", timeout=10)
        if r.status_code >= 400:
            raise protocol.error(r)
        return dict(r.json())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
