"""Status polls under load, over real HTTP: a burst of concurrent polls on the embedded stack all answer,
while the embedded database's write lock is held and an event stream is open; on PostgreSQL the poll (read on
the event loop's own connections) returns what the ORM routes return and stays scoped to its tenant; a request
head past 64 KiB is refused with 431 by the HTTP server itself. Throughput is measured by
bench/service_load.py, not here."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
import time
from pathlib import Path

import httpx
from secateurs.db.settings import Settings

from .conftest import Stack

BURST = 200


def _settings(stack: Stack) -> Settings:
    return Settings(**{k[len("SECATEURS_"):].lower(): v for k, v in stack.env.items() if k.startswith("SECATEURS_")})


def _succeeded_job(stack: Stack, tenant: str) -> str:
    """A finished job of `tenant` written straight into the stack's database: polling needs a row, not a run."""
    from secateurs.db.models import Job, Model, Tenant, now
    from secateurs.db.session import session_scope
    from sqlalchemy import select

    with session_scope(_settings(stack)) as s:
        tenant_id = s.execute(select(Tenant.id).where(Tenant.name == tenant)).scalar_one()
        model = Model(tenant_id=tenant_id, filename="m.onnx", format="onnx", arch=None, num_classes=10,
                      input_shape={"shape": [1, 3, 32, 32]}, size_bytes=1, sha256="0" * 64, storage_key="-")
        s.add(model)
        s.flush()
        job = Job(tenant_id=tenant_id, model_id=model.id, spec={"signal": "l1_norm", "target": {"macs": 0.7}},
                  status="succeeded", stage="done", progress=1.0, attempts=1, started_at=now(), finished_at=now(),
                  metrics={"macs_before": 40_813_312, "macs_after": 28_569_318, "latency_ms_before": 1.25,
                           "per_layer": [{"name": f"layer{i}", "kept": 48, "of": 64} for i in range(19)]})
        s.add(job)
        s.flush()
        return job.id


async def _burst(url: str, key: str, job_id: str, n: int) -> tuple[list[int], list[dict], float]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, limits=limits,
                                 timeout=60) as c:
        t0 = time.monotonic()
        answers = await asyncio.gather(*(c.get(f"/v1/jobs/{job_id}") for _ in range(n)))
        took = time.monotonic() - t0
    return [r.status_code for r in answers], [r.json() for r in answers], took


def test_a_burst_of_concurrent_polls_all_answer_on_the_embedded_stack(embedded: Stack):
    key = embedded.new_key("poll-burst")  # a fresh key: every poll of the burst misses the key cache at once
    job_id = _succeeded_job(embedded, "poll-burst")
    home = Path(embedded.env["SECATEURS_HOME"])
    with embedded.client(key) as c, c.stream("GET", f"/v1/jobs/{job_id}/events",
                                             headers={"Accept": "text/event-stream"}) as events:
        assert events.status_code == 200
        # a writer holds the database's write lock through the burst (as the worker does while it commits)
        writer = sqlite3.connect(home / "secateurs.db", timeout=30)
        writer.execute("BEGIN IMMEDIATE")
        release = threading.Timer(3.0, writer.rollback)
        release.start()
        try:
            codes, bodies, took = asyncio.run(_burst(embedded.url, key, job_id, BURST))
        finally:
            release.join()
            writer.close()
    assert codes == [200] * BURST, sorted(set(codes))
    assert all(b["id"] == job_id and b["status"] == "succeeded" for b in bodies)
    assert took < 30, f"{BURST} concurrent polls took {took:.1f} s"
    with embedded.client(key) as c:  # and it still serves
        assert c.get(f"/v1/jobs/{job_id}").status_code == 200


def test_polls_on_postgresql_match_the_orm_routes_and_stay_in_their_tenant(production: Stack):
    job_id = _succeeded_job(production, "tenant-a")
    other = production.new_key("poll-other")
    with production.client() as c, production.client(other) as o:
        polled = c.get(f"/v1/jobs/{job_id}")
        assert polled.status_code == 200 and polled.headers["content-type"] == "application/json"
        listed = next(j for j in c.get("/v1/jobs", params={"limit": 200}).json()["data"] if j["id"] == job_id)
        assert polled.json() == listed  # the event loop's read returns what the session's does
        r = o.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
        assert o.get(f"/v1/jobs/{job_id}/events").status_code == 404
        codes, _, _ = asyncio.run(_burst(production.url, production.key, job_id, 100))
        assert codes == [200] * 100
        bad = httpx.get(f"{production.url}/v1/jobs/{job_id}", headers={"Authorization": "Bearer sk_nope"})
        assert bad.status_code == 401 and bad.headers["content-type"].startswith("application/problem+json")


def test_a_request_head_past_64_kib_is_refused_by_the_server(embedded: Stack):
    host, port = embedded.url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        # 80 KiB of one header and then nothing more: the server has read all of it when it answers
        sock.sendall(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (80 * 1024))
        answer = b""
        while block := sock.recv(65536):
            answer += block
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), head[:80]
    assert b"application/problem+json" in head and b'"status": 431' in body
    assert httpx.get(f"{embedded.url}/healthz").status_code == 200
