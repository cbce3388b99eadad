"""A job past its memory, time or stage limit fails saying which, with the stage, and the worker that ran it then runs
the next job to success: on the embedded stack and on PostgreSQL + Redis with separate API and worker."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import torchvision_onnx

from .conftest import Stack

QUICK = {"signal": "l2_norm", "target": {"macs": 0.6}, "measure": {"repeats": 3}}


def _finish(c: httpx.Client, job_id: str) -> dict:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish")


@pytest.mark.slow
@pytest.mark.parametrize("stack_name", ["embedded", "production"])
def test_past_its_limits_a_job_fails_saying_so_and_the_worker_runs_the_next(request, stack_name):
    stack: Stack = request.getfixturevalue(stack_name)
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.key}"}, timeout=60) as c:
        up = c.post("/v1/models", files={"file": ("r18.onnx", torchvision_onnx("resnet18", size=64))})
        assert up.status_code == 201, up.text
        model_id = up.json()["id"]
        jobs = {}
        for name, limits in (("memory", {"memory_gb": 0.05}), ("time", {"minutes": 0.0001}),
                             ("stage", {"stage_minutes": {"analyse": 0.0001}}), ("none", {})):
            r = c.post("/v1/jobs", json={"model_id": model_id, "spec": {**QUICK, "limits": limits}})
            assert r.status_code == 201, r.text
            jobs[name] = r.json()["id"]
        memory, past, stage, ok = (_finish(c, jobs[n]) for n in ("memory", "time", "stage", "none"))
    assert memory["status"] == "failed" and memory["error"]["type"] == "resource-limit", memory
    assert "needed more memory than the job's limit of 0.05 GiB" in memory["error"]["message"]
    assert memory["error"]["message"].startswith("stage "), memory["error"]
    assert past["status"] == "failed" and past["error"]["type"] == "resource-limit", past
    assert "ran past its limit of 0.0001 minutes (in stage" in past["error"]["message"]
    assert stage["status"] == "failed" and stage["error"]["type"] == "resource-limit", stage
    assert stage["error"]["message"].startswith("stage analyse ran past its limit of 0.0001 minutes: "), stage
    assert ok["status"] == "succeeded", ok
