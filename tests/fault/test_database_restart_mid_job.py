"""PostgreSQL restarted twice (`pg_ctl restart -m fast`, then `-m immediate`) while one job runs in a real worker (a
throwaway cluster and Redis of the test's own): the job still ends `succeeded` with exactly one set of artifacts, in
storage and in the database. Whichever way the design gets it there (its progress writes fail and are skipped, its
lease expires and a new attempt runs it, or it rides the restarts out) is printed with the time it took, not
asserted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import create_key, stop

from .servers import PostgresCluster, RedisServer, start_api, start_worker, upload_resnet20, wait_for

# eight rounds and long latency measurements: a job still under way seconds after its first round
LONG = {"target": {"macs": 0.4}, "schedule": {"steps": 8}, "measure": {"repeats": 400}}


def _job(c: httpx.Client, job_id: str) -> dict | None:
    r = c.get(f"/v1/jobs/{job_id}")  # 503 while the database is down
    return r.json() if r.status_code == 200 else None


def _under_way(c: httpx.Client, job_id: str) -> bool:
    """Running and past its first stage, so that the restart lands in the middle of its work."""
    job = _job(c, job_id)
    return bool(job and job["status"] == "running" and job["stage"] not in ("starting", "import"))


def _artifact_rows(pg: PostgresCluster, job_id: str) -> list[tuple[str, str]]:
    import psycopg

    with psycopg.connect(f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres") as conn:
        return conn.execute("SELECT name, storage_key FROM artifacts WHERE job_id = %s ORDER BY name",
                            (job_id,)).fetchall()


@contextmanager
def postgres_stack(home: Path, **settings: str) -> Iterator[tuple[PostgresCluster, httpx.Client]]:
    """A PostgreSQL cluster and a Redis of the test's own, `secateurs api` and a solo `secateurs worker` on them with
    the given SECATEURS_* settings, and a client with a new tenant's key; all stopped and removed afterwards."""
    pg, redis = PostgresCluster(), RedisServer(home)
    procs = []
    try:
        pg.start()
        redis.start()
        api, url, env = start_api(home, SECATEURS_DATABASE_URL=pg.url, SECATEURS_BROKER_URL=redis.url, **settings)
        procs.append(api)
        procs.append(start_worker(home, env))
        key = create_key(env, "tenant-a")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            yield pg, c
    finally:
        stop(procs)
        pg.close()
        redis.close()


def succeeded_once(pg: PostgresCluster, c: httpx.Client, home: Path, job_id: str) -> list[str]:
    """Checks that the job ended with one set of artifacts, in storage and in the database, nothing else kept, and one
    `succeeded` event; returns its event types."""
    rows = _artifact_rows(pg, job_id)
    assert [name for name, _ in rows] == ["model.onnx", "report.json"], rows
    stored = sorted(str(p.relative_to(home / "storage")) for p in (home / "storage").rglob("*")
                    if p.is_file() and f"/jobs/{job_id}/" in str(p))
    assert stored == sorted(key for _, key in rows), (stored, rows)  # nothing else kept
    for name in ("model.onnx", "report.json"):
        assert c.get(f"/v1/jobs/{job_id}/artifacts/{name}").status_code == 200
    kinds = [e["type"] for e in c.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]]
    assert kinds.count("succeeded") == 1, kinds
    return kinds


def met_the_database_down(home: Path) -> int:
    """How many times the worker skipped a report, a check or a beat, or tried its final commit again, for want of
    the database."""
    log = (home / "worker.log").read_text()
    return sum(log.count(what) for what in ("progress not recorded", "could not read its row", "heartbeat for job",
                                            "to record attempt"))


@pytest.mark.slow
def test_a_job_running_while_postgresql_restarts_succeeds_with_one_set_of_artifacts(tmp_path: Path):
    with postgres_stack(tmp_path, SECATEURS_JOB_LEASE_SECONDS="10", SECATEURS_SWEEP_INTERVAL_SECONDS="1") as (pg, c):
        job_id = c.post("/v1/jobs", json={"model_id": upload_resnet20(c), "spec": LONG}).json()["id"]
        wait_for(lambda: _under_way(c, job_id), 300, f"job {job_id} to be under way")
        t0, took = time.monotonic(), {}
        for mode in ("fast", "immediate"):  # one after the other, in the same run of the job
            began = time.monotonic()
            pg.restart(mode)
            took[mode] = time.monotonic() - began
            after = wait_for(lambda: _job(c, job_id), 60, "the API to answer again")
            assert after["status"] == "running", f"the job ended before the -m {mode} restart was over: {after}"
        job = wait_for(lambda: (j := _job(c, job_id)) and j["status"] in ("succeeded", "failed", "cancelled")
                       and j, 300, f"job {job_id} to finish")
        finished_in = time.monotonic() - t0
        assert job["status"] == "succeeded", job
        kinds = succeeded_once(pg, c, tmp_path, job_id)
        print(f"restarts took {took['fast']:.1f} s (-m fast) and {took['immediate']:.1f} s (-m immediate); the job "
              f"succeeded {finished_in:.1f} s after the first began, attempts = {job['attempts']}, requeued "
              f"{kinds.count('requeued')} times; its worker met the database down {met_the_database_down(tmp_path)} "
              "times (skipped reports, checks and beats)")
