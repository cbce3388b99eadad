"""Deleting models, datasets and finished jobs (routes beyond SPEC.md's list: without them the tenant's storage limit
counted everything ever kept). A delete removes the stored files, gives the bytes back to the tenant's limit and
answers 204; whatever a queued or running job still needs answers 409 problem+json saying what to do. In-process
on SQLite with local storage, then a race of creates against a delete through an API process on PostgreSQL."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from secateurs.db.models import Artifact, Job, Tenant
from secateurs.db.quotas import charge_storage
from secateurs.db.session import sessions
from secateurs.db.settings import Settings

from tests.conftest import npz_bytes

from .test_api import _is_problem, _key
from .test_quotas import MODEL, _kept

DATA = npz_bytes(x=np.zeros((2, 3, 8, 8), np.float32))
ROOM = 2 * len(MODEL) + len(DATA) + 100  # two models and a dataset


@pytest.fixture
def app(tmp_path):
    settings = Settings(home=tmp_path, max_upload_bytes=1 << 20, max_storage_bytes_per_tenant=ROOM)
    from secateurs.api.app import create_app

    with TestClient(create_app(settings, enqueue=lambda _: None, ping_broker=lambda: None)) as c:
        yield c, settings, {"Authorization": f"Bearer {_key(settings, 'alice')}"}


def _stored(settings: Settings) -> int:
    """The bytes the tenants' storage limit counts (alice is the only tenant of these tests)."""
    with sessions(settings)() as s:
        return sum(t.stored_bytes for t in s.query(Tenant).all())


def _finish(settings: Settings, job_id: str, status: str, files: dict[str, bytes] | None = None) -> None:
    """What a worker leaves: the status, and for a success its artifacts stored and counted."""
    from secateurs.db.storage import open_storage

    storage = open_storage(settings.storage)
    with sessions(settings)() as s:
        job = s.get(Job, job_id)
        job.status = status
        for name, data in (files or {}).items():
            key = f"{job.tenant_id}/jobs/{job_id}/1/{name}"
            storage.put_bytes(key, data)
            s.add(Artifact(job_id=job_id, name=name, storage_key=key, size_bytes=len(data),
                           sha256=hashlib.sha256(data).hexdigest()))
            charge_storage(s, job.tenant_id, len(data), None)
        s.commit()


def test_deleting_a_model_and_a_dataset_frees_their_room_and_leaves_no_file(app):
    client, settings, alice = app
    models = [client.post("/v1/models", headers=alice, files={"file": ("m.onnx", MODEL)}) for _ in range(2)]
    data = client.post("/v1/datasets", headers=alice, files={"file": ("d.npz", DATA)})
    assert [r.status_code for r in (*models, data)] == [201] * 3
    _is_problem(client.post("/v1/models", headers=alice, files={"file": ("m.onnx", MODEL)}), 413)  # full
    assert len(_kept(settings.home)) == 3 and _stored(settings) == 2 * len(MODEL) + len(DATA)

    gone = models[0].json()["id"]
    r = client.delete(f"/v1/models/{gone}", headers=alice)
    assert r.status_code == 204 and r.content == b""
    _is_problem(client.get(f"/v1/models/{gone}", headers=alice), 404)
    _is_problem(client.delete(f"/v1/models/{gone}", headers=alice), 404)  # once only
    assert [m["id"] for m in client.get("/v1/models", headers=alice).json()["data"]] == [models[1].json()["id"]]
    assert len(_kept(settings.home)) == 2 and _stored(settings) == len(MODEL) + len(DATA)
    # the room it took is free again: the upload refused above now fits
    assert client.post("/v1/models", headers=alice, files={"file": ("m.onnx", MODEL)}).status_code == 201

    assert client.delete(f"/v1/datasets/{data.json()['id']}", headers=alice).status_code == 204
    _is_problem(client.get(f"/v1/datasets/{data.json()['id']}", headers=alice), 404)
    assert client.get("/v1/datasets", headers=alice).json()["data"] == []
    assert len(_kept(settings.home)) == 2 and _stored(settings) == 2 * len(MODEL)
    for m in client.get("/v1/models", headers=alice).json()["data"]:
        assert client.delete(f"/v1/models/{m['id']}", headers=alice).status_code == 204
    assert _kept(settings.home) == [] and _stored(settings) == 0
    # no empty folders left behind either
    assert not [p for p in (settings.home / "storage").rglob("*") if p.is_dir()]


def test_what_a_queued_or_running_job_needs_is_409_until_it_finishes(app):
    client, settings, alice = app
    model = client.post("/v1/models", headers=alice, files={"file": ("m.onnx", MODEL)}).json()["id"]
    data = client.post("/v1/datasets", headers=alice, files={"file": ("d.npz", DATA)}).json()["id"]
    spec = {"calibration": {"dataset_id": data}}
    job = client.post("/v1/jobs", headers=alice, json={"model_id": model, "spec": spec})
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]

    for status in ("queued", "running"):
        if status == "running":
            _finish(settings, job_id, "running")
        body = _is_problem(client.delete(f"/v1/jobs/{job_id}", headers=alice), 409)
        assert f"job {job_id} is {status}: cancel it first (POST /v1/jobs/{job_id}/cancel)" in body["detail"], body
        for kind, oid in (("model", model), ("dataset", data)):
            body = _is_problem(client.delete(f"/v1/{kind}s/{oid}", headers=alice), 409)
            assert body["jobs"] == [job_id] and f"used by job {job_id}, which is {status}" in body["detail"], body
            assert "cancel it" in body["detail"]
            assert client.get(f"/v1/{kind}s/{oid}", headers=alice).status_code == 200
    assert len(_kept(settings.home)) == 2  # nothing was removed by the refusals

    _finish(settings, job_id, "succeeded", {"model.onnx": b"pruned" * 100, "report.json": b"{}"})
    before = _stored(settings)
    # the model and the data go first: the finished job keeps naming them, as the record of what it pruned
    assert client.delete(f"/v1/models/{model}", headers=alice).status_code == 204
    assert client.delete(f"/v1/datasets/{data}", headers=alice).status_code == 204
    kept = client.get(f"/v1/jobs/{job_id}", headers=alice).json()
    assert kept["model_id"] == model and kept["spec"]["calibration"]["dataset_id"] == data
    assert client.get(f"/v1/jobs/{job_id}/artifacts/model.onnx", headers=alice).content == b"pruned" * 100
    assert _stored(settings) == before - len(MODEL) - len(DATA)
    # a new job on the deleted model is refused, not queued
    _is_problem(client.post("/v1/jobs", headers=alice, json={"model_id": model}), 422)

    assert client.delete(f"/v1/jobs/{job_id}", headers=alice).status_code == 204
    for path in ("", "/events", "/artifacts/model.onnx", "/artifacts/report.json"):
        _is_problem(client.get(f"/v1/jobs/{job_id}{path}", headers=alice), 404)
    _is_problem(client.delete(f"/v1/jobs/{job_id}", headers=alice), 404)
    assert job_id not in [j["id"] for j in client.get("/v1/jobs", headers=alice).json()["data"]]
    assert _kept(settings.home) == [] and _stored(settings) == 0


def test_a_failed_or_cancelled_job_is_deleted_with_its_events(app):
    client, settings, alice = app
    model = client.post("/v1/models", headers=alice, files={"file": ("m.onnx", MODEL)}).json()["id"]
    cancelled = client.post("/v1/jobs", headers=alice, json={"model_id": model}).json()["id"]
    assert client.post(f"/v1/jobs/{cancelled}/cancel", headers=alice).json()["status"] == "cancelled"
    failed = client.post("/v1/jobs", headers=alice, json={"model_id": model}).json()["id"]
    _finish(settings, failed, "failed")
    for job_id in (cancelled, failed):
        assert client.delete(f"/v1/jobs/{job_id}", headers=alice).status_code == 204
    with sessions(settings)() as s:
        from secateurs.db.models import JobEvent

        assert s.query(JobEvent).filter(JobEvent.job_id.in_([cancelled, failed])).count() == 0
        assert s.query(Job).count() == 0
    assert client.delete(f"/v1/models/{model}", headers=alice).status_code == 204  # no job left to hold it


def test_a_delete_racing_job_creates_never_leaves_a_queued_job_on_a_deleted_model(tmp_path, request):
    """Through an API process on PostgreSQL: creates and a delete of the same model sent at once. Either the
    delete wins (then every later create is 422) or a create does (then the delete is 409); never both."""
    import httpx

    from tests.fault.servers import start_api

    from .conftest import create_key, stop

    env = {"SECATEURS_DATABASE_URL": request.getfixturevalue("postgres_url"),
           "SECATEURS_MAX_ACTIVE_JOBS_PER_TENANT": "1000"}
    procs = []
    try:
        api, url, full = start_api(tmp_path, **env)  # its thread pool runs the requests side by side
        procs.append(api)
        key = create_key(full, "racer")
        outcomes = {"delete_won": 0, "create_won": 0}
        for _ in range(6):
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
                model = c.post("/v1/models", files={"file": ("m.onnx", MODEL)}).json()["id"]
            statuses: dict[str, list[int]] = {"create": [], "delete": []}
            start = threading.Barrier(5)

            def send(i: int, model: str = model, statuses: dict = statuses, start: threading.Barrier = start) -> None:
                with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
                    start.wait()
                    if i == 0:
                        statuses["delete"].append(c.delete(f"/v1/models/{model}").status_code)
                    else:
                        statuses["create"].append(c.post("/v1/jobs", json={"model_id": model}).status_code)

            threads = [threading.Thread(target=send, args=(i,)) for i in range(5)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            (deleted,) = statuses["delete"]
            assert deleted in (204, 409) and set(statuses["create"]) <= {201, 422}, statuses
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
                queued = c.get("/v1/jobs", params={"model_id": model, "limit": 100}).json()["data"]
                exists = c.get(f"/v1/models/{model}").status_code == 200
            if deleted == 204:
                assert not exists and queued == [] and set(statuses["create"]) == {422}, (statuses, queued)
                outcomes["delete_won"] += 1
            else:
                assert exists and queued and 201 in statuses["create"], (statuses, queued)
                outcomes["create_won"] += 1
        print(f"6 races of 4 creates against a delete: {outcomes}")
    finally:
        stop(procs)
