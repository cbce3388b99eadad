"""Object storage going away: the embedded stack on S3 storage (s3rver, an S3 server of the tests' own on a free
loopback port), which is killed and started again on the same port with the same objects.

- While it is down the API answers 503 problem+json (upload, download, deletes) and keeps every row whole: a refused
  delete keeps its rows and files, a refused upload leaves no row.
- Killed while a job's worker stores its results: the worker tries again until storage is back and the job succeeds
  once, with one set of artifacts; kept down past SECATEURS_STORAGE_RETRY_SECONDS, the job fails saying that object
  storage was unavailable, with no artifact row and no object left."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import S3_CREDENTIALS, Stack, start_embedded, stop

from .servers import S3Server, upload_resnet20, wait_for
from .test_worker_killed import LONG

BUCKET, PREFIX, RETRY = "secateurs-test", "artifacts", 10
PROBLEM = "application/problem+json"
QUICK = {"signal": "l2_norm", "target": {"macs": 0.6}, "measure": {"repeats": 5}}


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[S3Server, Stack, Path]]:
    s3 = S3Server(tmp_path_factory.mktemp("s3rver"), BUCKET)
    s3.start()
    home = tmp_path_factory.mktemp("stack")
    try:
        stack = start_embedded(home, SECATEURS_STORAGE_URL=f"s3://{BUCKET}/{PREFIX}", SECATEURS_S3_ENDPOINT_URL=s3.url,
                               SECATEURS_STORAGE_RETRY_SECONDS=str(RETRY), **S3_CREDENTIALS)
        try:
            yield s3, stack, home
        finally:
            stop(stack.procs)
    finally:
        s3.close()


def _objects(s3: S3Server, job_id: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=s3.url, aws_access_key_id="S3RVER", aws_secret_access_key="S3RVER",
                          region_name="us-east-1")
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/").get("Contents", [])
    return sorted(o["Key"].split(f"/jobs/{job_id}/", 1)[1] for o in listed if f"/jobs/{job_id}/" in o["Key"])


def _ended(c: httpx.Client, job_id: str) -> dict:
    return wait_for(lambda: (j := c.get(f"/v1/jobs/{job_id}").json())["status"]
                    in ("succeeded", "failed", "cancelled") and j, 300, f"job {job_id} to end")


def _under_way(c: httpx.Client, spec: dict) -> str:
    """A job past its import (its model read from storage): what it does with storage next is store its results."""
    job_id = c.post("/v1/jobs", json={"model_id": upload_resnet20(c), "spec": spec}).json()["id"]
    wait_for(lambda: (j := c.get(f"/v1/jobs/{job_id}").json())["status"] == "running"
             and j["stage"] not in ("starting", "import"), 300, f"job {job_id} to be under way")
    return job_id


def _unavailable(r: httpx.Response, seconds: float) -> float:
    assert r.status_code == 503 and r.headers["content-type"].startswith(PROBLEM), (r.status_code, r.text)
    body = r.json()
    assert body["status"] == 503 and "storage is unavailable" in body["detail"] and r.headers["retry-after"], body
    return seconds


def _timed(c: httpx.Client, method: str, path: str, **kw) -> tuple[httpx.Response, float]:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    r = c.request(method, path, **kw)
    return r, time.monotonic() - t0


@pytest.mark.slow
def test_the_api_answers_503_while_s3_is_down_and_keeps_its_rows_whole(s3_stack):
    from tests.conftest import shared

    s3, stack, _ = s3_stack
    with stack.client() as c:
        model_id = upload_resnet20(c)
        job_id = c.post("/v1/jobs", json={"model_id": model_id, "spec": QUICK}).json()["id"]
        assert _ended(c, job_id)["status"] == "succeeded"
        models_before = [m["id"] for m in c.get("/v1/models").json()["data"]]
        s3.stop()
        try:
            weights = shared("resnet20_cifar10.safetensors").read_bytes()
            took = [_unavailable(*_timed(c, "POST", "/v1/models", files={"file": ("w.safetensors", weights)},
                                         data={"arch": "resnet20_cifar"})),
                    _unavailable(*_timed(c, "GET", f"/v1/jobs/{job_id}/artifacts/model.onnx")),
                    _unavailable(*_timed(c, "DELETE", f"/v1/jobs/{job_id}")),
                    _unavailable(*_timed(c, "DELETE", f"/v1/models/{model_id}"))]
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["storage"] != "ok", ready.text
        finally:
            s3.start()
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == models_before  # no row of the refused upload
        assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
        got = c.get(f"/v1/jobs/{job_id}/artifacts/model.onnx")  # the refused delete kept the row and its file
        assert got.status_code == 200 and got.content[:8]
        assert _objects(s3, job_id) == ["1/model.onnx", "1/report.json"]
        assert c.delete(f"/v1/jobs/{job_id}").status_code == 204 and _objects(s3, job_id) == []
        print(f"S3 down: 503 problem+json in {', '.join(f'{t:.2f}' for t in took)} s (upload, download, job delete, "
              "model delete); rows and files whole afterwards")


@contextmanager
def _s3_down_under_a_job(s3: S3Server, c: httpx.Client) -> Iterator[str]:
    """A long job under way (its model read), then S3 killed until the block ends; yields the job's id."""
    job_id = _under_way(c, LONG)
    s3.stop()
    try:
        yield job_id
    finally:
        s3.start()


@pytest.mark.slow
def test_s3_down_while_the_worker_stores_the_results_is_waited_out(s3_stack):
    s3, stack, home = s3_stack
    with stack.client() as c:
        stopped_at = time.monotonic()
        with _s3_down_under_a_job(s3, c) as job_id:
            wait_for(lambda: "storage unavailable while storing the job's model.onnx" in (home / "up.log").read_text(),
                     300, "the worker to meet S3 down as it stores the results")
            assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
        down_for = time.monotonic() - stopped_at
        job = _ended(c, job_id)
        assert job["status"] == "succeeded" and job["attempts"] == 1, job
        assert _objects(s3, job_id) == ["1/model.onnx", "1/report.json"]
        assert [c.get(f"/v1/jobs/{job_id}/artifacts/{name}").status_code for name in ("model.onnx", "report.json")] == [
            200, 200]
        print(f"S3 down {down_for:.1f} s (from before the job's end), through the worker's first try to store the "
              "results; the job succeeded once storage was back, attempts = 1, one set of artifacts")


@pytest.mark.slow
def test_s3_down_past_the_retry_window_fails_the_job_saying_so_and_keeps_nothing(s3_stack):
    s3, stack, _ = s3_stack
    with stack.client() as c:
        with _s3_down_under_a_job(s3, c) as job_id:
            job = _ended(c, job_id)
        assert job["status"] == "failed", job
        assert job["error"]["type"] == "storage-unavailable", job
        assert job["error"]["message"].startswith(f"object storage was unavailable while storing the job's model.onnx "
                                                  f"(tried for {RETRY} s): EndpointConnectionError"), job["error"]
        assert _objects(s3, job_id) == []
        assert [c.get(f"/v1/jobs/{job_id}/artifacts/{name}").status_code for name in ("model.onnx", "report.json")] == [
            404, 404]
        print(f"S3 kept down: the job failed saying {job['error']['message'][:90]!r}...; no artifact row, no object")
