"""`GET /v1/events`: one stream of every job of the tenant (what the dashboard's job list follows), over
real HTTP on the embedded stack: events carry their job id, start from now, resume by id, and never show
another tenant's jobs."""

from __future__ import annotations

import json

import httpx

from tests.conftest import shared

from .conftest import Stack


def _events(response: httpx.Response, until: callable) -> list[dict]:  # type: ignore[valid-type]
    seen: list[dict] = []
    try:
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if until(seen[-1]):
                    break
    except httpx.ReadTimeout:
        pass
    return seen


def test_the_tenant_stream_carries_every_job_resumes_and_stays_in_its_tenant(embedded: Stack):
    other_key = embedded.new_key("events-other")
    sse = {"Accept": "text/event-stream"}
    with embedded.client() as a, embedded.client(other_key) as b:
        weights = shared("resnet20_cifar10.safetensors")
        model = a.post("/v1/models", files={"file": (weights.name, weights.read_bytes())},
                       data={"arch": "resnet20_cifar"}).json()
        with a.stream("GET", "/v1/events", headers=sse) as mine, \
                b.stream("GET", "/v1/events", headers=sse, timeout=httpx.Timeout(30, read=3)) as theirs:
            assert mine.headers["content-type"].startswith("text/event-stream")
            job = a.post("/v1/jobs", json={"model_id": model["id"], "spec": {"target": {"macs": 0.9}}}).json()
            a.post(f"/v1/jobs/{job['id']}/cancel")
            got = _events(mine, lambda e: e["job_id"] == job["id"] and e["type"] in ("cancelled", "cancel_requested"))
            leaked = _events(theirs, lambda e: True)
        ours = [e for e in got if e["job_id"] == job["id"]]
        assert ours and ours[0]["type"] == "queued", got
        assert not [e for e in leaked if e["job_id"] == job["id"]], leaked
        # resume: after an event id (header or query), the stream starts with the next event
        first = ours[0]["id"]
        with a.stream("GET", "/v1/events", headers={**sse, "Last-Event-ID": str(first - 1)}) as again:
            assert _events(again, lambda e: True)[0]["id"] == first
        with a.stream("GET", f"/v1/events?after={first}", headers=sse) as again:
            assert _events(again, lambda e: True)[0]["id"] > first
        assert a.get("/v1/events", headers={**sse, "Authorization": "Bearer sk_wrong"}).status_code == 401
