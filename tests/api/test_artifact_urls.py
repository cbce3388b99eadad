"""Artifacts leave the service only through the API (with the key) or, on S3 storage, by a short-lived presigned
URL: `GET /v1/jobs/{id}/artifacts/{name}?redirect=true` answers 307 to it. Tested on the embedded stack with its
storage on the loopback S3 endpoint (moto)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from unittest import mock
from urllib.parse import parse_qs, urlparse

import boto3
import httpx
import pytest
from botocore.config import Config

from tests.conftest import tiny_cnn_onnx

QUICK = {"signal": "l2_norm", "target": {"macs": 0.5}, "measure": {"repeats": 3}}


def _signed_at(url: str) -> datetime:
    return datetime.strptime(parse_qs(urlparse(url).query)["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def _s3_accepts(url: str, endpoint: str, now: datetime) -> bool:
    """What S3 checks of a presigned GET (moto checks neither): the signature over the request, its date and its
    lifetime, made with the service's secret, and the date plus the lifetime not yet past. The signature is
    recomputed by botocore, at the URL's own date, from the URL's object and lifetime: equal only if nothing
    in it (key, lifetime, date) was changed."""
    query = parse_qs(urlparse(url).query)
    seconds = int(query["X-Amz-Expires"][0])
    bucket, _, key = urlparse(url).path.lstrip("/").partition("/")
    client = boto3.client("s3", endpoint_url=endpoint, config=Config(signature_version="s3v4"))
    with mock.patch("botocore.auth.get_current_datetime", return_value=_signed_at(url).replace(tzinfo=None)):
        again = client.generate_presigned_url("get_object", ExpiresIn=seconds, Params={
            "Bucket": bucket, "Key": key, "ResponseContentDisposition": query["response-content-disposition"][0]})
    signed = parse_qs(urlparse(again).query)["X-Amz-Signature"] == query["X-Amz-Signature"]
    return signed and (now - _signed_at(url)).total_seconds() < seconds


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
        now = datetime.now(UTC)
        assert _s3_accepts(url, endpoint, now)
        assert not _s3_accepts(url, endpoint, _signed_at(url) + timedelta(seconds=61))
        longer = url.replace("X-Amz-Expires=60", "X-Amz-Expires=3600")  # a holder cannot extend it
        assert longer != url and not _s3_accepts(longer, endpoint, now)

        # the service's limit (SECATEURS_ARTIFACT_URL_SECONDS, 300) is the default and the most one may ask for
        for params in ({"redirect": "true"}, {"redirect": "true", "expires_in": 86400}):
            lifetime = parse_qs(urlparse(c.get(path, params=params).headers["location"]).query)["X-Amz-Expires"]
            assert lifetime == ["300"], (params, lifetime)
        # a URL a second long is refused once that second is over
        short = c.get(path, params={"redirect": "true", "expires_in": 1}).headers["location"]
        time.sleep(1.5)
        assert not _s3_accepts(short, endpoint, datetime.now(UTC))
        assert c.get(path, params={"redirect": "true", "expires_in": 0}).status_code == 422

    other = stack.new_key("tenant-artifact-urls")
    with stack.client(other) as c:
        r = c.get(path, params={"redirect": "true"})
        assert r.status_code == 404 and "location" not in r.headers
