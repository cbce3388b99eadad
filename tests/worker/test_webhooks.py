"""Webhooks from a real job run to a real HTTP receiver on loopback, checked as a receiver would:
Standard Webhooks headers and an HMAC signature made with the tenant's secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from secateurs.db.models import Job, Tenant
from secateurs.db.session import migrate, sessions
from secateurs.db.settings import Settings
from secateurs.worker.runner import run_job
from secateurs.worker.webhooks import tenant_secret

from .test_runner import add_job, add_model


class Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["content-length"]))
        Receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    Receiver.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def test_a_job_sends_signed_running_progress_and_succeeded_webhooks(tmp_path, receiver, resnet20_weights):
    settings = Settings(home=tmp_path, webhook_allow_private=True)
    settings.ensure_home()
    migrate(settings)
    with sessions(settings)() as s:
        tenant = Tenant(name="hooks")
        s.add(tenant)
        s.commit()
        tenant_id, secret = tenant.id, tenant_secret(s, tenant)
    job_id = add_job(settings, tenant_id, add_model(settings, tenant_id, resnet20_weights))
    with sessions(settings)() as s:
        job = s.get(Job, job_id)
        job.webhook_url = receiver
        s.commit()
    assert run_job(job_id, settings) == "succeeded"
    deadline = time.monotonic() + 30
    while not any(json.loads(b)["type"] == "job.succeeded" for _, b in Receiver.received):
        assert time.monotonic() < deadline, Receiver.received
        time.sleep(0.1)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    types = []
    for headers, body in Receiver.received:
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        assert headers["webhook-signature"] == f"v1,{expected}"
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 120
        event = json.loads(body)
        assert event["data"]["id"] == job_id
        types.append(event["type"])
    assert {"job.running", "job.progress", "job.succeeded"} <= set(types)
    done = next(json.loads(b) for _, b in Receiver.received if json.loads(b)["type"] == "job.succeeded")
    assert done["data"]["status"] == "succeeded" and done["data"]["metrics"]["macs_after"] > 0


def test_only_the_asked_for_event_types_are_sent(tmp_path, receiver):
    settings = Settings(home=tmp_path, webhook_allow_private=True)
    settings.ensure_home()
    migrate(settings)
    with sessions(settings)() as s:
        tenant = Tenant(name="hooks-filter")
        s.add(tenant)
        s.commit()
        tenant_id = tenant.id
    job_id = add_job(settings, tenant_id, add_model(settings, tenant_id, b"not a model" * 10))
    with sessions(settings)() as s:
        job = s.get(Job, job_id)
        job.webhook_url, job.webhook_events = receiver, {"types": ["job.failed"]}
        s.commit()
    assert run_job(job_id, settings) == "failed"
    deadline = time.monotonic() + 30
    while not Receiver.received:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(0.5)
    assert [json.loads(b)["type"] for _, b in Receiver.received] == ["job.failed"]
    error = json.loads(Receiver.received[0][1])["data"]["error"]
    assert error["type"] == "invalid-model" and error["message"], error  # the bytes are no ONNX file
