"""Webhooks end to end: a job on the PostgreSQL + Redis stack (API and worker processes) calls a local
receiver, which verifies every delivery with the secret the SDK fetched (issue: client and webhooks)."""

from __future__ import annotations

import time

from secateurs import Client

from tests.conftest import webhook_receiver


def test_a_job_on_the_running_service_calls_a_receiver_that_verifies_every_delivery(production, tmp_path):
    """PostgreSQL + Redis stack, API and worker processes: the receiver knows only the secret the SDK
    fetched, and gets the job's events, signed, ending with job.succeeded carrying the report's figures."""
    import numpy as np
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    path = tmp_path / "hooked.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 16, 16), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})
    secret: list[str] = []
    server, url, verified, refused = webhook_receiver(secret)
    try:
        with Client(production.url, production.key) as client:
            secret.append(client.webhook_secret())
            model = client.models.upload(path)
            job = client.jobs.create(model["id"], {"signal": "l1_norm", "target": {"macs": 0.6}}, webhook_url=url)
            assert job.wait(timeout=120).status == "succeeded"
        deadline = time.monotonic() + 30
        while not any(e["type"] == "job.succeeded" for e in verified):
            assert time.monotonic() < deadline, f"no job.succeeded delivery; got {[e['type'] for e in verified]}"
            time.sleep(0.2)
    finally:
        server.shutdown()
    assert refused == []
    kinds = [e["type"] for e in verified]
    assert "job.running" in kinds and "job.progress" in kinds
    done = next(e for e in verified if e["type"] == "job.succeeded")["data"]
    assert done["id"] == job.id and done["status"] == "succeeded"
    assert np.isclose(done["metrics"]["macs_kept"], job.data["metrics"]["macs_kept"]) and done["metrics"]["macs_kept"] <= 0.6
