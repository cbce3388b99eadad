"""A worker SIGKILLed mid-job (as the OOM killer does): the job's lease expires, the job is queued again,
a new worker finishes it, and it ends succeeded with exactly one set of artifacts. `scripts/fault_stats.py` runs
the same fault many times for a distribution."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import Stack, start_embedded, stop

from .servers import upload_resnet20, wait_for

LEASE = 15
# many rounds and long latency measurements: a job that runs for a while
LONG = {"target": {"macs": 0.4}, "schedule": {"steps": 8}, "measure": {"repeats": 400}}


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _tree(pid: int) -> list[int]:
    out = [pid]
    for child in _children(pid):
        out += _tree(child)
    return out


def leased_stack(home: Path) -> Stack:
    """`secateurs up` with a short lease and sweep, so that a lost attempt is taken back in seconds."""
    return start_embedded(home, SECATEURS_JOB_LEASE_SECONDS=str(LEASE), SECATEURS_SWEEP_INTERVAL_SECONDS="1")


def kill_mid_job(stack: Stack, c: httpx.Client, model_id: str, timeout: float = 300) -> tuple[dict, float, list[str]]:
    """Submit a long job, SIGKILL every process of the stack's worker (its whole tree) once the job runs, and wait
    for the job to end (`secateurs up` starts a new worker). Checks that it succeeded once, after a take-back,
    with one set of artifacts; returns the job, the seconds from the kill to its end, and its event types."""
    job_id = c.post("/v1/jobs", json={"model_id": model_id, "spec": LONG}).json()["id"]
    wait_for(lambda: c.get(f"/v1/jobs/{job_id}").json()["status"] == "running", 300, f"job {job_id} to run")
    time.sleep(1.0)
    workers = _children(stack.procs[0].pid)
    assert workers, "the embedded stack has no worker process"
    killed_at = time.monotonic()
    for pid in workers:
        for p in reversed(_tree(pid)):
            os.kill(p, signal.SIGKILL)
    job = wait_for(lambda: (j := c.get(f"/v1/jobs/{job_id}").json())["status"] in ("succeeded", "failed", "cancelled")
                   and j, timeout, f"job {job_id} to end")
    recovered_in = time.monotonic() - killed_at
    assert job["status"] == "succeeded", job
    events = c.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    kinds = [e["type"] for e in events]
    assert kinds.count("requeued") >= 1 and kinds.count("succeeded") == 1 and job["attempts"] >= 2, kinds
    assert c.get(job["artifacts"]["model.onnx"]).status_code == 200
    files = [p for p in (Path(stack.env["SECATEURS_HOME"]) / "storage").rglob("*") if p.is_file()
             and f"/jobs/{job_id}/" in str(p)]
    assert sorted(p.name for p in files) == ["model.onnx", "report.json"], files  # the killed attempt left none
    return job, recovered_in, kinds


@pytest.mark.slow
def test_killed_worker_job_is_taken_back_and_succeeds_once(tmp_path):
    stack = leased_stack(tmp_path)
    try:
        with stack.client() as c:
            job, recovered_in, kinds = kill_mid_job(stack, c, upload_resnet20(c))
            assert job["attempts"] == 2, "one attempt killed, one that finished"
            assert kinds.count("requeued") == 1 and kinds.count("running") == 2, kinds
            print(f"recovered {recovered_in:.1f} s after SIGKILL")
    finally:
        stop(stack.procs)
