"""Tenants: every route that takes an id answers 404 to another tenant (walked from the OpenAPI document, so
a new route is checked without being listed here), lists and filters show nothing of another tenant, and a
tenant's queued + running jobs are capped (429 problem+json with Retry-After)."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from secateurs.db.settings import Settings

from tests.conftest import shared

from .conftest import redis_db
from .test_api import _is_problem, _key, _npz

CAP = 3


@pytest.fixture(scope="module")
def app_settings(tmp_path_factory):
    with redis_db() as index:
        yield Settings(home=tmp_path_factory.mktemp("tenants"), broker_url=f"redis://127.0.0.1:6379/{index}",
                       max_active_jobs_per_tenant=CAP)


@pytest.fixture(scope="module")
def client(app_settings):
    from secateurs.api.app import create_app

    with TestClient(create_app(app_settings)) as c:
        yield c


@pytest.fixture(scope="module")
def keys(app_settings):
    return {name: {"Authorization": f"Bearer {_key(app_settings, name)}"} for name in ("alice", "bob")}


@pytest.fixture(scope="module")
def alices(client, keys):
    """One of each of alice's objects, the job finished with its artifacts recorded."""
    import numpy as np
    from secateurs.db.models import Artifact, Job, Model
    from secateurs.db.session import sessions

    alice = keys["alice"]
    w = shared("resnet20_cifar10.safetensors").read_bytes()
    model = client.post("/v1/models", headers=alice, files={"file": ("m.safetensors", w)},
                        data={"arch": "resnet20_cifar"}).json()
    x = np.zeros((4, 3, 32, 32), np.float32)
    dataset = client.post("/v1/datasets", headers=alice, files={"file": ("d.npz", _npz(x=x))}).json()
    job = client.post("/v1/jobs", headers=alice, json={"model_id": model["id"]}).json()
    with sessions(client.app.state.settings)() as s:  # as a worker leaves a succeeded job
        s.get(Job, job["id"]).status = "succeeded"
        stored = s.get(Model, model["id"])  # any stored file will do as the artifact's content
        for name in ("model.onnx", "report.json"):
            s.add(Artifact(job_id=job["id"], name=name, storage_key=stored.storage_key, size_bytes=stored.size_bytes,
                           sha256=stored.sha256))
        s.commit()
    return {"model_id": model["id"], "dataset_id": dataset["id"], "job_id": job["id"], "name": "model.onnx"}


def test_every_route_with_an_id_answers_404_to_another_tenant(client, keys, alices):
    walked, deletes = [], []
    for template, operations in client.get("/openapi.json").json()["paths"].items():
        params = re.findall(r"{(\w+)}", template)
        if not params:
            continue
        path = template.format(**{p: alices[p] for p in params})  # a KeyError here: a new kind of id to add
        for method in operations:
            if method == "delete":  # bob's is refused and alice's object is still there
                _is_problem(client.request(method, path, headers=keys["bob"]), 404)
                assert client.get(path, headers=keys["alice"]).status_code == 200, path
                deletes.append(path)
            else:
                assert client.request(method, path, headers=keys["alice"]).status_code in (200, 201), (method, path)
                _is_problem(client.request(method, path, headers=keys["bob"]), 404)
            walked.append(f"{method.upper()} {template}")
    assert {"GET /v1/jobs/{job_id}", "POST /v1/jobs/{job_id}/cancel", "GET /v1/jobs/{job_id}/events",
            "GET /v1/jobs/{job_id}/artifacts/{name}", "GET /v1/models/{model_id}",
            "GET /v1/datasets/{dataset_id}", "DELETE /v1/jobs/{job_id}", "DELETE /v1/models/{model_id}",
            "DELETE /v1/datasets/{dataset_id}"} <= set(walked)
    assert len(deletes) == 3  # alice's own deletes: tests/api/test_delete.py (her objects serve the tests below)


def test_lists_filters_and_the_event_stream_show_nothing_of_another_tenant(client, keys, alices, app_settings):
    from secateurs.api.routes.events import _tenant_events
    from secateurs.db.models import ApiKey
    from secateurs.db.session import sessions
    from sqlalchemy import select

    bob = keys["bob"]
    for path, params in (("/v1/jobs", {}), ("/v1/jobs", {"model_id": alices["model_id"]}),
                         ("/v1/jobs", {"status": "succeeded"}), ("/v1/models", {}), ("/v1/datasets", {})):
        assert client.get(path, headers=bob, params=params).json()["data"] == [], (path, params)
    _is_problem(client.post("/v1/jobs", headers=bob, json={"model_id": alices["model_id"]}), 422)
    with sessions(app_settings)() as s:
        bob_tenant = s.scalars(select(ApiKey.tenant_id).where(ApiKey.prefix == bob["Authorization"][7:17])).one()
    assert _tenant_events(app_settings, bob_tenant, 0, 1000) == []  # the tenant-wide SSE stream's query
    with sessions(app_settings)() as s:
        alice_tenant = s.scalars(select(ApiKey.tenant_id).where(ApiKey.prefix == keys["alice"]["Authorization"][7:17])).one()
    assert {e.job_id for e in _tenant_events(app_settings, alice_tenant, 0, 1000)} >= {alices["job_id"]}


def test_active_jobs_are_capped_per_tenant_with_429_and_retry_after(client, keys, alices):
    alice, bob = keys["alice"], keys["bob"]
    mid = alices["model_id"]
    made = [client.post("/v1/jobs", headers=alice, json={"model_id": mid}) for _ in range(CAP)]
    assert [r.status_code for r in made] == [201] * CAP
    refused = client.post("/v1/jobs", headers=alice, json={"model_id": mid})
    body = _is_problem(refused, 429)
    assert int(refused.headers["Retry-After"]) > 0 and str(CAP) in body["detail"]
    # an Idempotency-Key replay of an accepted job is not a new job
    h = {**alice, "Idempotency-Key": "cap-1"}
    client.post(f"/v1/jobs/{made[0].json()['id']}/cancel", headers=alice)
    first = client.post("/v1/jobs", headers=h, json={"model_id": mid})
    assert first.status_code == 201 and client.post("/v1/jobs", headers=h, json={"model_id": mid}).status_code == 201
    _is_problem(client.post("/v1/jobs", headers=alice, json={"model_id": mid}), 429)
    # another tenant is not held back by alice's jobs
    own = client.post("/v1/models", headers=bob, files={"file": ("m.safetensors", shared(
        "resnet20_cifar10.safetensors").read_bytes())}, data={"arch": "resnet20_cifar"}).json()
    assert client.post("/v1/jobs", headers=bob, json={"model_id": own["id"]}).status_code == 201
