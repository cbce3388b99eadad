"""The async SDK: `Client`'s surface for asyncio, over httpx.AsyncClient.

    from secateurs import AsyncClient
    async with AsyncClient("http://127.0.0.1:8000", api_key="sk_...") as client:
        model = await client.models.upload("model.onnx")
        job = await client.jobs.create(model, {"signal": "l2_norm", "target": {"macs": 0.5}})
        async for event in job.events():
            print(event["type"], event.get("progress"))
        await job.download("pruned.onnx")

What to send, when to retry and how to resume a stream is decided in client/protocol.py, the same for both.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from secateurs.pruning.spec import PruneSpec

from . import protocol
from .protocol import TERMINAL


class AsyncJob(protocol.JobData["AsyncClient"]):
    """A job on the service, for asyncio: `data` is its latest JSON object; `await refresh()` fetches it again."""

    async def refresh(self) -> AsyncJob:
        self.data = (await self.client._request("GET", f"/v1/jobs/{self.id}")).json()
        return self

    async def events(self, follow: bool = True, *, reconnect_for: float = 120.0) -> AsyncIterator[dict[str, Any]]:
        """As `Job.events`: live events to the terminal one, a dropped stream resumed from the last event seen."""
        resume = protocol.Resume(follow, reconnect_for)
        while True:
            sse, headers = resume.open()
            try:
                async with self.client._stream(f"/v1/jobs/{self.id}/events", headers, protocol.STREAM_TIMEOUT) as r:
                    resume.opened()
                    async for line in r.aiter_lines():
                        if (event := sse.feed(line)) is not None:
                            yield event
                            if resume.seen(event):
                                return
            except httpx.TransportError:
                if not resume.dropped(time.monotonic()):
                    raise
                await asyncio.sleep(protocol.PAUSE)
                continue
            step = resume.closed()
            if step == "stop" or (step == "check" and (await self.refresh()).status in TERMINAL):
                return
            if step == "check":
                await asyncio.sleep(protocol.PAUSE)

    def history(self, page_size: int = 500) -> AsyncIterator[dict[str, Any]]:
        """The events so far, oldest first (the JSON pages, no stream)."""
        return self.client._pages(f"/v1/jobs/{self.id}/events", page_size)

    async def wait(self, timeout: float | None = None, poll: float = 1.0) -> AsyncJob:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (await self.refresh()).status not in TERMINAL:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still {self.status} after {timeout} s")
            await asyncio.sleep(poll)
        return self

    async def cancel(self) -> AsyncJob:
        self.data = (await self.client._request("POST", f"/v1/jobs/{self.id}/cancel")).json()
        return self

    async def delete(self) -> None:
        """Delete the job with its events and files, once it has finished (409 APIError while queued or running)."""
        await self.client.jobs.delete(self.id)

    async def report(self) -> dict[str, Any]:
        return (await self.client._request("GET", f"/v1/jobs/{self.id}/artifacts/report.json")).json()

    async def download(self, path: str | os.PathLike[str], artifact: str = "model.onnx") -> Path:
        with protocol.partial_file(path) as (dest, f):
            async with self.client._stream(f"/v1/jobs/{self.id}/artifacts/{artifact}") as r:
                async for chunk in r.aiter_bytes():
                    f.write(chunk)
        return dest


class _Models:
    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def upload(self, path: str | os.PathLike[str], *, arch: str | None = None,
                     num_classes: int | None = None) -> dict[str, Any]:
        with protocol.upload(path, arch=arch, num_classes=num_classes) as form:
            return (await self.client._request("POST", "/v1/models", **form)).json()

    async def get(self, model_id: str) -> dict[str, Any]:
        return (await self.client._request("GET", f"/v1/models/{model_id}")).json()

    async def delete(self, model: str | dict[str, Any]) -> None:
        """Delete the model and its file (409 APIError while a queued or running job uses it)."""
        await self.client._request("DELETE", f"/v1/models/{protocol.object_id(model)}")


class _Datasets:
    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def upload(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        with protocol.upload(path) as form:
            return (await self.client._request("POST", "/v1/datasets", **form)).json()

    async def get(self, dataset_id: str) -> dict[str, Any]:
        return (await self.client._request("GET", f"/v1/datasets/{dataset_id}")).json()

    async def delete(self, dataset: str | dict[str, Any]) -> None:
        """Delete the dataset and its file (409 APIError while a queued or running job uses it)."""
        await self.client._request("DELETE", f"/v1/datasets/{protocol.object_id(dataset)}")


class _Jobs:
    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def create(self, model: str | dict[str, Any], spec: PruneSpec | dict[str, Any] | None = None, *,
                     webhook_url: str | None = None, webhook_events: list[str] | None = None,
                     idempotency_key: str | None = None) -> AsyncJob:
        request = protocol.create_job(model, spec, webhook_url=webhook_url, webhook_events=webhook_events,
                                      idempotency_key=idempotency_key)
        return AsyncJob(self.client, (await self.client._request("POST", "/v1/jobs", **request)).json())

    async def get(self, job_id: str) -> AsyncJob:
        return AsyncJob(self.client, (await self.client._request("GET", f"/v1/jobs/{job_id}")).json())

    async def list(self, status: str | None = None, limit: int = 50) -> AsyncIterator[AsyncJob]:
        async for item in self.client._pages("/v1/jobs", limit, status=status):
            yield AsyncJob(self.client, item)

    async def delete(self, job: str | AsyncJob) -> None:
        """Delete a finished job with its events and files (409 APIError while queued or running: cancel it first)."""
        await self.client._request("DELETE", f"/v1/jobs/{job if isinstance(job, str) else job.id}")


class AsyncClient(protocol.ClientBase[httpx.AsyncClient]):
    http = httpx.AsyncClient
    parts = (_Models, _Datasets, _Jobs)
    models: _Models
    datasets: _Datasets
    jobs: _Jobs

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while (delay := protocol.retry_delay(r := await self._http.request(method, url, **kwargs), attempt,
                                             self.retries)) is not None:
            await asyncio.sleep(delay)
            protocol.rewind(kwargs)
            attempt += 1
        if r.status_code >= 400:
            raise protocol.error(r)
        return r

    async def _pages(self, url: str, limit: int, **filters: Any) -> AsyncIterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            page = (await self._request("GET", url, params=protocol.page_params(limit, cursor, **filters))).json()
            for item in page["data"]:
                yield item
            if not (cursor := page.get("next_cursor")):
                return

    @asynccontextmanager
    async def _stream(self, url: str, headers: dict[str, str] | None = None,
                      timeout: httpx.Timeout | None = None) -> AsyncIterator[httpx.Response]:
        """A streamed GET; a problem answer raised as APIError."""
        async with self._http.stream("GET", url, headers=headers, **({"timeout": timeout} if timeout else {})) as r:
            if r.status_code >= 400:
                await r.aread()
                raise protocol.error(r)
            yield r

    async def webhook_secret(self) -> str:
        return str((await self._request("GET", "/v1/webhooks/secret")).json()["secret"])

    async def ready(self) -> dict[str, Any]:
        """`/readyz` once, without retries: raises APIError (503) when a dependency is down."""
        r = await self._http.get("/readyz", timeout=10)
        if r.status_code >= 400:
            raise protocol.error(r)
        return dict(r.json())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
