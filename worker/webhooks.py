"""Webhooks on the Standard Webhooks spec (https://www.standardwebhooks.com): `webhook-id`,
`webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed by the
tenant's `whsec_` secret. Delivery is best effort with a few retries, in a background thread: a slow or
dead receiver never holds up a job. Targets on private, loopback or link-local addresses are refused
unless SECATEURS_WEBHOOK_ALLOW_PRIVATE=true (checked at submission and again at each delivery)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlparse

from secateurs.db.models import Job, Tenant, job_error, now
from secateurs.db.session import sessions
from secateurs.db.settings import Settings

log = logging.getLogger("secateurs.webhooks")
EVENT_TYPES = ("job.running", "job.progress", "job.succeeded", "job.failed", "job.cancelled")
RETRY_DELAYS = (0.0, 1.0, 5.0, 25.0)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def check_target(url: str, allow_private: bool) -> None:
    """Raise ValueError saying why `url` may not receive webhooks."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError("must be an http(s) URL with a host")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80))
    except (socket.gaierror, UnicodeError):
        raise ValueError(f"cannot resolve {parsed.hostname!r}") from None
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if not addr.is_global:
            raise ValueError(f"{parsed.hostname} resolves to a private or loopback address ({addr}); "
                             "such targets are refused unless SECATEURS_WEBHOOK_ALLOW_PRIVATE=true")


def tenant_secret(session: Any, tenant: Tenant) -> str:
    """The tenant's signing secret, made on first use."""
    if not tenant.webhook_secret:
        tenant.webhook_secret = new_secret()
        session.commit()
    return tenant.webhook_secret


def notify(settings: Settings, job_id: str, event_type: str, data: dict[str, Any] | None = None) -> None:
    """Send `event_type` for the job if it asked for it; returns at once (delivery runs in a thread)."""
    try:
        with sessions(settings)() as s:
            job = s.get(Job, job_id)
            if job is None or not job.webhook_url:
                return
            wanted = (job.webhook_events or {}).get("types")
            if wanted and event_type not in wanted:
                return
            tenant = s.get(Tenant, job.tenant_id)
            assert tenant is not None
            secret = tenant_secret(s, tenant)
            payload = {"type": event_type, "timestamp": now().isoformat(), "data": {
                "id": job.id, "object": "job", "model_id": job.model_id, "status": job.status, "stage": job.stage,
                "progress": job.progress, "error": job_error(job), "attempts": job.attempts, **(data or {})}}
            if event_type == "job.succeeded":
                payload["data"]["metrics"] = job.metrics
            url = job.webhook_url
    except Exception:
        log.warning("webhook %s for job %s not sent", event_type, job_id, exc_info=True)
        return
    thread = threading.Thread(target=deliver, args=(url, secret, payload, settings.webhook_allow_private),
                              name=f"webhook-{job_id}", daemon=True)
    thread.start()


def deliver(url: str, secret: str, payload: dict[str, Any], allow_private: bool,
            delays: tuple[float, ...] = RETRY_DELAYS) -> bool:
    import httpx

    body = json.dumps(payload, separators=(",", ":")).encode()
    msg_id = f"msg_{uuid.uuid4().hex}"
    for delay in delays:
        time.sleep(delay)
        try:
            check_target(url, allow_private)  # again: the name may resolve elsewhere now
            ts = int(time.time())
            r = httpx.post(url, content=body, timeout=5.0, follow_redirects=False, headers={
                "content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(ts),
                "webhook-signature": sign(secret, msg_id, ts, body), "user-agent": "secateurs-webhooks"})
            if 200 <= r.status_code < 300:
                return True
            log.warning("webhook %s to %s answered %s", payload["type"], url, r.status_code)
        except ValueError as e:
            log.warning("webhook %s to %s refused: %s", payload["type"], url, e)
            return False
        except Exception as e:
            log.warning("webhook %s to %s failed: %s", payload["type"], url, e)
    return False
