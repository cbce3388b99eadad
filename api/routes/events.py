"""`GET /v1/events`: one Server-Sent Events stream of every job of the tenant.

A page that lists jobs follows all of them on one connection instead of one stream per job (browsers
allow about six connections per origin over HTTP/1.1). Each event carries its `job_id`; ids are the same
ones `/v1/jobs/{id}/events` uses, so `Last-Event-ID` resumes either stream.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from secateurs.db.models import Job, JobEvent
from secateurs.db.session import sessions
from sqlalchemy import func, select

from ..deps import CurrentTenant
from ..pagination import MAX_EVENT_ID, event_id
from ..schemas import event_out

router = APIRouter()
POLL_SECONDS = 0.5
KEEP_ALIVE_SECONDS = 15.0


def _tenant_events(settings: Any, tenant_id: str, after: int, limit: int) -> list[JobEvent]:
    with sessions(settings)() as s:
        return list(s.scalars(select(JobEvent).join(Job, Job.id == JobEvent.job_id)
                              .where(Job.tenant_id == tenant_id, JobEvent.id > after)
                              .order_by(JobEvent.id).limit(limit)))


def _newest_id(settings: Any, tenant_id: str) -> int:
    with sessions(settings)() as s:
        return s.execute(select(func.max(JobEvent.id)).join(Job, Job.id == JobEvent.job_id)
                         .where(Job.tenant_id == tenant_id)).scalar_one() or 0


@router.get("/events", summary="Every job's events, as one Server-Sent Events stream")
async def tenant_events(request: Request, tenant: CurrentTenant,
                        after: int | None = Query(None, ge=0, le=MAX_EVENT_ID),
                        last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
    """Events of all the tenant's jobs, oldest first, each with its `job_id`. Starts after `Last-Event-ID`,
    else after `?after=<event id>`, else with the events that happen from now on. Never ends by itself."""
    settings = request.app.state.settings
    resumed = event_id(last_event_id) if last_event_id else None  # an id of ours, or ignored
    if resumed is not None:
        after = resumed
    # fixed before the headers go out: a page that lists jobs once the stream answers misses nothing
    start = after if after is not None else await run_in_threadpool(_newest_id, settings, tenant.id)

    async def stream():  # noqa: ANN202
        cursor, idle = start, 0.0
        yield "retry: 2000\n\n"
        while not await request.is_disconnected():
            rows = await run_in_threadpool(_tenant_events, settings, tenant.id, cursor, 200)
            for e in rows:
                cursor = e.id
                yield f"id: {e.id}\nevent: {e.type}\ndata: {json.dumps(event_out(e))}\n\n"
            if rows:
                idle = 0.0
                continue
            await asyncio.sleep(POLL_SECONDS)
            idle += POLL_SECONDS
            if idle >= KEEP_ALIVE_SECONDS:
                idle = 0.0
                yield ": keep-alive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
