"""The signal catalogue, health, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from secateurs.db.models import Job
from secateurs.db.session import sessions
from secateurs.pruning.catalog import COMPOSE_AXES, SIGNALS
from sqlalchemy import func, select, text

from ..metrics import JOBS, REGISTRY
from ..problems import problem
from .dashboard import router as dashboard_router

router = APIRouter()
router.include_router(dashboard_router)


@router.get("/v1/signals", summary="The pruning signals and the taxonomy's axes")
def list_signals() -> dict[str, Any]:
    return {"data": [s.as_dict() for s in SIGNALS.values()], "compose": COMPOSE_AXES, "next_cursor": None}


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Database, broker and storage are reachable")
def readyz(request: Request) -> Any:
    state = request.app.state
    checks: dict[str, str] = {}
    for name, check in (("database", lambda: _db(state.settings)), ("broker", state.ping_broker),
                        ("storage", state.storage.ping)):
        try:
            check()
            checks[name] = "ok"
        except Exception as e:  # report every dependency, not just the first one down
            checks[name] = f"unavailable: {type(e).__name__}"
    if all(v == "ok" for v in checks.values()):
        return {"status": "ready", "checks": checks}
    return problem(503, "not ready: " + ", ".join(k for k, v in checks.items() if v != "ok"), code="not-ready",
                   checks=checks, headers={"Retry-After": "2"})


def _db(settings: Any) -> None:
    with sessions(settings)() as s:
        s.execute(text("SELECT 1"))


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    try:
        with sessions(request.app.state.settings)() as s:
            counts = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        for status in ("queued", "running", "succeeded", "failed", "cancelled"):
            JOBS.labels(status=status).set(counts.get(status, 0))
    except Exception:  # metrics still answer while the database is down
        pass
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
