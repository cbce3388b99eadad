"""A worker alive but starved past its lease: the embedded stack's worker, running a job, is stopped (SIGSTOP: no CPU
at all, so neither the engine nor its heartbeat thread runs) for longer than the lease, until the sweeper has taken
the job back, then let go on (SIGCONT). The attempt was never dead: it finds the job still queued for it, takes it
back (event `resumed`) and finishes it, as attempt 1 with one set of artifacts; the broker's second delivery then
finds nothing to do. Before, the job was run again from the start as attempt 2, and three such losses failed it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import Stack, stop

from .servers import upload_resnet20, wait_for
from .test_worker_killed import LEASE, LONG, _children, _tree, leased_stack


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _stop_outside_a_write(pids: list[int], database: Path) -> None:
    """SIGSTOP the processes at a moment when none holds the embedded SQLite database's write lock. SQLite has one
    writer for the whole database: a worker frozen inside a write (a progress row, a heartbeat: well under 1% of its
    time) would block every writer, the API's sweeper too, for as long as it stays frozen, a limit of the embedded
    stack rather than of leases (on PostgreSQL it holds one row, which the sweeper skips). A starved process, unlike a
    stopped one, gets through its write at its next slice of CPU."""
    import sqlite3

    probe = sqlite3.connect(database, timeout=0.2, isolation_level=None)
    try:
        for _ in range(50):
            _signal_all(pids, signal.SIGSTOP)
            try:
                probe.execute("BEGIN IMMEDIATE")
                probe.execute("ROLLBACK")
                return
            except sqlite3.OperationalError:  # stopped inside a write: let it finish and stop it again
                _signal_all(pids, signal.SIGCONT)
                time.sleep(0.05)
        raise AssertionError("the worker held the database's write lock at each of 50 stops")
    finally:
        probe.close()


def starve_mid_job(stack: Stack, c: httpx.Client, model_id: str, timeout: float = 300) -> tuple[dict, dict[str, float], str]:
    """Submit a long job, stop (SIGSTOP) every process of the stack's worker once the job is under way, keep them
    stopped until the sweeper has taken the job back and 2 s more, let them go on (SIGCONT) and wait for the job to
    end. Checks that it succeeded as attempt 1, resumed by the attempt that was stopped, with one set of artifacts
    and no second run; returns the job, the seconds (stopped, taken back after, finished after SIGCONT) and the
    `resumed` event's message."""
    stopped: list[int] = []
    try:
        job_id = c.post("/v1/jobs", json={"model_id": model_id, "spec": LONG}).json()["id"]
        wait_for(lambda: (j := c.get(f"/v1/jobs/{job_id}").json())["status"] == "running"
                 and j["stage"] not in ("starting", "import"), timeout, f"job {job_id} to be under way")
        stopped = [p for worker in _children(stack.procs[0].pid) for p in _tree(worker)]
        assert stopped, "the embedded stack has no worker process"
        _stop_outside_a_write(stopped, Path(stack.env["SECATEURS_HOME"]) / "secateurs.db")
        stopped_at = time.monotonic()
        wait_for(lambda: c.get(f"/v1/jobs/{job_id}").json()["status"] == "queued", LEASE + 60,
                 "the sweeper to take the job back")
        taken_back = time.monotonic() - stopped_at
        time.sleep(2)  # stopped a while past the take-back too
        _signal_all(stopped, signal.SIGCONT)
        stopped, stopped_for, continued_at = [], time.monotonic() - stopped_at, time.monotonic()
        job = wait_for(lambda: (j := c.get(f"/v1/jobs/{job_id}").json())["status"]
                       in ("succeeded", "failed", "cancelled") and j, timeout, f"job {job_id} to end")
    finally:
        _signal_all(stopped, signal.SIGCONT)  # never leave a stopped process behind
    finished_in = time.monotonic() - continued_at
    assert job["status"] == "succeeded", job
    events = c.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    kinds = [e["type"] for e in events]
    assert job["attempts"] == 1, f"the live attempt was replaced: {kinds}"
    assert [k for k in kinds if k in ("running", "requeued", "resumed", "superseded", "succeeded")] == [
        "running", "requeued", "resumed", "succeeded"], kinds
    resumed = next(e for e in events if e["type"] == "resumed")
    assert "attempt 1 was alive after all" in resumed["message"], resumed
    for name in ("model.onnx", "report.json"):
        assert c.get(f"/v1/jobs/{job_id}/artifacts/{name}").status_code == 200
    home = Path(stack.env["SECATEURS_HOME"])
    files = [p for p in (home / "storage").rglob("*") if p.is_file() and f"/jobs/{job_id}/" in str(p)]
    assert sorted(str(p.relative_to(home / "storage")).split("/", 3)[3] for p in files) == [
        "1/model.onnx", "1/report.json"], files
    # the requeue's message, delivered once the worker is free, must not run the job again
    time.sleep(3)
    after = c.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    assert len(after) == len(events) and c.get(f"/v1/jobs/{job_id}").json()["attempts"] == 1
    return job, {"stopped": stopped_for, "taken_back": taken_back, "finished": finished_in}, resumed["message"]


@pytest.mark.slow
def test_a_worker_stopped_past_its_lease_takes_its_job_back_and_finishes_it_once(tmp_path: Path):
    stack = leased_stack(tmp_path)
    try:
        with stack.client() as c:
            job, took, resumed = starve_mid_job(stack, c, upload_resnet20(c))
            print(f"worker stopped {took['stopped']:.1f} s (lease {LEASE} s); taken back {took['taken_back']:.1f} s "
                  f"after the stop; after SIGCONT the attempt resumed and the job succeeded in {took['finished']:.1f} "
                  f"s, attempts = {job['attempts']}; resumed: {resumed}")
    finally:
        stop(stack.procs)
