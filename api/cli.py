"""`secateurs up`, `api`, `worker` and `keys create|list|revoke`: running the service."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from typing import Any


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("up", help="the embedded stack: API and a worker, SQLite, local storage, no other server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(run=run_up)
    p = sub.add_parser("api", help="the API server (production: point SECATEURS_* at PostgreSQL, Redis, S3)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1,
                   help="uvicorn worker processes: one per core in production (README), 1 by default")
    p.set_defaults(run=run_api)
    p = sub.add_parser("worker", help="a Celery worker running pruning jobs (one job at a time per process)")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    p.set_defaults(run=run_worker)
    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", metavar="ACTION")
    keys.required = True
    p = keys.add_parser("create", help="create an API key for a tenant (printed once, stored hashed)")
    p.add_argument("--tenant", required=True)
    p.set_defaults(run=run_keys_create)
    p = keys.add_parser("list", help="a tenant's keys: id, prefix, created, revoked (never the key)")
    p.add_argument("--tenant", required=True)
    p.set_defaults(run=run_keys_list)
    p = keys.add_parser("revoke", help="revoke a key by its id (key_...) or the prefix `keys list` shows; "
                        "API processes stop accepting it within SECATEURS_API_KEY_CACHE_SECONDS")
    p.add_argument("key", metavar="ID_OR_PREFIX")
    p.set_defaults(run=run_keys_revoke)


def create_key(tenant_name: str) -> str:
    from secateurs.db.models import ApiKey, Tenant
    from secateurs.db.session import migrate, session_scope
    from sqlalchemy import select

    from .deps import hash_key

    if not 1 <= len(tenant_name) <= 200:
        raise ValueError("tenant name must be 1 to 200 characters")
    migrate()
    key = "sk_" + secrets.token_urlsafe(32)
    with session_scope() as s:
        tenant = s.execute(select(Tenant).where(Tenant.name == tenant_name)).scalar_one_or_none()
        if tenant is None:
            tenant = Tenant(name=tenant_name)
            s.add(tenant)
            s.flush()
        s.add(ApiKey(tenant_id=tenant.id, prefix=key[:10], key_hash=hash_key(key)))
    return key


def run_keys_create(args: argparse.Namespace) -> int:
    try:
        key = create_key(args.tenant)
    except ValueError as e:
        print(f"secateurs: error: {e}", file=sys.stderr)
        return 2
    print(f"API key for tenant {args.tenant!r} (shown once; store it now):", file=sys.stderr)
    print(key)
    return 0


def list_keys(tenant_name: str) -> list[dict[str, Any]]:
    from secateurs.db.models import ApiKey, Tenant
    from secateurs.db.session import migrate, session_scope
    from sqlalchemy import select

    migrate()
    with session_scope() as s:
        rows = s.execute(select(ApiKey).join(Tenant, Tenant.id == ApiKey.tenant_id)
                         .where(Tenant.name == tenant_name).order_by(ApiKey.created_at)).scalars()
        return [{"id": k.id, "prefix": k.prefix, "created_at": k.created_at.isoformat(), "revoked": k.revoked}
                for k in rows]


def revoke_key(ref: str) -> str:
    """Revoke the key whose id or shown prefix is `ref`; returns its id. A prefix matching several keys is
    refused (ask by id), as is one matching none."""
    from secateurs.db.models import ApiKey
    from secateurs.db.session import migrate, session_scope
    from sqlalchemy import or_, select

    migrate()
    with session_scope() as s:
        found = list(s.execute(select(ApiKey).where(or_(ApiKey.id == ref, ApiKey.prefix == ref))).scalars())
        if not found:
            raise ValueError(f"no API key with id or prefix {ref!r}")
        if len(found) > 1:
            raise ValueError(f"{len(found)} keys have the prefix {ref!r}; revoke by id (secateurs keys list)")
        found[0].revoked = True
        return found[0].id


def run_keys_list(args: argparse.Namespace) -> int:
    keys = list_keys(args.tenant)
    if not keys:
        print(f"secateurs: error: tenant {args.tenant!r} has no keys", file=sys.stderr)
        return 2
    for k in keys:
        print(f"{k['id']}  {k['prefix']}...  {k['created_at']}  {'revoked' if k['revoked'] else 'active'}")
    return 0


def run_keys_revoke(args: argparse.Namespace) -> int:
    try:
        key_id = revoke_key(args.key)
    except ValueError as e:
        print(f"secateurs: error: {e}", file=sys.stderr)
        return 2
    print(f"revoked {key_id}", file=sys.stderr)
    return 0


def _worker_cmd(pool: str, concurrency: int) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "secateurs.worker.app", "worker", f"--pool={pool}",
            f"--concurrency={concurrency}", "-Q", "secateurs", "--loglevel=WARNING", "--without-gossip",
            "--without-mingle", "--without-heartbeat"]


def run_worker(args: argparse.Namespace) -> int:
    os.execv(sys.executable, _worker_cmd(args.pool, args.concurrency))
    return 0  # not reached


def _serve(host: str, port: int, workers: int = 1) -> None:
    import uvicorn

    from .server import uvicorn_options

    uvicorn.run("secateurs.api.main:app", host=host, port=port, workers=workers, log_level="warning",
                timeout_graceful_shutdown=5, limit_max_requests=None, **uvicorn_options())


def run_api(args: argparse.Namespace) -> int:
    from secateurs.db.session import migrate

    migrate()
    _serve(args.host, args.port, args.workers)
    return 0


def run_up(args: argparse.Namespace) -> int:
    import threading

    from secateurs.db.session import migrate
    from secateurs.db.settings import get_settings

    settings = get_settings()
    migrate(settings)
    print(f"secateurs: embedded stack at http://{args.host}:{args.port} (data in {settings.home})", file=sys.stderr)
    state: dict[str, Any] = {"worker": subprocess.Popen(_worker_cmd("solo", 1)), "stopping": False}

    def supervise() -> None:
        # A worker that dies (killed, out of memory) is started again; its job comes back through the
        # lease sweeper, not through the broker's visibility timeout.
        while not state["stopping"]:
            if state["worker"].poll() is not None and not state["stopping"]:
                print("secateurs: the worker exited; starting a new one", file=sys.stderr)
                state["worker"] = subprocess.Popen(_worker_cmd("solo", 1))
            time.sleep(1.0)

    def stop(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    threading.Thread(target=supervise, daemon=True).start()
    try:
        _requeue_waiting()
        _serve(args.host, args.port)
    except KeyboardInterrupt:
        pass
    finally:
        state["stopping"] = True
        worker = state["worker"]
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
    return 0


def _requeue_waiting() -> None:
    """Jobs left queued or running while nothing ran (the embedded stack was down) go back to the broker."""
    from secateurs.db.settings import get_settings
    from secateurs.worker.app import make_celery
    from secateurs.worker.runner import sweep

    settings = get_settings()
    celery = make_celery(settings)
    sweep(settings, lambda job_id: celery.send_task("secateurs.run_job", args=[job_id]), waiting_too=True)
