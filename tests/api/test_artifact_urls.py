"""Artifacts leave the service only through the API (with the key) or, on S3 storage, by a short-lived presigned
URL: `GET /v1/jobs/{id}/artifacts/{name}?redirect=true` answers 307 to it. Tested on the embedded stack with its
storage on a loopback S3 endpoint that checks presigned URLs as S3 does (s3rver: the signature over the object,
date and lifetime, and the date plus the lifetime not yet past). Deleting the job removes its objects from the
bucket, and a URL handed out before no longer fetches anything."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlparse

import boto3
import httpx
import pytest
from botocore.config import Config

from tests.conftest import tiny_cnn_onnx

QUICK = {"signal": "l2_norm", "target": {"macs": 0.5}, "measure": {"repeats": 3}}


def _s3_error(r: httpx.Response) -> str:
    """S3's error code of a refused GET (an XML body)."""
    assert r.status_code in (403, 404), (r.status_code, r.text)
    return r.text.split("<Code>", 1)[1].split("</Code>", 1)[0]


def _objects(endpoint: str, prefix: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=endpoint, config=Config(signature_version="s3v4"))
    return [o["Key"] for o in client.list_objects_v2(Bucket="secateurs-test", Prefix=prefix).get("Contents", [])]


@pytest.mark.slow
def test_redirect_gives_a_presigned_url_that_works_without_the_key_and_expires(s3_stack):
    stack, endpoint = s3_stack
    with stack.client() as c:
        model = c.post("/v1/models", files={"file": ("tiny.onnx", tiny_cnn_onnx())})
        assert model.status_code == 201, model.text
        job = c.post("/v1/jobs", json={"model_id": model.json()["id"], "spec": QUICK}).json()
        deadline = time.monotonic() + 120
        while (j := c.get(f"/v1/jobs/{job['id']}").json())["status"] not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, j
            time.sleep(0.3)
        assert j["status"] == "succeeded", j
        path = f"/v1/jobs/{job['id']}/artifacts/model.onnx"
        through_api = c.get(path)
        assert through_api.status_code == 200

        r = c.get(path, params={"redirect": "true", "expires_in": 60})
        assert r.status_code == 307 and r.headers["cache-control"] == "no-store", r.headers
        url = r.headers["location"]
        assert url.startswith(endpoint) and "sk_" not in url
        got = httpx.get(url)  # no key: the URL is the credential
        assert got.status_code == 200 and got.content == through_api.content
        assert got.headers["content-disposition"] == f'attachment; filename="{job["id"]}-model.onnx"'
        query = parse_qs(urlparse(url).query)
        assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Expires"] == ["60"]
        # a holder can neither extend it nor point it at another object: the signature covers both
        longer = url.replace("X-Amz-Expires=60", "X-Amz-Expires=3600")
        assert longer != url and _s3_error(httpx.get(longer)) == "SignatureDoesNotMatch"
        report = url.replace("/model.onnx?", "/report.json?")
        assert report != url and _s3_error(httpx.get(report)) == "SignatureDoesNotMatch"

        # the service's limit (SECATEURS_ARTIFACT_URL_SECONDS, 300) is the default and the most one may ask for
        for params in ({"redirect": "true"}, {"redirect": "true", "expires_in": 86400}):
            lifetime = parse_qs(urlparse(c.get(path, params=params).headers["location"]).query)["X-Amz-Expires"]
            assert lifetime == ["300"], (params, lifetime)
        # a URL a second long is refused by the server once that second is over (its date is to the second)
        short = c.get(path, params={"redirect": "true", "expires_in": 1}).headers["location"]
        time.sleep(2.1)
        expired = httpx.get(short)
        assert _s3_error(expired) == "AccessDenied" and "Request has expired" in expired.text
        assert c.get(path, params={"redirect": "true", "expires_in": 0}).status_code == 422

    other = stack.new_key("tenant-artifact-urls")
    with stack.client(other) as c:
        r = c.get(path, params={"redirect": "true"})
        assert r.status_code == 404 and "location" not in r.headers
        assert c.delete(f"/v1/jobs/{job['id']}").status_code == 404

    with stack.client() as c:  # deleted: its objects leave the bucket, and the URL handed out fetches nothing
        key = urlparse(url).path.split("/", 2)[2]  # /bucket/artifacts/<tenant>/jobs/<job>/<attempt>/model.onnx
        jobs_prefix = key[:key.index(f"/jobs/{job['id']}/")] + f"/jobs/{job['id']}/"
        assert sorted(k.rsplit("/", 1)[1] for k in _objects(endpoint, jobs_prefix)) == ["model.onnx", "report.json"]
        assert c.delete(f"/v1/jobs/{job['id']}").status_code == 204
        assert _objects(endpoint, jobs_prefix) == []
        assert _s3_error(httpx.get(url)) == "NoSuchKey"
        assert c.delete(f"/v1/models/{model.json()['id']}").status_code == 204
        assert not [k for k in _objects(endpoint, "artifacts/") if model.json()["id"] in k]
