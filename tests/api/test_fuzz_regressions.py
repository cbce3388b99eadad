"""Each request that once got a 5xx (found while fuzzing the API), on SQLite and on PostgreSQL: now a 4xx
problem+json, or the answer it should have had. The fuzzing itself is tests/api/test_fuzz.py."""

from __future__ import annotations

import base64
import io
import json
import struct
import zipfile

import httpx
import pytest

from .conftest import Stack
from .test_fuzz import fuzzed  # noqa: F401 (fixture)

BIG = str(10**30)


def _safetensors_declaring(shape: list[int]) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 8]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * 8


def _npz_with_member(raw: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("x.npy", raw)
    return out.getvalue()

NUL_CURSOR = base64.urlsafe_b64encode(b'["2026-01-01T00:00:00+00:00", "\\u0000"]').decode()
CASES = {
    # event ids past 64 bits: SQLite's driver overflowed, PostgreSQL refused the bigint
    "events ?after past 64 bits": ("GET", "/v1/jobs/{job_id}/events?after=" + BIG, {}),
    "events ?cursor past 64 bits": ("GET", "/v1/jobs/{job_id}/events?cursor=" + BIG, {}),
    "events ?cursor in superscript digits": ("GET", "/v1/jobs/{job_id}/events?cursor=%C2%B2", {}),
    "tenant stream ?after past 64 bits": ("GET", "/v1/events?after=" + BIG, {}),
    # NUL characters, which PostgreSQL text cannot hold
    "job id with NUL": ("GET", "/v1/jobs/job_%00", {}),
    "model id with NUL": ("GET", "/v1/models/mdl_%00", {}),
    "dataset id with NUL": ("GET", "/v1/datasets/dst_%00", {}),
    "cancel with NUL": ("POST", "/v1/jobs/job_%00/cancel", {}),
    "events with NUL": ("GET", "/v1/jobs/job_%00/events", {}),
    "artifact with NUL": ("GET", "/v1/jobs/job_%00/artifacts/model.onnx", {}),
    "list filter with NUL": ("GET", "/v1/jobs?status=%00", {}),
    # (SQLite holds NUL: there, no job matches, an empty page)
    "list filter with NUL in the model id": ("GET", "/v1/jobs?model_id=mdl_%00", {}),
    "list cursor naming a NUL id": ("GET", "/v1/jobs?cursor=" + NUL_CURSOR, {}),
    "job on a model id with NUL": ("POST", "/v1/jobs", {"json": {"model_id": "\x00"}}),
    "job on a dataset id with NUL": ("POST", "/v1/jobs", {"json": {"model_id": "{model_id}", "spec": {
        "calibration": {"dataset_id": "\x00"}, "signal": "taylor"}}}),
    # numbers past their column
    "num_classes past 32 bits": ("POST", "/v1/models", {"data": {"num_classes": BIG}}),
    # a protect pattern nested past the regex parser's recursion limit
    "protect nested 1000 deep": ("POST", "/v1/jobs", {"json": {"model_id": "{model_id}",
                                                               "spec": {"protect": ["(" * 1000]}}}),
    # half a UTF-16 pair, which JSON can escape and no database can store
    "lone surrogate in the spec": ("POST", "/v1/jobs", {"json_text": '{"model_id": "{model_id}", '
                                                                    '"spec": {"protect": ["\\ud800"]}}'}),
    # headers whose numbers or syntax broke the checks reading them
    "safetensors shape past 64 bits": ("POST", "/v1/models", {
        "files": {"file": ("w.safetensors", _safetensors_declaring([2**70]))}, "data": {"arch": "resnet20_cifar"}}),
    ".npy header cut inside its dict": ("POST", "/v1/datasets", {  # numpy's tokenizer: TokenError
        "files": {"file": ("d.npz", _npz_with_member(b"\x93NUMPY\x01\x00\x20\x00{'descr': '<f4', 'shape': (2,3   \n"))}}),
}


def _fill(value, known):  # type: ignore[no-untyped-def]
    if isinstance(value, str):
        return value.replace("{model_id}", known["model_id"]).replace("{job_id}", known["job_id"])
    if isinstance(value, dict):
        return {k: _fill(v, known) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, known) for v in value]
    return value


@pytest.mark.parametrize("name", list(CASES))
def test_what_once_got_a_server_error_is_a_4xx_problem(fuzzed, name):  # noqa: F811
    from fastapi.testclient import TestClient

    from tests.conftest import tiny_cnn_onnx

    app, auth, known = fuzzed
    method, path, kw = CASES[name]
    kw = _fill(kw, known)
    if path == "/v1/models" and "files" not in kw:
        kw["files"] = {"file": ("m.onnx", tiny_cnn_onnx())}
    if "json_text" in kw:
        kw = {"content": kw.pop("json_text").encode(), "headers": {"content-type": "application/json"}}
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.request(method, _fill(path, known), headers={**auth, **kw.pop("headers", {})}, **kw)
    if r.status_code == 200 and "model_id=" in path:
        assert r.json()["data"] == []
        return
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    assert r.json()["detail"]


# b"\xb2" reads as "²", which str.isdigit took and int refused
@pytest.mark.parametrize("last_event_id", [BIG, b"\xb2", "-1", "abc"], ids=["past 64 bits", "superscript", "-1", "abc"])
def test_event_streams_ignore_a_last_event_id_that_is_not_one_of_theirs(embedded: Stack, last_event_id):
    """The streams never end, so this is checked on a live server: the stream starts (200), from `after`."""
    headers = {"Authorization": f"Bearer {embedded.key}", "Accept": "text/event-stream",
               "Last-Event-ID": last_event_id}
    with httpx.stream("GET", f"{embedded.url}/v1/events", headers=headers, timeout=30) as r:
        assert r.status_code == 200
        assert next(r.iter_lines()) == "retry: 2000"
