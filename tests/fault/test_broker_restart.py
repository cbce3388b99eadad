"""Redis (the broker) killed with -9 and restarted empty while jobs wait in its queue: the database is the
source of truth, so the API's sweeper hands the lost jobs to the broker again and every one of them runs,
once. A job submitted while the broker is down is accepted and runs too; one cancelled meanwhile never runs."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.api.conftest import create_key, stop

from .servers import RedisServer, start_api, start_worker, upload_resnet20, wait_for

SPEC = {"signal": "l2_norm", "target": {"macs": 0.6}, "measure": {"repeats": 5}}
LEASE = 4


def _status(c: httpx.Client, job_id: str) -> dict:
    return c.get(f"/v1/jobs/{job_id}").json()


@pytest.mark.slow
def test_jobs_queued_in_a_broker_that_restarted_empty_are_handed_to_it_again(tmp_path):
    redis = RedisServer(tmp_path)
    redis.start()
    procs = []
    try:
        api, url, env = start_api(tmp_path, SECATEURS_BROKER_URL=redis.url, SECATEURS_JOB_LEASE_SECONDS=str(LEASE),
                                  SECATEURS_SWEEP_INTERVAL_SECONDS="1")
        procs.append(api)
        key = create_key(env, "tenant-a")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            body = {"model_id": upload_resnet20(c), "spec": SPEC}
            # no worker yet: both jobs wait as messages in Redis
            waiting = [c.post("/v1/jobs", json=body).json()["id"] for _ in range(3)]
            assert redis.client().llen("secateurs") == 3

            redis.kill()  # and every message with it
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
            restarted_at = time.monotonic()

            expected = [*waiting, during_outage]
            finished = wait_for(lambda: all(_status(c, j)["status"] in ("succeeded", "failed") for j in expected)
                                and [_status(c, j) for j in expected], 240, "the lost jobs to finish")
            recovered = time.monotonic() - restarted_at
            for job in finished:
                assert job["status"] == "succeeded", job
                assert job["attempts"] == 1, job
                kinds = [e["type"] for e in c.get(f"/v1/jobs/{job['id']}/events").json()["data"]]
                assert kinds.count("running") == 1 and kinds.count("succeeded") == 1, kinds
                assert kinds.count("redelivered") >= 1, kinds
                assert c.get(job["artifacts"]["model.onnx"]).status_code == 200
            gone = _status(c, cancelled)
            assert gone["status"] == "cancelled" and gone["attempts"] == 0
            assert [e["type"] for e in c.get(f"/v1/jobs/{cancelled}/events").json()["data"]] == ["queued", "cancelled"]
            assert c.get("/readyz").status_code == 200
            print(f"{len(expected)}/{len(expected)} lost jobs ran once; all done {recovered:.1f} s after the restart")
    finally:
        stop(procs)
        redis.close()
