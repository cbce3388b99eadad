"""PostgreSQL stopped for longer than the lease while a job runs in a real worker (a throwaway cluster and Redis of the
test's own), then started again. Meanwhile the API answers 503 problem+json. The attempt, alive all along, skips the
reports it cannot write; once the database is back it keeps its job (its heartbeat lands first, or the sweeper takes
the job back and the attempt resumes it, nobody having claimed it since), and the job ends `succeeded` exactly once,
as attempt 1, with one set of artifacts in the database and in storage."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .servers import upload_resnet20, wait_for
from .test_database_restart_mid_job import (
    LONG,
    _job,
    _under_way,
    met_the_database_down,
    postgres_stack,
    succeeded_once,
)

LEASE = 10
PROBLEM = "application/problem+json"


@pytest.mark.slow
def test_a_job_outlives_postgresql_down_past_its_lease_and_succeeds_once(tmp_path: Path):
    with postgres_stack(tmp_path, SECATEURS_JOB_LEASE_SECONDS=str(LEASE), SECATEURS_SWEEP_INTERVAL_SECONDS="1") as (
            pg, c):
        job_id = c.post("/v1/jobs", json={"model_id": upload_resnet20(c), "spec": LONG}).json()["id"]
        wait_for(lambda: _under_way(c, job_id), 300, f"job {job_id} to be under way")
        pg.stop("fast")
        down_at, answers = time.monotonic(), []
        while time.monotonic() - down_at < LEASE + 5:  # well past the lease
            t0 = time.monotonic()
            r = c.get(f"/v1/jobs/{job_id}")
            answers.append(time.monotonic() - t0)
            assert r.status_code == 503 and r.headers["content-type"].startswith(PROBLEM), (r.status_code, r.text)
            assert r.json()["status"] == 503 and "database" in r.json()["detail"] and r.headers["retry-after"]
            time.sleep(0.5)
        pg.start()
        down_for, back_at = time.monotonic() - down_at, time.monotonic()
        job = wait_for(lambda: (j := _job(c, job_id)) and j["status"] in ("succeeded", "failed", "cancelled")
                       and j, 300, f"job {job_id} to finish")
        finished_in = time.monotonic() - back_at
        assert job["status"] == "succeeded", job
        kinds = succeeded_once(pg, c, tmp_path, job_id)
        assert job["attempts"] == 1 and kinds.count("running") == 1, kinds
        assert kinds.count("requeued") == kinds.count("resumed") <= 1, kinds  # a take-back is always resumed
        print(f"PostgreSQL down {down_for:.1f} s (lease {LEASE} s): {len(answers)} x 503 problem+json in at most "
              f"{max(answers):.2f} s; the job succeeded {finished_in:.1f} s after it was back, attempts = "
              f"{job['attempts']}, requeued {kinds.count('requeued')} and resumed {kinds.count('resumed')} times; "
              f"its worker met the database down {met_the_database_down(tmp_path)} times")
