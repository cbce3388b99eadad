"""Storage and the database failing around a file's write or delete, in-process on SQLite with local storage: never a
row naming a missing file; a file that no row names (its recording commit failed, or its delete did after the row
went) is deleted by the orphan sweep, which leaves alone what a row names and what an attempt may still record. The
same against a real S3 server that is stopped is tests/fault/test_storage_down.py."""

from __future__ import annotations

import os
import time

import pytest
from fastapi.testclient import TestClient
from secateurs.db.models import Job, JobEvent, Model, Tenant, new_id
from secateurs.db.orphans import sweep_orphans
from secateurs.db.session import sessions
from secateurs.db.settings import Settings
from secateurs.db.storage import StorageUnavailable, open_storage
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from .test_api import _is_problem, _key
from .test_quotas import MODEL


def _app(settings: Settings):  # type: ignore[no-untyped-def]
    from secateurs.api.app import create_app

    return TestClient(create_app(settings, enqueue=lambda _: None, ping_broker=lambda: None, queue_depth=lambda: 0))


@pytest.fixture
def app(tmp_path):
    settings = Settings(home=tmp_path)
    with _app(settings) as c:
        yield c, settings, {"Authorization": f"Bearer {_key(settings, 'alice')}"}


def _files(settings: Settings) -> list[str]:
    root = settings.home / "storage"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _named(settings: Settings) -> list[str]:
    with sessions(settings)() as s:
        return sorted(s.scalars(select(Model.storage_key)))


def test_an_upload_whose_commit_meets_the_database_down_answers_503_and_its_file_is_swept(app, monkeypatch):
    client, settings, alice = app
    kept = client.post("/v1/models", headers=alice, files={"file": ("m.onnx", MODEL)})
    assert kept.status_code == 201

    def database_gone(*_a, **_kw):  # type: ignore[no-untyped-def]
        raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr("secateurs.api.routes.models.charge_storage", database_gone)
    body = _is_problem(client.post("/v1/models", headers=alice, files={"file": ("m.onnx", MODEL)}), 503)
    assert "database" in body["detail"]
    monkeypatch.undo()
    # the commit's answer may be all that was lost: the file stays until a sweep finds no row naming it
    assert len(_files(settings)) == 2 and len(_named(settings)) == 1
    storage = open_storage(settings.storage)
    with sessions(settings)() as s:
        assert sweep_orphans(s, storage, grace_seconds=3600) == []  # younger than the grace: an upload may be under way
        (orphan,) = sweep_orphans(s, storage, grace_seconds=0)
    assert _files(settings) == _named(settings) and orphan not in _named(settings) and "/models/" in orphan
    assert client.get(f"/v1/models/{kept.json()['id']}", headers=alice).status_code == 200


def test_job_files_are_swept_once_their_attempt_can_no_longer_record_them(app):
    """Attempt 1 of a job left its files (its commit failed) and attempt 2 runs it: attempt 1's go, attempt 2's
    (not recorded yet) stay however old; once the job ends, unrecorded files of every attempt go."""
    _, settings, _ = app
    storage = open_storage(settings.storage)
    with sessions(settings)() as s:
        tenant = s.execute(select(Tenant.id)).scalar_one()
        job = Job(id=new_id("job"), tenant_id=tenant, model_id="mdl_x", spec={}, status="running", attempts=2)
        s.add(job)
        s.commit()
    keys = [f"{tenant}/jobs/{job.id}/{n}/model.onnx" for n in (1, 2)]
    for key in keys:
        storage.put_bytes(key, b"onnx")
    with sessions(settings)() as s:
        assert sweep_orphans(s, storage, grace_seconds=0) == [keys[0]]
        s.execute(update(Job).where(Job.id == job.id).values(status="failed"))
        s.add(JobEvent(job_id=job.id, type="failed"))
        s.commit()
        assert sweep_orphans(s, storage, grace_seconds=3600) == [keys[1]]
    assert not [f for f in _files(settings) if "/jobs/" in f]


class _StorageDown:
    """Local storage that answers nothing, as S3 unreachable; `deletes_only` lets every call but the delete through."""

    def __init__(self, real, deletes_only: bool = False) -> None:  # type: ignore[no-untyped-def]
        self.real, self.deletes_only = real, deletes_only

    def _down(self, *_a, **_kw):  # type: ignore[no-untyped-def]
        raise StorageUnavailable("EndpointConnectionError: Could not connect to the endpoint URL")

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        if name == "delete" or not self.deletes_only:
            return self._down
        return getattr(self.real, name)


def test_storage_down_answers_503_problems_and_a_delete_keeps_its_row_and_file(app):
    client, settings, alice = app
    model = client.post("/v1/models", headers=alice, files={"file": ("m.onnx", MODEL)}).json()["id"]
    real = client.app.state.storage
    client.app.state.storage = _StorageDown(real)
    try:
        for r in (client.post("/v1/models", headers=alice, files={"file": ("m.onnx", MODEL)}),
                  client.delete(f"/v1/models/{model}", headers=alice)):
            body = _is_problem(r, 503)
            assert "storage is unavailable" in body["detail"] and r.headers["retry-after"] == "2", body
    finally:
        client.app.state.storage = real
    assert client.get(f"/v1/models/{model}", headers=alice).status_code == 200
    assert len(_files(settings)) == 1 and _files(settings) == _named(settings)  # the refused upload left nothing

    # storage answers the delete's question, then fails its delete: the row goes (204), the file is the sweep's
    client.app.state.storage = _StorageDown(real, deletes_only=True)
    try:
        assert client.delete(f"/v1/models/{model}", headers=alice).status_code == 204
    finally:
        client.app.state.storage = real
    left = _files(settings)
    assert _named(settings) == [] and len(left) == 1
    with sessions(settings)() as s:
        assert sweep_orphans(s, real, grace_seconds=0) == left
    assert _files(settings) == []


def test_the_api_sweeps_orphan_files_by_itself(tmp_path):
    """An unnamed file older than the grace goes within a sweep interval; a fresh upload's file (named, and young
    while its commit was under way) stays."""
    settings = Settings(home=tmp_path, sweep_interval_seconds=0.1, orphan_sweep_interval_seconds=0.3,
                        orphan_grace_seconds=60)
    with _app(settings) as client:
        alice = {"Authorization": f"Bearer {_key(settings, 'alice')}"}
        assert client.post("/v1/models", headers=alice, files={"file": ("m.onnx", MODEL)}).status_code == 201
        storage = client.app.state.storage
        storage.put_bytes("ten_x/models/mdl_gone", b"left by a failed commit")
        an_hour_ago = time.time() - 3600
        os.utime(settings.home / "storage" / "ten_x" / "models" / "mdl_gone", (an_hour_ago, an_hour_ago))
        deadline = time.monotonic() + 20
        while "ten_x/models/mdl_gone" in _files(settings) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _files(settings) == _named(settings) and len(_named(settings)) == 1
