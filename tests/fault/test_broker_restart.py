"""Redis (the broker) killed with -9 and restarted empty while jobs wait in its queue: the database is the
source of truth, so the API's sweeper hands the lost jobs to the broker again and every one of them runs,
once. A job submitted while the broker is down is accepted and runs too; one cancelled meanwhile never runs.
`scripts/fault_stats.py` repeats the restart for a distribution."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import create_key, stop

from .servers import RedisServer, start_api, start_worker, upload_resnet20, wait_for

SPEC = {"signal": "l2_norm", "target": {"macs": 0.6}, "measure": {"repeats": 5}}
LEASE = 4


def _status(c: httpx.Client, job_id: str) -> dict:
    return c.get(f"/v1/jobs/{job_id}").json()


def lose_the_queue(c: httpx.Client, redis: RedisServer, body: dict, jobs: int = 3) -> list[str]:
    """`jobs` jobs queued as messages in Redis (no worker runs), then Redis killed with -9, and every message with it."""
    waiting = [c.post("/v1/jobs", json=body).json()["id"] for _ in range(jobs)]
    assert redis.client().llen("secateurs") == jobs
    redis.kill()
    return waiting


def ran_once(c: httpx.Client, expected: list[str], since: float, first_attempt: bool = True,
             timeout: float = 240) -> tuple[float, list[dict]]:
    """Wait for the jobs to end; each must have been redelivered and have succeeded once, on its first attempt
    unless `first_attempt` is off (a worker starved of CPU past the short lease loses its attempt to a new one).
    Returns the seconds from `since` to the last one's end, and the jobs."""
    finished = wait_for(lambda: all(_status(c, j)["status"] in ("succeeded", "failed") for j in expected)
                        and [_status(c, j) for j in expected], timeout, "the lost jobs to finish")
    recovered = time.monotonic() - since
    for job in finished:
        assert job["status"] == "succeeded", job
        kinds = [e["type"] for e in c.get(f"/v1/jobs/{job['id']}/events").json()["data"]]
        assert kinds.count("succeeded") == 1 and kinds.count("redelivered") >= 1, kinds
        if first_attempt:
            assert job["attempts"] == 1 and kinds.count("running") == 1, (job["attempts"], kinds)
        assert c.get(job["artifacts"]["model.onnx"]).status_code == 200
    return recovered, finished


def broker_api(home: Path, redis: RedisServer) -> tuple[subprocess.Popen, str, dict[str, str]]:
    """The API on `redis`, with a short lease and a sweep every second."""
    return start_api(home, SECATEURS_BROKER_URL=redis.url, SECATEURS_JOB_LEASE_SECONDS=str(LEASE),
                     SECATEURS_SWEEP_INTERVAL_SECONDS="1")


@pytest.mark.slow
def test_jobs_queued_in_a_broker_that_restarted_empty_are_handed_to_it_again(tmp_path):
    redis = RedisServer(tmp_path)
    redis.start()
    procs = []
    try:
        api, url, env = broker_api(tmp_path, redis)
        procs.append(api)
        key = create_key(env, "tenant-a")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            body = {"model_id": upload_resnet20(c), "spec": SPEC}
            waiting = lose_the_queue(c, redis, body)  # no worker yet: the jobs wait as messages in Redis
            t0 = time.monotonic()
            r = c.post("/v1/jobs", json=body)
            submit_seconds = time.monotonic() - t0
            assert r.status_code == 201 and r.json()["status"] == "queued", r.text
            assert submit_seconds < 10, f"submitting with the broker down took {submit_seconds:.1f} s"
            during_outage = r.json()["id"]
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["broker"].startswith("unavailable")

            redis.start()  # same port, empty
            assert redis.client().llen("secateurs") == 0
            cancelled = waiting.pop()
            assert c.post(f"/v1/jobs/{cancelled}/cancel").json()["status"] == "cancelled"
            procs.append(start_worker(tmp_path, env))
            expected = [*waiting, during_outage]
            recovered, _ = ran_once(c, expected, time.monotonic())
            gone = _status(c, cancelled)
            assert gone["status"] == "cancelled" and gone["attempts"] == 0
            assert [e["type"] for e in c.get(f"/v1/jobs/{cancelled}/events").json()["data"]] == ["queued", "cancelled"]
            assert c.get("/readyz").status_code == 200
            print(f"{len(expected)}/{len(expected)} lost jobs ran once; all done {recovered:.1f} s after the restart")
    finally:
        stop(procs)
        redis.close()
