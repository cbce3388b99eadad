"""A worker SIGKILLed mid-job (as the OOM killer does): the job's lease expires, the job is queued again,
a new worker finishes it, and it ends succeeded with exactly one set of artifacts."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.api.conftest import start_embedded, stop
from tests.conftest import shared


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


@pytest.mark.slow
def test_killed_worker_job_is_taken_back_and_succeeds_once(tmp_path):
    stack = start_embedded(tmp_path, SECATEURS_JOB_LEASE_SECONDS="15", SECATEURS_SWEEP_INTERVAL_SECONDS="1")
    try:
        with stack.client() as c:
            w = shared("resnet20_cifar10.safetensors")
            model = c.post("/v1/models", files={"file": (w.name, w.read_bytes())}, data={"arch": "resnet20_cifar"}).json()
            # many rounds and long latency measurements: a job that runs for a while
            spec = {"target": {"macs": 0.4}, "schedule": {"steps": 8}, "measure": {"repeats": 400}}
            job = c.post("/v1/jobs", json={"model_id": model["id"], "spec": spec}).json()
            deadline = time.monotonic() + 120
            while c.get(f"/v1/jobs/{job['id']}").json()["status"] != "running":
                assert time.monotonic() < deadline
                time.sleep(0.2)
            time.sleep(1.0)
            up = stack.procs[0].pid
            workers = [p for p in _children(up)]
            assert workers, "the embedded stack has no worker process"
            killed_at = time.monotonic()
            for pid in workers:
                for p in reversed(_tree(pid)):
                    os.kill(p, signal.SIGKILL)
            deadline = time.monotonic() + 240
            while True:
                j = c.get(f"/v1/jobs/{job['id']}").json()
                if j["status"] in ("succeeded", "failed", "cancelled"):
                    break
                assert time.monotonic() < deadline, j
                time.sleep(0.5)
            recovered_in = time.monotonic() - killed_at
            assert j["status"] == "succeeded", j
            assert j["attempts"] == 2, "one attempt killed, one that finished"
            events = c.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
            kinds = [e["type"] for e in events]
            assert kinds.count("requeued") == 1 and kinds.count("succeeded") == 1 and kinds.count("running") == 2
            assert c.get(j["artifacts"]["model.onnx"]).status_code == 200
            print(f"recovered {recovered_in:.1f} s after SIGKILL")
    finally:
        stop(stack.procs)
