"""API behaviour: auth, tenants, uploads, validation, idempotency, pagination, cancel, problem+json.

The app runs in-process (TestClient) on a temporary SQLite database and local storage, enqueueing to
a real Redis queue that no worker consumes, so jobs stay queued where a test needs them to."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from fastapi.testclient import TestClient
from secateurs.db.settings import Settings

from tests.conftest import shared

from .conftest import redis_db

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def app_settings(tmp_path_factory):
    home = tmp_path_factory.mktemp("api")
    with redis_db() as index:
        yield Settings(home=home, broker_url=f"redis://127.0.0.1:6379/{index}", max_upload_bytes=4 * 1024 * 1024)


@pytest.fixture(scope="module")
def client(app_settings):
    from secateurs.api.app import create_app

    with TestClient(create_app(app_settings)) as c:
        yield c


def _key(app_settings, tenant):
    import os

    from secateurs.api.cli import create_key
    from secateurs.db.settings import get_settings

    old = os.environ.get("SECATEURS_HOME")
    os.environ["SECATEURS_HOME"] = str(app_settings.home)
    get_settings.cache_clear()
    try:
        return create_key(tenant)
    finally:
        if old is None:
            os.environ.pop("SECATEURS_HOME", None)
        else:
            os.environ["SECATEURS_HOME"] = old
        get_settings.cache_clear()


@pytest.fixture(scope="module")
def alice(app_settings):
    return {"Authorization": f"Bearer {_key(app_settings, 'alice')}"}


@pytest.fixture(scope="module")
def bob(app_settings):
    return {"Authorization": f"Bearer {_key(app_settings, 'bob')}"}


@pytest.fixture(scope="module")
def model(client, alice):
    w = shared("resnet20_cifar10.safetensors").read_bytes()
    r = client.post("/v1/models", headers=alice, files={"file": ("r20.safetensors", w)}, data={"arch": "resnet20_cifar"})
    assert r.status_code == 201, r.text
    return r.json()


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.fixture(scope="module")
def dataset(client, alice):
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    r = client.post("/v1/datasets", headers=alice, files={"file": ("d.npz", _npz(x=x, y=np.arange(16) % 10))})
    assert r.status_code == 201, r.text
    return r.json()


def _is_problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def test_no_key_or_a_wrong_key_is_401(client):
    _is_problem(client.get("/v1/jobs"), 401)
    _is_problem(client.get("/v1/jobs", headers={"Authorization": "Bearer sk_nope"}), 401)


def test_keys_are_stored_hashed(app_settings, alice):
    import sqlite3

    key = alice["Authorization"][7:]
    rows = sqlite3.connect(app_settings.home / "secateurs.db").execute("select key_hash, prefix from api_keys").fetchall()
    assert all(key not in h and len(h) == 64 for h, _ in rows)


def test_a_revoked_key_stops_working_within_the_cache_time(tmp_path):
    import os
    import time

    from secateurs.api.app import create_app
    from secateurs.api.cli import list_keys, revoke_key

    settings = Settings(home=tmp_path, broker_url="redis://127.0.0.1:6379/15", api_key_cache_seconds=1.0)
    key = _key(settings, "carol")
    os.environ["SECATEURS_HOME"] = str(tmp_path)
    try:
        from secateurs.db.settings import get_settings

        get_settings.cache_clear()
        [listed] = list_keys("carol")
        assert listed["prefix"] == key[:10] and key not in str(listed) and not listed["revoked"]
        with pytest.raises(ValueError, match="no API key"):
            revoke_key("sk_unknown")
        with TestClient(create_app(settings)) as c:
            auth = {"Authorization": f"Bearer {key}"}
            assert c.get("/v1/jobs", headers=auth).status_code == 200  # looked up, then cached
            assert revoke_key(listed["prefix"]) == listed["id"]
            assert list_keys("carol")[0]["revoked"]
            deadline = time.monotonic() + 5
            while c.get("/v1/jobs", headers=auth).status_code == 200:
                assert time.monotonic() < deadline, "a revoked key still worked 5 s later (cache 1 s)"
                time.sleep(0.1)
            _is_problem(c.get("/v1/jobs", headers=auth), 401)
    finally:
        os.environ.pop("SECATEURS_HOME", None)
        get_settings.cache_clear()


def test_another_tenants_objects_answer_404_everywhere(client, alice, bob, model, dataset):
    job = client.post("/v1/jobs", headers=alice, json={"model_id": model["id"]}).json()
    for path in (f"/v1/models/{model['id']}", f"/v1/datasets/{dataset['id']}", f"/v1/jobs/{job['id']}",
                 f"/v1/jobs/{job['id']}/events", f"/v1/jobs/{job['id']}/artifacts/model.onnx"):
        _is_problem(client.get(path, headers=bob), 404)
        assert client.get(path, headers=alice).status_code != 404 or path.endswith("model.onnx")
    _is_problem(client.post(f"/v1/jobs/{job['id']}/cancel", headers=bob), 404)
    assert client.get("/v1/jobs", headers=bob).json()["data"] == []
    assert client.get("/v1/models", headers=bob).json()["data"] == []
    # bob cannot start a job on alice's model either
    body = _is_problem(client.post("/v1/jobs", headers=bob, json={"model_id": model["id"]}), 422)
    assert body["errors"][0]["field"] == "model_id"


def test_over_cap_upload_is_413_and_leaves_nothing(client, alice, app_settings):
    before = sorted(p for p in app_settings.home.rglob("*") if p.is_file() and "secateurs.db" not in p.name)
    big = b"\x00" * (5 * 1024 * 1024)
    _is_problem(client.post("/v1/models", headers=alice, files={"file": ("big.onnx", big)}), 413)
    after = sorted(p for p in app_settings.home.rglob("*") if p.is_file() and "secateurs.db" not in p.name)
    assert after == before


@pytest.mark.parametrize("payload,status,needle", [
    (pickle.dumps({"state_dict": 1}, protocol=4), 415, "pickle"),
    (b"\x00\x01garbage" * 100, 422, "ONNX"),
    (b"", 422, "empty"),
])
def test_bad_model_uploads_are_refused_saying_what_to_send(client, alice, payload, status, needle):
    body = _is_problem(client.post("/v1/models", headers=alice, files={"file": ("m.pt", payload)}), status)
    assert needle in body["detail"]


def test_npz_needing_pickle_is_refused(client, alice):
    obj = np.array([{"a": 1}], dtype=object)
    buf = io.BytesIO()
    np.save(buf, obj, allow_pickle=True)
    import zipfile

    z = io.BytesIO()
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("x.npy", buf.getvalue())
    body = _is_problem(client.post("/v1/datasets", headers=alice, files={"file": ("d.npz", z.getvalue())}), 422)
    assert "pickle" in body["detail"]


def test_unknown_signal_is_422_naming_the_field(client, alice, model):
    body = _is_problem(client.post("/v1/jobs", headers=alice, json={"model_id": model["id"], "spec": {"signal": "magic"}}), 422)
    assert body["errors"][0]["field"] == "spec.signal"


def test_data_driven_signal_without_data_is_422_naming_the_field(client, alice, model):
    body = _is_problem(client.post("/v1/jobs", headers=alice, json={"model_id": model["id"], "spec": {"signal": "taylor"}}), 422)
    assert body["errors"][0]["field"] == "spec.calibration.dataset_id"


def test_data_of_the_wrong_shape_is_422(client, alice, model):
    x = np.zeros((4, 1, 28, 28), np.float32)
    ds = client.post("/v1/datasets", headers=alice, files={"file": ("m.npz", _npz(x=x))}).json()
    body = _is_problem(client.post("/v1/jobs", headers=alice, json={
        "model_id": model["id"], "spec": {"signal": "taylor", "calibration": {"dataset_id": ds["id"]}}}), 422)
    assert body["errors"][0]["field"] == "spec.calibration.dataset_id"


def test_a_data_driven_job_with_data_is_accepted(client, alice, model, dataset):
    r = client.post("/v1/jobs", headers=alice, json={
        "model_id": model["id"], "spec": {"signal": "taylor", "calibration": {"dataset_id": dataset["id"]}}})
    assert r.status_code == 201 and r.json()["status"] == "queued"


def test_idempotency_key_replays_and_refuses_a_different_body(client, alice, model):
    h = {**alice, "Idempotency-Key": "abc-123"}
    first = client.post("/v1/jobs", headers=h, json={"model_id": model["id"]})
    again = client.post("/v1/jobs", headers=h, json={"model_id": model["id"]})
    assert first.status_code == again.status_code == 201 and first.json()["id"] == again.json()["id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    _is_problem(client.post("/v1/jobs", headers=h, json={"model_id": model["id"], "spec": {"signal": "l1_norm"}}), 422)


def test_cursor_pagination_walks_every_job_once(client, alice, model):
    for _ in range(5):
        client.post("/v1/jobs", headers=alice, json={"model_id": model["id"]})
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", headers=alice, params=params).json()
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    total = client.get("/v1/jobs", headers=alice, params={"limit": 200}).json()["data"]
    assert seen == [j["id"] for j in total] and len(seen) >= 5
    _is_problem(client.get("/v1/jobs", headers=alice, params={"cursor": "garbage"}), 422)


def test_cancel_a_queued_job_never_starts_it(client, alice, model):
    job = client.post("/v1/jobs", headers=alice, json={"model_id": model["id"]}).json()
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=alice).json()["data"]
    assert [e["type"] for e in events] == ["queued", "cancelled"]
    # a duplicate delivery of the task finds nothing to run
    from secateurs.worker.runner import run_job

    assert run_job(job["id"], client.app.state.settings) == "skipped"
    _is_problem(client.get(f"/v1/jobs/{job['id']}/artifacts/model.onnx", headers=alice), 404)


def test_unknown_routes_and_methods_are_problems(client, alice):
    _is_problem(client.get("/v1/nothing", headers=alice), 404)
    _is_problem(client.delete("/v1/signals"), 405)
    _is_problem(client.get("/v1/jobs/job_doesnotexist", headers=alice), 404)


def test_signals_catalogue_lists_every_signal_and_the_axes(client):
    body = client.get("/v1/signals").json()
    names = {s["name"] for s in body["data"]}
    assert {"l1_norm", "l2_norm", "taylor", "fisher", "bandit", "lasso", "similarity"} <= names
    assert "measure" in body["compose"]
    assert all(s["description"] and s["needs"] for s in body["data"])


def test_health_readiness_metrics_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    metrics = client.get("/metrics").text
    assert "secateurs_jobs" in metrics and "secateurs_http_request_seconds" in metrics
    ops = {op["operationId"] for path in client.get("/openapi.json").json()["paths"].values() for op in path.values()}
    assert {"upload_model", "create_job", "get_job", "cancel_job", "job_events", "get_artifact"} <= ops


def test_events_page_with_cursor_and_sse_of_a_finished_job_closes_after_the_terminal_event(client, alice, model):
    job = client.post("/v1/jobs", headers=alice, json={"model_id": model["id"]}).json()
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice)
    first = client.get(f"/v1/jobs/{job['id']}/events", headers=alice, params={"limit": 1}).json()
    assert [e["type"] for e in first["data"]] == ["queued"] and first["next_cursor"]
    rest = client.get(f"/v1/jobs/{job['id']}/events", headers=alice,
                      params={"limit": 1, "cursor": first["next_cursor"]}).json()
    assert [e["type"] for e in rest["data"]] == ["cancelled"] and rest["next_cursor"] is None
    _is_problem(client.get(f"/v1/jobs/{job['id']}/events", headers=alice, params={"cursor": "x"}), 422)
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers={**alice, "Accept": "text/event-stream"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = list(r.iter_lines())  # returns: the stream ends by itself after the terminal event
    ids = [int(line[4:]) for line in lines if line.startswith("id: ")]
    kinds = [line[7:] for line in lines if line.startswith("event: ")]
    assert kinds == ["queued", "cancelled"] and ids == sorted(ids)
    with client.stream("GET", f"/v1/jobs/{job['id']}/events",
                       headers={**alice, "Accept": "text/event-stream", "Last-Event-ID": str(ids[0])}) as r:
        assert [line[7:] for line in r.iter_lines() if line.startswith("event: ")] == ["cancelled"]


def test_webhook_targets_and_event_types_are_checked_and_each_tenant_has_its_own_secret(client, alice, bob, model):
    body = _is_problem(client.post("/v1/jobs", headers=alice, json={
        "model_id": model["id"], "webhook_url": "http://127.0.0.1:9/hook"}), 422)
    assert body["errors"][0]["field"] == "webhook_url" and "SECATEURS_WEBHOOK_ALLOW_PRIVATE" in body["detail"]
    body = _is_problem(client.post("/v1/jobs", headers=alice, json={
        "model_id": model["id"], "webhook_url": "http://10.1.2.3/hook", "webhook_events": ["job.exploded"]}), 422)
    assert body["errors"][0]["field"] == "webhook_events"
    _is_problem(client.post("/v1/jobs", headers=alice, json={"model_id": model["id"], "webhook_url": "ftp://x/y"}), 422)
    a1 = client.get("/v1/webhooks/secret", headers=alice).json()["secret"]
    a2 = client.get("/v1/webhooks/secret", headers=alice).json()["secret"]
    b1 = client.get("/v1/webhooks/secret", headers=bob).json()["secret"]
    assert a1 == a2 and a1.startswith("whsec_") and b1 != a1
    _is_problem(client.get("/v1/webhooks/secret"), 401)


def test_the_dashboard_is_served_by_the_api_itself_with_nothing_from_a_cdn(client):
    import re

    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    refs = re.findall(r'(?:src|href)="([^"#]+)"', r.text)
    assert refs and all(u.startswith("/static/") for u in refs), refs
    assets = {"/static/dashboard.js", "/static/charts.js", "/static/dashboard.css"} | set(refs)
    for path in assets:
        a = client.get(path)
        assert a.status_code == 200 and a.headers["content-security-policy"] == csp, path
        assert not re.search(r"(?:src|href|url)\s*[=(]\s*[\"']?(?:https?:)?//", a.text), path  # nothing fetched from afar
        assert client.get(path, headers={"If-None-Match": a.headers["etag"]}).status_code == 304
    assert client.get("/static/dashboard.js").headers["content-type"].startswith("text/javascript")
    assert _is_problem(client.get("/static/secrets.py"), 404)
    assert "/" not in client.get("/openapi.json").json()["paths"]


def test_a_two_input_model_takes_a_dataset_with_one_key_per_input_name(client, alice):
    import torch

    from tests.pruning.exporters import TwoStems, multi_input_onnx

    torch.manual_seed(0)
    onnx_bytes = multi_input_onnx(TwoStems(), {"left": torch.randn(1, 3, 32, 32), "right": torch.randn(1, 3, 32, 32)},
                                  ("logits",))
    r = client.post("/v1/models", headers=alice, files={"file": ("two.onnx", onnx_bytes)})
    assert r.status_code == 201, r.text
    model_id = r.json()["id"]
    x = np.zeros((8, 3, 32, 32), np.float32)

    def job_with(**arrays):
        ds = client.post("/v1/datasets", headers=alice, files={"file": ("d.npz", _npz(**arrays))})
        assert ds.status_code == 201, ds.text
        return client.post("/v1/jobs", headers=alice, json={
            "model_id": model_id, "spec": {"signal": "taylor", "calibration": {"dataset_id": ds.json()["id"]}}})

    ok = job_with(left=x, right=x)
    assert ok.status_code == 201 and ok.json()["status"] == "queued", ok.text
    body = _is_problem(job_with(x=x), 422)
    assert body["errors"][0]["field"] == "spec.calibration.dataset_id" and "no key 'left'" in body["detail"]
    body = _is_problem(job_with(left=x, right=x[:, :, :16]), 422)
    assert "key 'right'" in body["detail"] and "do not fit" in body["detail"]


def _submit(client, alice, model_id, data: bytes):
    ds = client.post("/v1/datasets", headers=alice, files={"file": ("d.npz", data)})
    assert ds.status_code == 201, ds.text
    return ds.json()["id"], client.post("/v1/jobs", headers=alice, json={
        "model_id": model_id, "spec": {"signal": "taylor", "calibration": {"dataset_id": ds.json()["id"]}}})


def test_an_npz_with_members_besides_x_and_y_still_feeds_a_single_input_model(client, alice, model, app_settings):
    import torch
    from secateurs.db.models import Dataset
    from secateurs.db.session import sessions

    from tests.pruning.exporters import multi_input_onnx, small_classifier
    from tests.pruning.test_data import classifier_npz

    r = client.post("/v1/models", headers=alice, files={"file": ("image.onnx", multi_input_onnx(
        small_classifier(), {"image": torch.randn(1, 3, 32, 32)}, ("logits",)))})
    assert r.status_code == 201, r.text
    for model_id in (model["id"], r.json()["id"]):  # safetensors (no input names) and ONNX (its input "image")
        dataset_id, job = _submit(client, alice, model_id, classifier_npz(16))
        assert job.status_code == 201, job.text
    # rows stored before several inputs were taken have only x's shape: the job is still taken
    with sessions(app_settings)() as s:
        row = s.get(Dataset, dataset_id)
        row.sample_shape = {"shape": row.sample_shape["shape"]}
        s.commit()
    job = client.post("/v1/jobs", headers=alice, json={
        "model_id": model["id"], "spec": {"signal": "taylor", "calibration": {"dataset_id": dataset_id}}})
    assert job.status_code == 201, job.text


def test_the_arrays_a_model_takes_are_checked_at_submission_and_no_others(client, alice):
    import torch

    from tests.pruning.exporters import WithIds, multi_input_onnx

    torch.manual_seed(0)
    r = client.post("/v1/models", headers=alice, files={"file": ("ids.onnx", multi_input_onnx(
        WithIds(), {"image": torch.randn(1, 3, 32, 32), "ids": torch.zeros(1, dtype=torch.long)}, ("logits",)))})
    assert r.status_code == 201, r.text
    image, ids, nan = np.zeros((6, 3, 32, 32), np.float32), np.arange(6), np.full((6, 2), np.nan, np.float32)
    _, ok = _submit(client, alice, r.json()["id"], _npz(ids=ids, image=image, y=ids % 2, other=nan, mean=np.zeros(3)))
    assert ok.status_code == 201, ok.text
    for arrays, needle in [
        ({"image": image, "ids": ids.astype(np.float32)}, "key 'ids' holds float32, but the model's input 'ids' takes "
                                                          "int64"),
        ({"image": image, "ids": ids[:5]}, "key 'ids' has 5 samples, 'image' 6"),
        ({"image": image, "ids": ids, "y": ids[:5]}, "y has 5 labels, but key 'image' has 6 samples"),
        ({"image": image.copy() * np.nan, "ids": ids}, "key 'image' holds NaN"),
        ({"image": image, "ids": np.array(list("abcdef"))}, "key 'ids' holds <U1"),
    ]:
        _, job = _submit(client, alice, r.json()["id"], _npz(**arrays))
        body = _is_problem(job, 422)
        assert body["errors"][0]["field"] == "spec.calibration.dataset_id" and needle in body["detail"], body


def test_a_model_lists_each_input_by_name_with_its_declared_shape_and_dtype(client, alice, model):
    import torch

    from tests.conftest import onnx_of
    from tests.pruning.exporters import WithIds, multi_input_onnx

    r = client.post("/v1/models", headers=alice, files={"file": ("one.onnx", onnx_of(torch.nn.Conv2d(3, 4, 3), 16))})
    assert r.status_code == 201, r.text
    one = r.json()
    assert one["inputs"] == [{"name": "input", "shape": ["batch", 3, 16, 16], "dtype": "float32"}]
    assert one["input_shape"] == [1, 3, 16, 16]  # the field as it was
    # a safetensors model: its one input as the engine names it, and it takes its samples under that name too
    assert model["inputs"] == [{"name": "input", "shape": ["batch", 3, 32, 32], "dtype": "float32"}]
    _, job = _submit(client, alice, model["id"], _npz(input=np.zeros((4, 3, 32, 32), np.float32)))
    assert job.status_code == 201, job.text

    torch.manual_seed(0)
    r = client.post("/v1/models", headers=alice, files={"file": ("ids.onnx", multi_input_onnx(
        WithIds(), {"image": torch.randn(1, 3, 32, 32), "ids": torch.zeros(1, dtype=torch.long)}, ("logits",)))})
    assert r.status_code == 201, r.text
    two = r.json()
    expected = [{"name": "image", "shape": ["N", 3, 32, 32], "dtype": "float32"},
                {"name": "ids", "shape": ["N"], "dtype": "int64"}]  # graph order
    assert two["inputs"] == expected and two["input_shape"] == [1, 3, 32, 32]
    assert client.get(f"/v1/models/{two['id']}", headers=alice).json()["inputs"] == expected
    listed = {m["id"]: m for m in client.get("/v1/models?limit=100", headers=alice).json()["data"]}
    assert listed[two["id"]]["inputs"] == expected and listed[one["id"]]["inputs"] == one["inputs"]


def test_a_dataset_lists_each_array_but_the_labels_in_archive_order(client, alice):
    image, ids = np.zeros((6, 3, 8, 8), np.float32), np.arange(6)
    r = client.post("/v1/datasets", headers=alice, files={"file": ("d.npz", _npz(
        ids=ids, image=image, y=ids % 2, mean=np.zeros(3, np.float64), scale=np.float32(2)))})
    assert r.status_code == 201, r.text
    d = r.json()
    expected = [{"key": "ids", "shape": [6], "dtype": "int64"},
                {"key": "image", "shape": [6, 3, 8, 8], "dtype": "float32"},
                {"key": "mean", "shape": [3], "dtype": "float64"},
                {"key": "scale", "shape": [], "dtype": "float32"}]
    assert d["arrays"] == expected
    assert (d["samples"], d["sample_shape"], d["labelled"]) == (6, [], True)  # the fields as they were: ids first
    assert client.get(f"/v1/datasets/{d['id']}", headers=alice).json()["arrays"] == expected
    listed = {x["id"]: x for x in client.get("/v1/datasets?limit=100", headers=alice).json()["data"]}
    assert listed[d["id"]]["arrays"] == expected


def test_rows_stored_before_the_lists_were_kept_give_what_they_have(client, alice, app_settings):
    import torch
    from secateurs.db.models import Dataset, Model
    from secateurs.db.session import sessions

    from tests.conftest import onnx_of
    from tests.pruning.exporters import TwoStems, multi_input_onnx

    one = client.post("/v1/models", headers=alice, files={"file": ("one.onnx", onnx_of(torch.nn.Conv2d(3, 4, 3), 16))})
    two = client.post("/v1/models", headers=alice, files={"file": ("two.onnx", multi_input_onnx(
        TwoStems(), {"left": torch.randn(1, 3, 32, 32), "right": torch.randn(1, 3, 32, 32)}, ("logits",)))})
    x = np.zeros((5, 3, 8, 8), np.float32)
    old = client.post("/v1/datasets", headers=alice, files={"file": ("d.npz", _npz(x=x, y=np.arange(5)))})
    keyed = client.post("/v1/datasets", headers=alice, files={"file": ("k.npz", _npz(left=x, right=x[:, :1]))})
    for r in (one, two, old, keyed):
        assert r.status_code == 201, r.text
    with sessions(app_settings)() as s:
        # before several inputs were taken: the first input's shape alone (batch 1, -1 where not fixed)
        s.get(Model, one.json()["id"]).input_shape = {"shape": [1, 3, -1, 16]}
        s.get(Dataset, old.json()["id"]).sample_shape = {"shape": [3, 8, 8]}
        # after, before dtypes, declared dimensions and each array were kept
        s.get(Model, two.json()["id"]).input_shape = {"shape": [1, 3, 32, 32],
                                                      "inputs": {"left": [1, 3, 32, 32], "right": [1, 3, -1, 32]}}
        s.get(Dataset, keyed.json()["id"]).sample_shape = {"shape": [3, 8, 8],
                                                          "inputs": {"left": [3, 8, 8], "right": [1, 8, 8]}}
        s.commit()

    def get(kind, r):
        return client.get(f"/v1/{kind}/{r.json()['id']}", headers=alice).json()

    assert get("models", one)["inputs"] == [{"name": None, "shape": [None, 3, None, 16], "dtype": None}]
    assert get("models", one)["input_shape"] == [1, 3, -1, 16]
    assert get("models", two)["inputs"] == [{"name": "left", "shape": [None, 3, 32, 32], "dtype": None},
                                            {"name": "right", "shape": [None, 3, None, 32], "dtype": None}]
    assert get("datasets", old)["arrays"] == [{"key": "x", "shape": [5, 3, 8, 8], "dtype": None}]
    assert get("datasets", old)["sample_shape"] == [3, 8, 8]
    assert get("datasets", keyed)["arrays"] == [{"key": "left", "shape": [5, 3, 8, 8], "dtype": None},
                                               {"key": "right", "shape": [5, 1, 8, 8], "dtype": None}]
