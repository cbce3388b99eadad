"""Cancel over HTTP on the embedded stack (a real worker): a running job stops at its next step and ends
`cancelled` with no artifact; a job queued behind it in the broker is cancelled there and never starts, even
though the worker later receives its message."""

from __future__ import annotations

import time

import pytest

from tests.conftest import shared

from .conftest import Stack

LONG = {"target": {"macs": 0.4}, "schedule": {"steps": 8}, "measure": {"repeats": 400}}
TERMINAL = ("succeeded", "failed", "cancelled")


def _wait(c, job_id: str, statuses: tuple[str, ...], timeout: float = 120) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


@pytest.mark.slow
def test_cancel_stops_a_running_job_and_a_queued_one_never_starts(embedded: Stack):
    with embedded.client() as c:
        w = shared("resnet20_cifar10.safetensors")
        model = c.post("/v1/models", files={"file": (w.name, w.read_bytes())}, data={"arch": "resnet20_cifar"}).json()
        running = c.post("/v1/jobs", json={"model_id": model["id"], "spec": LONG}).json()
        _wait(c, running["id"], ("running",))
        queued = c.post("/v1/jobs", json={"model_id": model["id"]}).json()  # behind it: the worker runs one at a time
        r = c.post(f"/v1/jobs/{queued['id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"

        t0 = time.monotonic()
        assert c.post(f"/v1/jobs/{running['id']}/cancel").json()["status"] == "running"  # asked, stopping
        job = _wait(c, running["id"], TERMINAL, timeout=60)
        stopped_in = time.monotonic() - t0
        assert job["status"] == "cancelled" and job["error"] is None, job
        assert stopped_in < 30, f"the running job took {stopped_in:.1f} s to stop"
        kinds = [e["type"] for e in c.get(f"/v1/jobs/{running['id']}/events", params={"limit": 1000}).json()["data"]]
        assert kinds[-1] == "cancelled" and "cancel_requested" in kinds and "succeeded" not in kinds
        for name in ("model.onnx", "report.json"):
            assert c.get(f"/v1/jobs/{running['id']}/artifacts/{name}").status_code == 404

        # the queued job's message reaches the now idle worker, which must find nothing to run: a job
        # submitted after it runs to the end, so by then that message has been handled
        after = c.post("/v1/jobs", json={"model_id": model["id"], "spec": {"measure": {"repeats": 5}}}).json()
        assert _wait(c, after["id"], TERMINAL)["status"] == "succeeded"
        never = c.get(f"/v1/jobs/{queued['id']}").json()
        assert never["status"] == "cancelled" and never["attempts"] == 0 and never["started_at"] is None
        assert [e["type"] for e in c.get(f"/v1/jobs/{queued['id']}/events").json()["data"]] == ["queued", "cancelled"]
