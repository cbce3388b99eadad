"""Checking a webhook from the service on the receiving end (Standard Webhooks, https://www.standardwebhooks.com).

    from secateurs.client.webhooks import verify
    event = verify(request.body, request.headers, secret)   # secret: GET /v1/webhooks/secret, "whsec_..."
    if event["type"] == "job.succeeded": ...

The signature is `v1,<base64 HMAC-SHA256 of "webhook-id.webhook-timestamp.body">` keyed by the secret;
a timestamp too far from now is refused, so a captured delivery cannot be replayed later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

TOLERANCE_SECONDS = 300


class WebhookVerificationError(ValueError):
    """The delivery is not from the service holding this secret, was altered, or is too old."""


def verify(body: bytes | str, headers: Mapping[str, str], secret: str, *,
           tolerance: float = TOLERANCE_SECONDS, now: float | None = None) -> dict[str, Any]:
    """The event (`{"type": "job.succeeded", "timestamp": ..., "data": {job}}`) when the signature holds."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signatures = (lower.get(h, "") for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not (msg_id and stamp and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        sent = int(stamp)
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp {stamp!r} is not a number") from None
    if abs((time.time() if now is None else now) - sent) > tolerance:
        raise WebhookVerificationError(f"webhook-timestamp is more than {tolerance:.0f} s from now")
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise WebhookVerificationError("the secret is not a whsec_ secret from GET /v1/webhooks/secret") from None
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{sent}.".encode() + raw, hashlib.sha256).digest()).decode()
    for candidate in signatures.split():  # several while a secret is being rotated
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return dict(json.loads(raw))
    raise WebhookVerificationError("no signature matches: wrong secret, or the body was altered")
