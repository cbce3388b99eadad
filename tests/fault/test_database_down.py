"""PostgreSQL stopped, restarted and frozen under a running API (a throwaway cluster of the test's own): every
route that needs the database answers 503 problem+json with Retry-After, fast, never 500 and never a hang;
/healthz stays 200, /readyz says which dependency is down; the API recovers alone, with the data it had."""

from __future__ import annotations

import os
import signal
import time

import httpx
import numpy as np
import pytest

from tests.api.conftest import create_key, stop
from tests.conftest import npz_bytes

from .servers import PostgresCluster, RedisServer, start_api, wait_for

PROBLEM = "application/problem+json"


def _timed(c: httpx.Client, method: str, path: str, **kw) -> tuple[httpx.Response, float]:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    r = c.request(method, path, **kw)
    return r, time.monotonic() - t0


ROUTES = (("GET", "/v1/jobs", {}), ("POST", "/v1/jobs", {"json": {"model_id": "mdl_x"}}), ("GET", "/v1/models", {}),
          ("GET", "/v1/jobs/job_x", {}), ("GET", "/v1/webhooks/secret", {}))


def _assert_unavailable(c: httpx.Client, within: float, routes: int = len(ROUTES)) -> list[float]:
    took = []
    for method, path, kw in ROUTES[:routes]:
        r, seconds = _timed(c, method, path, **kw)
        assert r.status_code == 503, (path, r.status_code, r.text)
        assert r.headers["content-type"].startswith(PROBLEM) and r.headers.get("retry-after"), r.headers
        assert r.json()["status"] == 503 and "database" in r.json()["detail"]
        assert seconds < within, f"{method} {path} took {seconds:.1f} s"
        took.append(seconds)
    ready = c.get("/readyz")
    assert ready.status_code == 503 and ready.headers["content-type"].startswith(PROBLEM)
    assert ready.json()["checks"]["database"].startswith("unavailable") and ready.json()["checks"]["broker"] == "ok"
    assert c.get("/healthz").status_code == 200
    return took


def _freeze(pg: PostgresCluster) -> int:
    """Cut the API's connections, then stop the postmaster (SIGSTOP): the port still accepts TCP connections
    but nothing answers them, as with a hung or partitioned database."""
    import psycopg

    with psycopg.connect(f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'")
    pid = int((pg.data / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGSTOP)
    return pid


@pytest.mark.slow
def test_api_answers_503_while_postgresql_is_down_and_recovers_alone(tmp_path):
    pg = PostgresCluster()
    redis = RedisServer(tmp_path)
    pg.start()
    redis.start()
    procs, frozen = [], None
    try:
        api, url, env = start_api(tmp_path, SECATEURS_DATABASE_URL=pg.url, SECATEURS_BROKER_URL=redis.url)
        procs.append(api)
        key = create_key(env, "tenant-a")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            # a row written before the outage must still be there after it (a dataset is the cheapest upload)
            data = npz_bytes(x=np.zeros((2, 3, 8, 8), np.float32))
            r = c.post("/v1/datasets", files={"file": ("d.npz", data)})
            assert r.status_code == 201, r.text
            dataset_id = r.json()["id"]

            pg.stop("immediate")  # as a crash: no goodbye to the clients
            down = _assert_unavailable(c, within=5)
            pg.start()
            back = _recovers(c, dataset_id)

            pg.stop("fast")  # as an operator's restart
            _assert_unavailable(c, within=5)
            pg.start()
            _recovers(c, dataset_id)

            frozen = _freeze(pg)
            hung = _assert_unavailable(c, within=15, routes=2)  # each waits out the connect timeout
            os.kill(frozen, signal.SIGCONT)
            frozen = None
            _recovers(c, dataset_id)
            print(f"down: 503 in at most {max(down):.2f} s; frozen: 503 in at most {max(hung):.1f} s; "
                  f"recovered {back:.1f} s after the restart")
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGCONT)
        stop(procs)
        pg.close()
        redis.close()


def _recovers(c: httpx.Client, dataset_id: str) -> float:
    t0 = time.monotonic()
    wait_for(lambda: c.get("/v1/datasets").status_code == 200, 30, "the API to recover")
    assert [d["id"] for d in c.get("/v1/datasets").json()["data"]] == [dataset_id]
    assert c.get("/readyz").status_code == 200
    return time.monotonic() - t0
