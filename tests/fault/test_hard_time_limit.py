"""A job stuck where the soft time limit cannot reach it, on a real `secateurs worker` (Celery's prefork pool): its
pool process is stopped (SIGSTOP, as a process blocked in C code or in the kernel never runs the soft limit's
signal handler, nor its heartbeat or progress). At SECATEURS_JOB_TIME_LIMIT the pool kills it, the job ends
`failed` saying so (not `running` until its lease runs out, then run again into the same wall), the pool starts a
new process, and that process runs the next job to success."""

from __future__ import annotations

import os
import signal
import time

import pytest

from .servers import prefork_worker_and_api, upload_resnet20, wait_for
from .test_time_limit import SLOW, _finished, _seconds, next_job_succeeds
from .test_worker_killed import _children

SOFT, HARD = 10, 20  # the soft limit leaves the test time to stop the process first, on a busy machine too


@pytest.mark.slow
def test_a_job_stuck_past_the_hard_time_limit_is_killed_failed_and_its_process_replaced(tmp_path):
    limits = {"SECATEURS_JOB_SOFT_TIME_LIMIT": str(SOFT), "SECATEURS_JOB_TIME_LIMIT": str(HARD)}
    with prefork_worker_and_api(tmp_path, **limits) as (worker, c):
        stopped: int | None = None
        try:
            stuck = c.post("/v1/jobs", json={"model_id": upload_resnet20(c), "spec": SLOW})
            assert stuck.status_code == 201, stuck.text
            job_id = stuck.json()["id"]
            # a pool process imports the engine before it takes a job: minutes on a loaded 2-core machine
            wait_for(lambda: c.get(f"/v1/jobs/{job_id}").json()["status"] != "queued", 300,
                     "the worker to claim the job")
            (pool,) = _children(worker.pid)
            os.kill(pool, signal.SIGSTOP)
            stopped, stopped_at = pool, time.monotonic()
            running = c.get(f"/v1/jobs/{job_id}").json()
            assert running["status"] == "running", f"the soft limit was not outrun: {running}"

            failed = _finished(c, job_id)
            seen_after = time.monotonic() - stopped_at
            assert failed["status"] == "failed", failed
            assert failed["error"] == {"type": "resource-limit", "message": (
                f"the job ran past its hard time limit ({HARD} s) and its process was killed: "
                f"it was stuck where the soft limit ({SOFT} s) could not stop it")}, failed
            ran = _seconds(failed)
            # the pool times the task from its start, a moment before the job row says it started
            assert HARD - 1 <= ran < HARD + 15, f"failed {ran:.1f} s after it started (hard limit {HARD} s)"
            kinds = [e["type"] for e in c.get(f"/v1/jobs/{job_id}/events").json()["data"]]
            assert kinds[-1] == "failed" and kinds.count("failed") == 1 and "requeued" not in kinds, kinds
            assert failed["attempts"] == 1
            # killed right after it is reported (SIGTERM, then SIGKILL a tenth of a second later), and reaped
            wait_for(lambda: not os.path.exists(f"/proc/{pool}"), 30, "the stuck process to be gone")

            done = next_job_succeeds(c)
            replaced = _children(worker.pid)
            assert worker.poll() is None and len(replaced) == 1 and replaced != [pool], replaced
            print(f"failed {ran:.1f} s after it started (hard limit {HARD} s, {seen_after:.1f} s after the process "
                  f"was stopped); the new pool process (pid {replaced[0]}) ran the next job to success in "
                  f"{_seconds(done):.1f} s")
        finally:
            if stopped is not None and os.path.exists(f"/proc/{stopped}"):
                os.kill(stopped, signal.SIGKILL)  # never leave a stopped process behind the worker's shutdown
