"""Upload -> job -> SSE -> download, over real HTTP, on each stack; the file is checked in ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from secateurs.pruning.onnx_tools import stats

from tests.conftest import shared

from .conftest import Stack


def sse_events(client, job_id: str, last_event_id: str | None = None, timeout: float = 300) -> list[dict]:
    headers = {"Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    events, current = [], {}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("id: "):
                current["id"] = int(line[4:])
            elif line.startswith("event: "):
                current["event"] = line[7:]
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
            elif line == "" and current:
                events.append(current)
                current = {}
    return events


def run_flow(stack: Stack) -> dict:
    with stack.client() as c:
        weights = shared("resnet20_cifar10.safetensors")
        r = c.post("/v1/models", files={"file": (weights.name, weights.read_bytes())}, data={"arch": "resnet20_cifar"})
        assert r.status_code == 201, r.text
        model = r.json()
        assert model["format"] == "safetensors" and model["input_shape"] == [1, 3, 32, 32]
        r = c.post("/v1/jobs", json={"model_id": model["id"], "spec": {"signal": "l2_norm", "target": {"macs": 0.6},
                                                                       "measure": {"repeats": 5}}})
        assert r.status_code == 201, r.text
        job = r.json()
        assert job["status"] == "queued"
        events = sse_events(c, job["id"])
        kinds = [e["event"] for e in events]
        assert kinds[0] == "queued" and "running" in kinds and kinds[-1] == "succeeded", kinds
        ids = [e["id"] for e in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        stages = {e["data"]["stage"] for e in events}
        assert {"analyse", "score", "plan", "export", "verify"} <= stages
        # resume from the middle: only later events come back
        tail = sse_events(c, job["id"], last_event_id=str(ids[len(ids) // 2]))
        assert [e["id"] for e in tail] == ids[len(ids) // 2 + 1:]
        job = c.get(f"/v1/jobs/{job['id']}").json()
        assert job["status"] == "succeeded" and job["progress"] == 1.0
        onnx_bytes = c.get(job["artifacts"]["model.onnx"]).content
        report = c.get(job["artifacts"]["report.json"]).json()
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    for batch in (1, 4):
        out = sess.run(None, {"input": np.zeros((batch, 3, 32, 32), np.float32)})[0]
        assert out.shape == (batch, 10)
    assert report["macs_after"] == stats(onnx_bytes, [1, 3, 32, 32]).macs
    assert report["macs_after"] <= 0.6 * report["macs_before"]
    assert job["metrics"]["macs_after"] == report["macs_after"]
    return report


@pytest.mark.slow
def test_flow_on_the_embedded_stack(embedded):
    run_flow(embedded)


@pytest.mark.slow
def test_flow_on_postgresql_and_redis_with_separate_processes(production):
    run_flow(production)


@pytest.mark.slow
def test_flow_with_storage_on_s3(s3_stack):
    import boto3

    stack, endpoint = s3_stack
    run_flow(stack)
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=endpoint).list_objects_v2(
        Bucket="secateurs-test").get("Contents", [])]
    assert any(k.startswith("artifacts/") and k.endswith("/model.onnx") for k in keys), keys
    assert any("/models/" in k for k in keys)
