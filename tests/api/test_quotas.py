"""Per-tenant limits on stored bytes (SECATEURS_MAX_STORAGE_BYTES_PER_TENANT: 413) and on uploads begun per minute
(SECATEURS_MAX_UPLOADS_PER_MINUTE_PER_TENANT: 429 with Retry-After), counted in the database: in-process on SQLite
for what the answers say and leave, then with concurrent uploads through two API processes on SQLite and on
PostgreSQL, where no more than the limit may pass."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from secateurs.api.cli import create_key
from secateurs.db.settings import Settings, get_settings

from tests.fault.servers import start_api

from .conftest import stop
from .test_api import _is_problem, _key


def _tiny_onnx() -> bytes:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 8, 8])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 4, 6, 6])
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "W")
    graph = helper.make_graph([helper.make_node("Conv", ["input", "W"], ["out"])], "g", [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


MODEL = _tiny_onnx()


def _kept(home: Path) -> list[Path]:
    """Every file the service keeps besides its database: storage, and its temporary uploads."""
    return sorted(p for p in home.rglob("*") if p.is_file() and "secateurs.db" not in p.name and p.suffix != ".log"
                  and "broker" not in p.name)


def _clear_of_a_minute_boundary() -> None:
    """The upload rate is counted in minute-aligned windows: a burst that straddles two may pass twice."""
    if 60 - time.time() % 60 < 15:
        time.sleep(60 - time.time() % 60 + 0.1)


@pytest.fixture
def app(tmp_path):
    settings = Settings(home=tmp_path, max_upload_bytes=1 << 20, max_storage_bytes_per_tenant=3 * len(MODEL) + 100,
                        max_uploads_per_minute_per_tenant=6)
    from secateurs.api.app import create_app

    with TestClient(create_app(settings, enqueue=lambda _: None, ping_broker=lambda: None)) as c:
        yield c, settings


def test_an_upload_past_the_tenants_storage_is_413_while_streaming_and_leaves_nothing(app):
    client, settings = app
    alice = {"Authorization": f"Bearer {_key(settings, 'alice')}"}
    for _ in range(3):
        assert client.post("/v1/models", headers=alice, files={"file": ("m.onnx", MODEL)}).status_code == 201
    listed = client.get("/v1/models", headers=alice).json()["data"]
    kept = _kept(settings.home)

    r = client.post("/v1/models", headers=alice, files={"file": ("m.onnx", MODEL)})
    body = _is_problem(r, 413)
    assert f"take {3 * len(MODEL)} of the {3 * len(MODEL) + 100} bytes" in body["detail"], body
    assert "retry-after" not in r.headers  # waiting does not help: not a 429
    # streamed without a length (chunked), so only the count of bytes while they stream can refuse it
    chunks = iter([b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.npz\"\r\n\r\n",
                   *[b"\0" * 65536] * 64, b"\r\n--b--\r\n"])
    r = client.post("/v1/datasets", headers={**alice, "content-type": "multipart/form-data; boundary=b"},
                    content=chunks)
    assert "take" in _is_problem(r, 413)["detail"]
    assert client.get("/v1/models", headers=alice).json()["data"] == listed and _kept(settings.home) == kept

    bob = {"Authorization": f"Bearer {_key(settings, 'bob')}"}  # another tenant has its own room
    assert client.post("/v1/models", headers=bob, files={"file": ("m.onnx", MODEL)}).status_code == 201


def test_uploads_past_the_tenants_rate_are_429_with_retry_after(app):
    client, settings = app
    carol = {"Authorization": f"Bearer {_key(settings, 'carol')}"}
    _clear_of_a_minute_boundary()
    # every upload begun counts, refused ones too: the limit protects the service's bandwidth and CPU
    statuses = [client.post("/v1/datasets", headers=carol, files={"file": ("d.npz", b"not npz")}).status_code
                for _ in range(6)]
    assert statuses == [422] * 6
    r = client.post("/v1/models", headers=carol, files={"file": ("m.onnx", MODEL)})
    body = _is_problem(r, 429)
    wait = int(r.headers["retry-after"])
    assert 1 <= wait <= 60 and "6 uploads in a minute" in body["detail"], (wait, body)
    dave = {"Authorization": f"Bearer {_key(settings, 'dave')}"}
    assert client.post("/v1/models", headers=dave, files={"file": ("m.onnx", MODEL)}).status_code == 201


def _burst(urls: list[str], key: str, files: list[tuple[str, bytes]], path: str) -> list[int]:
    """All at once, spread over the API processes."""
    statuses: list[int] = [0] * len(files)
    start = threading.Barrier(len(files))

    def one(i: int) -> None:
        with httpx.Client(base_url=urls[i % len(urls)], headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            start.wait()
            statuses[i] = c.post(path, files={"file": files[i]}).status_code

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(files))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_concurrent_uploads_through_two_api_processes_never_pass_a_limit(tmp_path, request, database):
    env = {"SECATEURS_MAX_STORAGE_BYTES_PER_TENANT": str(2 * len(MODEL) + len(MODEL) // 2),
           "SECATEURS_MAX_UPLOADS_PER_MINUTE_PER_TENANT": "6"}
    if database == "postgresql":
        env["SECATEURS_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    monkeypatch = request.getfixturevalue("monkeypatch")
    for name, value in {**env, "SECATEURS_HOME": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    request.addfinalizer(get_settings.cache_clear)
    # the schema and the keys first, here: two processes starting at once on a new database would race to migrate
    quota_key, rate_key = create_key(f"quota-{database}"), create_key(f"rate-{database}")
    procs: list = []
    try:
        with ThreadPoolExecutor(2) as pool:
            (first, url1, _), (second, url2, _) = pool.map(lambda _: start_api(tmp_path, **env), range(2))
        procs += [first, second]
        t0 = time.monotonic()
        stored = Counter(_burst([url1, url2], quota_key, [("m.onnx", MODEL)] * 6, "/v1/models"))
        took = time.monotonic() - t0
        _clear_of_a_minute_boundary()
        t0 = time.monotonic()
        rated = Counter(_burst([url1, url2], rate_key, [("d.npz", b"not npz")] * 10, "/v1/datasets"))
        took += time.monotonic() - t0
        assert stored == {201: 2, 413: 4}, stored  # room for two and a half
        assert rated == {422: 6, 429: 4}, rated  # six begun a minute; these six were not data
        models = sorted(p for p in (tmp_path / "storage").rglob("*") if p.is_file())
        assert len(models) == 2 and not list((tmp_path / "tmp").iterdir()), models
        print(f"{database}: 6 concurrent uploads with room for 2.5 -> {dict(stored)}; 10 with 6 a minute -> "
              f"{dict(rated)}; {took:.1f} s for both bursts over 2 API processes")
    finally:
        stop(procs)
