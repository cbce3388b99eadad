"""A receiver checks the service's webhooks with the SDK's `verify`: deliveries made by the worker's own
signing and sending code to a local HTTP receiver, and every way a forged or replayed one is refused."""

from __future__ import annotations

import json
import time

import pytest
from secateurs import Client
from secateurs.client import WebhookVerificationError, verify_webhook
from secateurs.worker.webhooks import deliver, new_secret, sign

from tests.conftest import webhook_receiver

SECRET = new_secret()
EVENT = {"type": "job.succeeded", "timestamp": "2026-01-01T00:00:00", "data": {"id": "job_1", "status": "succeeded"}}


@pytest.fixture
def receiver():
    server, url, verified, _ = webhook_receiver([SECRET])
    yield url, verified
    server.shutdown()


def test_a_delivery_from_the_service_verifies_at_the_receiver(receiver):
    url, verified = receiver
    assert deliver(url, SECRET, EVENT, allow_private=True, delays=(0.0,))
    assert verified == [EVENT]
    # the same receiver turns away what another tenant's secret signed
    assert not deliver(url, new_secret(), EVENT, allow_private=True, delays=(0.0,))
    assert verified == [EVENT]


def _signed(body: bytes, secret: str = SECRET, ts: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    return {"Webhook-Id": "msg_1", "Webhook-Timestamp": str(ts), "Webhook-Signature": sign(secret, "msg_1", ts, body)}


def test_forged_altered_stale_and_unsigned_deliveries_are_refused():
    body = json.dumps(EVENT).encode()
    assert verify_webhook(body, _signed(body), SECRET) == EVENT
    rotating = _signed(body)
    rotating["Webhook-Signature"] = f"v1,{'A' * 44} {rotating['Webhook-Signature']}"  # during a secret rotation
    assert verify_webhook(body, rotating, SECRET) == EVENT
    cases = {
        "altered": (body.replace(b"succeeded", b"failed"), _signed(body)),
        "another secret": (body, _signed(body, secret=new_secret())),
        "stale": (body, _signed(body, ts=int(time.time()) - 3600)),
        "unsigned": (body, {"webhook-id": "msg_1", "webhook-timestamp": str(int(time.time()))}),
    }
    for name, (b, headers) in cases.items():
        with pytest.raises(WebhookVerificationError):
            verify_webhook(b, headers, SECRET)
            pytest.fail(name)


@pytest.mark.slow
def test_the_sdk_fetches_the_tenants_signing_secret(embedded, tenant_key):
    with Client(embedded.url, tenant_key) as client:
        secret = client.webhook_secret()
        assert secret.startswith("whsec_") and client.webhook_secret() == secret
    body = json.dumps(EVENT).encode()
    assert verify_webhook(body, _signed(body, secret=secret), secret) == EVENT
