"""`AsyncClient`: the sync SDK's surface for asyncio, against the real embedded stack (through a proxy that
drops the event stream part-way), and both SDKs' retries against a service that answers 429 and 503."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest
from pydantic import ValidationError
from secateurs import AsyncClient, Client
from secateurs.client import APIError

FAST = {"measure": {"repeats": 3}}


@pytest.mark.slow
def test_async_sdk_uploads_runs_follows_a_dropped_stream_and_downloads(tiny_onnx, calib_npz, tenant_key,
                                                                       cutting_proxy, tmp_path):
    async def scenario() -> tuple[list[dict], list[dict], dict]:
        async with AsyncClient(cutting_proxy.url, api_key=tenant_key) as client:
            await client.ready()
            model = await client.models.upload(tiny_onnx)
            data = await client.datasets.upload(calib_npz)
            job = await client.jobs.create(model, {"signal": "activation_mean", "target": {"macs": 0.6},
                                                   "calibration": {"dataset_id": data["id"]}, **FAST})
            live = [event async for event in job.events()]
            assert (await job.wait(timeout=60)).status == "succeeded"
            await job.download(tmp_path / "pruned.onnx")
            listed = [j.id async for j in client.jobs.list(limit=2)]
            assert job.id in listed and (await client.jobs.get(job.id)).status == "succeeded"
            history, report = [e async for e in job.history(page_size=3)], await job.report()
            await job.delete()  # finished: its events and files go; then nothing holds the dataset
            await client.datasets.delete(data)
            for gone in (client.jobs.get(job.id), client.datasets.get(data["id"]), client.jobs.delete(job.id)):
                with pytest.raises(APIError) as e:
                    await gone
                assert e.value.status == 404
            return live, history, report, model

    live, history, report, model = asyncio.run(scenario())
    with Client(cutting_proxy.url, api_key=tenant_key) as sync:  # the sync SDK's delete, on what is left
        sync.models.delete(model)
        with pytest.raises(APIError) as e:
            sync.models.get(model["id"])
        assert e.value.status == 404
    assert [e["id"] for e in live] == [e["id"] for e in history], "an event was lost or repeated"
    assert live[0]["type"] == "queued" and live[-1]["type"] == "succeeded"
    assert cutting_proxy.cut == 1 and cutting_proxy.streams == 2, "the stream was not cut and reopened"
    assert report["macs_after"] <= 0.6 * report["macs_before"]
    sess = ort.InferenceSession(str(tmp_path / "pruned.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((1, 3, 32, 32), np.float32)})[0].shape == (1, 10)


def test_async_sdk_refuses_a_bad_spec_and_raises_problems(embedded):
    async def scenario() -> None:
        async with AsyncClient("http://127.0.0.1:9", api_key="sk_unused") as client:  # nothing listens there
            with pytest.raises(ValidationError):
                await client.jobs.create("mdl_x", {"signal": "nonsense"})
        async with AsyncClient(embedded.url, api_key="sk_wrong") as client:
            with pytest.raises(APIError) as e:
                await client.jobs.get("job_x")
            assert e.value.status == 401

    asyncio.run(scenario())


class Busy(http.server.BaseHTTPRequestHandler):
    """A service that answers each POST first 429, then 503 (each with Retry-After), then succeeds."""

    seen: list[tuple[float, str, str | None, int]] = []  # (time, path, Idempotency-Key, body bytes)

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Busy.seen.append((time.monotonic(), self.path, self.headers.get("Idempotency-Key"), len(body)))
        tries = sum(1 for s in Busy.seen if s[1] == self.path)
        status = {1: 429, 2: 503}.get(tries, 201)
        answer = {"id": "job_1", "status": "queued"} if status == 201 else {"title": "busy", "status": status}
        data = json.dumps(answer).encode()
        self.send_response(status)
        if status != 201:
            self.send_header("Retry-After", "0.3")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_429_and_503_are_retried_after_retry_after_with_one_idempotency_key(kind, tiny_onnx):
    Busy.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        if kind == "sync":
            with Client(url, api_key="sk_x") as client:
                client.models.upload(tiny_onnx)
                job = client.jobs.create("mdl_1", {"target": {"macs": 0.5}})
        else:
            async def scenario():  # type: ignore[no-untyped-def]
                async with AsyncClient(url, api_key="sk_x") as client:
                    await client.models.upload(tiny_onnx)
                    return await client.jobs.create("mdl_1", {"target": {"macs": 0.5}})

            job = asyncio.run(scenario())
    finally:
        server.shutdown()
    assert job.id == "job_1"
    uploads = [s for s in Busy.seen if s[1] == "/v1/models"]
    creates = [s for s in Busy.seen if s[1] == "/v1/jobs"]
    assert len(uploads) == 3 and len(creates) == 3
    assert len({s[3] for s in uploads}) == 1, "a retried upload sent a different body (file not rewound)"
    assert len({s[2] for s in creates}) == 1 and creates[0][2], "each create carries one idempotency key"
    for attempts in (uploads, creates):
        gaps = [b[0] - a[0] for a, b in zip(attempts, attempts[1:], strict=False)]
        assert all(0.28 <= g < 0.95 for g in gaps), gaps  # Retry-After's 0.3 s, not the backoff's 1 s and 2 s
