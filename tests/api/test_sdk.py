"""The SDK against a real running service (the embedded stack)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from secateurs import Client
from secateurs.client import APIError

from tests.conftest import shared


@pytest.mark.slow
def test_sdk_uploads_runs_waits_and_downloads(embedded, tmp_path):
    with Client(embedded.url, api_key=embedded.key) as client:
        model = client.models.upload(shared("resnet20_cifar10.safetensors"), arch="resnet20_cifar")
        job = client.jobs.create(model, {"signal": "fpgm", "target": {"params": 0.6}, "measure": {"repeats": 3}})
        seen = [e["type"] for e in job.events()]
        assert seen[0] == "queued" and seen[-1] == "succeeded"
        assert job.wait(timeout=120).status == "succeeded"
        path = job.download(tmp_path / "pruned.onnx")
        assert path.stat().st_size > 0 and job.report()["params_kept"] <= 0.6
        assert job.id in [j.id for j in client.jobs.list()]


def test_sdk_refuses_a_bad_spec_before_any_request():
    client = Client("http://127.0.0.1:9", api_key="sk_unused")  # nothing listens there
    with pytest.raises(ValidationError):
        client.jobs.create("mdl_x", {"signal": "nonsense"})


@pytest.mark.slow
def test_sdk_raises_problems_as_api_errors(embedded):
    with Client(embedded.url, api_key="sk_wrong") as client, pytest.raises(APIError) as e:
        client.jobs.get("job_x")
    assert e.value.status == 401
