"""Jobs: created after validation, enqueued after the commit, watched through events, downloaded, deleted."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from secateurs.db.models import (
    Artifact,
    Dataset,
    IdempotencyRecord,
    Job,
    JobEvent,
    Model,
    Tenant,
    new_id,
    now,
)
from secateurs.db.quotas import release_storage
from secateurs.db.reads import Read, read_one_async
from secateurs.db.session import sessions
from secateurs.worker.webhooks import EVENT_TYPES, check_target, notify, tenant_secret
from sqlalchemy import bindparam, func, select, update
from sqlalchemy import delete as sql_delete
from sqlalchemy.exc import IntegrityError

from .. import pagination
from ..deps import CurrentTenant, SessionDep, StorageDep
from ..problems import Problem, field_code
from ..schemas import TERMINAL, JobCreate, event_out, job_out, json_object
from .events import router as events_router
from .models import delete_objects, owned

router = APIRouter(prefix="/v1")
router.include_router(events_router)  # the tenant-wide stream of every job's events
log = logging.getLogger("secateurs.api")
ARTIFACTS = ("model.onnx", "report.json")


def _invalid(field: str, message: str) -> Problem:
    return Problem(422, f"{field}: {message}", code=field_code(field), errors=[{"field": field, "message": message}])


def _check(body: JobCreate, tenant_id: str, session: SessionDep, settings: Any) -> None:
    model = session.execute(select(Model).where(Model.id == body.model_id, Model.tenant_id == tenant_id)).scalar_one_or_none()
    if model is None:
        raise _invalid("model_id", f"no model {body.model_id!r}")
    spec = body.spec
    for name in ("calibration", "evaluation"):
        ref = getattr(spec, name).dataset_id
        if ref is None:
            continue
        ds = session.execute(select(Dataset).where(Dataset.id == ref, Dataset.tenant_id == tenant_id)).scalar_one_or_none()
        if ds is None:
            raise _invalid(f"spec.{name}.dataset_id", f"no dataset {ref!r}")
        why = _misfit(model.input_shape, ds.sample_shape, ds.samples if ds.labelled else None)
        if why is not None:
            raise _invalid(f"spec.{name}.dataset_id", why)
        if name == "calibration" and spec.needs_labels and not ds.labelled:
            raise _invalid("spec.calibration.dataset_id", "recovery finetune needs labelled data (a y array)")
    if spec.needs_data and spec.calibration.dataset_id is None:
        what = f"signal {spec.signal_name!r}" if spec.signal_needs != ["weights"] else f"recovery {spec.recovery.method!r}"
        raise _invalid("spec.calibration.dataset_id", f"{what} needs calibration data: upload an .npz to /v1/datasets")
    if body.webhook_events is not None:
        unknown = sorted(set(body.webhook_events) - set(EVENT_TYPES))
        if unknown:
            raise _invalid("webhook_events", f"unknown event types {unknown}; choose from {', '.join(EVENT_TYPES)}")
        if body.webhook_url is None:
            raise _invalid("webhook_url", "webhook_events needs a webhook_url")
    if body.webhook_url is not None:
        try:
            check_target(body.webhook_url, settings.webhook_allow_private)
        except ValueError as e:
            raise _invalid("webhook_url", str(e)) from None


def _misfit(model_shape: dict[str, Any], sample_shape: dict[str, Any], labels: int | None = None) -> str | None:
    """Why a dataset's arrays do not fit a model's inputs, or None: the arrays the engine will take (Dataset.bind: x
    for a model with one input, one key per input name for a model with several; the others are ignored) checked as
    it will check them. `labels`: how many the dataset has, if any. Rows stored before several inputs were taken
    have no `inputs` (datasets: x was checked whole at upload), nor `dtypes`/`arrays` before they were kept."""
    import numpy as np
    from secateurs.pruning.data import same_kind, used_keys

    model_inputs: dict[str, list[int]] = model_shape.get("inputs") or {}
    if not model_inputs:
        if not model_shape.get("shape"):
            return None
        model_inputs = {"x": model_shape["shape"]}
    dtypes: dict[str, str] = model_shape.get("dtypes") or {}
    data_inputs: dict[str, list[int]] = sample_shape.get("inputs") or {"x": sample_shape.get("shape") or []}
    arrays: dict[str, dict[str, Any]] = sample_shape.get("arrays") or {}
    keys = used_keys(list(model_inputs), list(arrays or data_inputs))
    if isinstance(keys, str):
        return keys.replace("the .npz", "the dataset")
    several = len(keys) > 1
    counts: dict[str, int] = {}
    for name, key in zip(model_inputs, keys, strict=True):
        shape, sample, info = model_inputs[name], data_inputs.get(key), arrays.get(key)
        if info is not None:
            dtype = np.dtype(info["dtype"])
            if dtype.kind not in "fiub":
                return f"key {key!r} holds {dtype}: model inputs are numbers (float, integer or bool)"
            if name in dtypes and not same_kind(dtype, np.dtype(dtypes[name])):
                return f"key {key!r} holds {dtype}, but the model's input {name!r} takes {dtypes[name]}"
            if not info["finite"]:
                return f"key {key!r} holds NaN or infinite values"
            if info["samples"] is not None:
                counts[key] = info["samples"]
        if sample is None or len(sample) != len(shape) - 1 or any(
                want not in (-1, got) for want, got in zip(shape[1:], sample, strict=False)):
            what = f"key {key!r}: samples" if several else "samples"
            return f"{what} of shape {sample} do not fit the model's input {shape}"
    for (k0, n0), (key, n) in itertools.pairwise(counts.items()):
        if n != n0:
            return f"key {key!r} has {n} samples, {k0!r} {n0}: every input needs the same number"
    if labels is not None and counts and (n := next(iter(counts.values()))) != labels:
        return f"y has {labels} labels, but key {next(iter(counts))!r} has {n} samples"
    return None


@router.post("/jobs", status_code=201, summary="Create a pruning job")
def create_job(body: JobCreate, request: Request, tenant: CurrentTenant, session: SessionDep,
               idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> JSONResponse:
    digest = hashlib.sha256(json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
    if idempotency_key:
        rec = session.get(IdempotencyRecord, (tenant.id, idempotency_key))
        if rec is not None:
            if rec.request_hash != digest:
                raise Problem(422, "Idempotency-Key was used with a different request body", code="idempotency")
            return JSONResponse(rec.response, status_code=rec.status_code, headers={"Idempotent-Replayed": "true"})
    _check(body, tenant.id, session, request.app.state.settings)
    _within_limit(tenant.id, session, request.app.state.settings.max_active_jobs_per_tenant)
    job = Job(id=new_id("job"), tenant_id=tenant.id, model_id=body.model_id, spec=body.spec.model_dump(mode="json"),
              status="queued", webhook_url=body.webhook_url,
              webhook_events={"types": body.webhook_events} if body.webhook_events else None)
    session.add(job)
    session.flush()
    _still_there(body, tenant.id, session)
    session.add(JobEvent(job_id=job.id, type="queued", stage="queued", progress=0.0, message="job queued"))
    out = job_out(job)
    if idempotency_key:
        session.add(IdempotencyRecord(tenant_id=tenant.id, key=idempotency_key, request_hash=digest,
                                      status_code=201, response=out))
    try:
        session.commit()
    except IntegrityError:  # a concurrent request with the same key won: answer as it did
        session.rollback()
        rec = session.get(IdempotencyRecord, (tenant.id, idempotency_key))
        if rec is None or rec.request_hash != digest:
            raise Problem(422, "Idempotency-Key was used with a different request body", code="idempotency") from None
        return JSONResponse(rec.response, status_code=rec.status_code, headers={"Idempotent-Replayed": "true"})
    enqueue(request, job.id)  # after the commit: the worker always finds the row
    return JSONResponse(out, status_code=201)


def _still_there(body: JobCreate, tenant_id: str, session: SessionDep) -> None:
    """The job's model and datasets, read again after its row was inserted, locked against a concurrent DELETE
    (`FOR SHARE` on PostgreSQL; on SQLite the insert already holds the write lock): one deleted between `_check`
    and the insert is refused here, and one deleted after is refused there (409), never a queued job on a file
    that is gone."""
    refs = [("model_id", Model, body.model_id)] + [
        (f"spec.{name}.dataset_id", Dataset, ref) for name in ("calibration", "evaluation")
        if (ref := getattr(body.spec, name).dataset_id) is not None]
    for field, table, ref in refs:
        if session.execute(select(table.id).where(table.id == ref, table.tenant_id == tenant_id)
                           .with_for_update(read=True)).first() is None:
            session.rollback()
            raise _invalid(field, f"no {table.__tablename__[:-1]} {ref!r}")


def _within_limit(tenant_id: str, session: SessionDep, limit: int) -> None:
    """A tenant's queued and running jobs are capped, so that one pipeline cannot fill every worker."""
    active = session.execute(select(func.count()).select_from(Job).where(
        Job.tenant_id == tenant_id, Job.status.in_(("queued", "running")))).scalar_one()
    if active >= limit:
        raise Problem(429, f"{active} of your jobs are queued or running, the limit is {limit}: wait for one to "
                           "finish or cancel one", code="too-many-jobs", headers={"Retry-After": "30"})


def enqueue(request: Request, job_id: str) -> None:
    try:
        request.app.state.enqueue(job_id)
    except Exception:  # the row stays queued; the sweeper hands it to the broker when it is back
        log.exception("could not enqueue job %s", job_id)


@router.get("/jobs", summary="List jobs")
def list_jobs(tenant: CurrentTenant, session: SessionDep, cursor: str | None = None,
              status: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None,
              model_id: str | None = None, limit: int = Query(50, ge=1, le=pagination.MAX_LIMIT)) -> dict[str, Any]:
    stmt = select(Job).where(Job.tenant_id == tenant.id)
    if status:
        stmt = stmt.where(Job.status == status)
    if model_id:
        stmt = stmt.where(Job.model_id == model_id)
    return pagination.result(list(session.scalars(pagination.page(stmt, Job, cursor, limit))), limit, job_out)


# Built once: building a statement per request costs more than running it (SQLAlchemy caches its SQL, not its making)
_OF_TENANT = (Job.id == bindparam("job_id"), Job.tenant_id == bindparam("tenant_id"))
_JOB_OF_TENANT = Read(select(Job.__table__).where(*_OF_TENANT))
_JOB_ID_OF_TENANT = Read(select(Job.id).where(*_OF_TENANT))


@router.get("/jobs/{job_id}", summary="Get a job", response_model=dict[str, Any])
async def get_job(job_id: str, request: Request, tenant: CurrentTenant) -> Response:
    # The status poll, the hottest route: one autocommit SELECT scoped to the tenant (on PostgreSQL from the
    # event loop, no thread), and the dict sent as is (job_out builds it; response validation would only walk
    # it again).
    row = await read_one_async(request.app.state.settings, _JOB_OF_TENANT, {"job_id": job_id, "tenant_id": tenant.id})
    if row is None:
        raise Problem(404, f"no job {job_id!r}", code="not-found")
    return json_object(job_out(row))


@router.post("/jobs/{job_id}/cancel", summary="Cancel a job")
def cancel_job(job_id: str, request: Request, tenant: CurrentTenant, session: SessionDep) -> dict[str, Any]:
    job = owned(session, Job, job_id, tenant.id)
    done = session.execute(
        update(Job).where(Job.id == job.id, Job.status == "queued")
        .values(status="cancelled", finished_at=now(), cancel_requested=True)
    ).rowcount
    if done:
        session.add(JobEvent(job_id=job.id, type="cancelled", stage="cancelled", message="cancelled before it started"))
    # on the row, not on the status read above: a worker may have claimed the job in between
    elif session.execute(update(Job).where(Job.id == job.id, Job.status == "running")
                         .values(cancel_requested=True)).rowcount:
        session.add(JobEvent(job_id=job.id, type="cancel_requested", message="cancel requested; stopping at the next step"))
    session.commit()
    session.refresh(job)
    if done:
        notify(request.app.state.settings, job.id, "job.cancelled")
    return job_out(job)


@router.delete("/jobs/{job_id}", status_code=204, response_class=Response,
               summary="Delete a finished job, its events and its artifacts (409 while queued or running)")
def delete_job(job_id: str, tenant: CurrentTenant, session: SessionDep, storage: StorageDep) -> Response:
    job = owned(session, Job, job_id, tenant.id)
    if job.status not in TERMINAL:
        raise Problem(409, f"job {job.id} is {job.status}: cancel it first (POST /v1/jobs/{job.id}/cancel), then "
                           "delete it once it is cancelled", code="job-active")
    arts = list(session.execute(select(Artifact.storage_key, Artifact.size_bytes).where(Artifact.job_id == job.id)))
    # Terminal statuses are final (every writer of a job row requires it `queued` or `running`), so the status read
    # above still holds. Its events and artifacts go first: they name the job (foreign keys).
    session.execute(sql_delete(Artifact).where(Artifact.job_id == job.id))
    session.execute(sql_delete(JobEvent).where(JobEvent.job_id == job.id))
    if not session.execute(sql_delete(Job).where(Job.id == job.id, Job.tenant_id == tenant.id,
                                                 Job.status.in_(TERMINAL))
                           .execution_options(synchronize_session=False)).rowcount:
        session.rollback()  # deleted by a concurrent request since it was read
        raise Problem(404, f"no job {job_id!r}", code="not-found")
    release_storage(session, tenant.id, sum(a.size_bytes for a in arts))
    delete_objects(session, storage, [a.storage_key for a in arts])  # commits, then deletes the files
    return Response(status_code=204)


@router.get("/webhooks/secret", summary="The tenant's webhook signing secret (whsec_...)")
def webhook_secret(tenant: CurrentTenant, session: SessionDep) -> dict[str, Any]:
    row = session.get(Tenant, tenant.id)
    assert row is not None  # the key was just verified; tenants are never deleted
    return {"object": "webhook_secret", "secret": tenant_secret(session, row),
            "signature": "Standard Webhooks: webhook-signature = v1,base64(HMAC-SHA256(secret, id.timestamp.body))"}


def _events_after(settings: Any, job_id: str, after: int, limit: int) -> tuple[list[JobEvent], str]:
    """Events after `after`, and the job's status read *before* them: the terminal event is committed
    with the terminal status, so when the status read is terminal the rows read next include that event."""
    with sessions(settings)() as s:
        status = s.execute(select(Job.status).where(Job.id == job_id)).scalar_one()
        s.commit()  # end the read so the next statement sees everything committed since
        rows = list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after)
                              .order_by(JobEvent.id).limit(limit)))
        return rows, status


@router.get("/jobs/{job_id}/events", summary="Job events: Server-Sent Events, or a JSON page")
async def job_events(job_id: str, request: Request, tenant: CurrentTenant,
                     cursor: str | None = None, after: int = Query(0, ge=0, le=pagination.MAX_EVENT_ID),
                     limit: int = Query(100, ge=1, le=1000),
                     last_event_id: Annotated[str | None, Header()] = None) -> Any:
    """Oldest first. The JSON page's `next_cursor` (an event id) is set while more events exist;
    pass it back as `?cursor=` (`?after=<event id>` is the same thing)."""
    settings = request.app.state.settings
    # not through a request session: its query would run on the event loop, where a wait for a pooled
    # connection (or an SQLite lock) stops every other request of the process
    if await read_one_async(settings, _JOB_ID_OF_TENANT, {"job_id": job_id, "tenant_id": tenant.id}) is None:
        raise Problem(404, f"no job {job_id!r}", code="not-found")
    if cursor is not None:
        parsed = pagination.event_id(cursor)
        if parsed is None:
            raise _invalid("cursor", "not a cursor this API issued")
        after = parsed
    if "text/event-stream" not in request.headers.get("accept", ""):
        rows, _ = await run_in_threadpool(_events_after, settings, job_id, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return {"data": [event_out(e) for e in rows], "next_cursor": str(rows[-1].id) if more else None}
    resumed = pagination.event_id(last_event_id) if last_event_id else None  # an id of ours, or ignored
    start = after if resumed is None else resumed

    async def stream():  # noqa: ANN202
        cursor, idle = start, 0.0
        yield "retry: 2000\n\n"
        while True:
            rows, status = await run_in_threadpool(_events_after, settings, job_id, cursor, 200)
            for e in rows:
                cursor = e.id
                yield f"id: {e.id}\nevent: {e.type}\ndata: {json.dumps(event_out(e))}\n\n"
            if status in TERMINAL and not rows:
                return
            if await request.is_disconnected():
                return
            if rows:
                idle = 0.0
                continue
            await asyncio.sleep(0.25)
            idle += 0.25
            if idle >= 15:
                idle = 0.0
                yield ": keep-alive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/jobs/{job_id}/artifacts/{name}", summary="Download an artifact (model.onnx, report.json)",
            responses={307: {"description": "with redirect=true on S3 storage: Location is a presigned URL of the file"}})
def get_artifact(job_id: str, name: str, request: Request, tenant: CurrentTenant, session: SessionDep,
                 storage: StorageDep,
                 redirect: bool = Query(False, description="On S3 storage, answer 307 to a short-lived presigned URL "
                                        "of the file instead of sending it (elsewhere the file is sent as usual)."),
                 expires_in: int | None = Query(None, ge=1, le=7 * 24 * 3600, description="Seconds the presigned "
                                                "URL lives; at most, and by default, the service's limit.")) -> Any:
    job = owned(session, Job, job_id, tenant.id)
    if name not in ARTIFACTS:
        raise Problem(404, f"no artifact {name!r}; artifacts: {', '.join(ARTIFACTS)}", code="not-found")
    art = session.execute(select(Artifact).where(Artifact.job_id == job.id, Artifact.name == name)).scalar_one_or_none()
    if art is None:
        raise Problem(404, f"job {job.id} has no {name} (status {job.status})", code="not-found")
    if redirect:
        limit = request.app.state.settings.artifact_url_seconds
        url = storage.presigned_url(art.storage_key, min(expires_in or limit, limit), f"{job.id}-{name}")
        if url is not None:  # the bytes then go from the bucket to the user, not through the API
            return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    media = "application/json" if name.endswith(".json") else "application/octet-stream"
    # the object is opened here, so that storage down answers 503 before any byte of a 200 is sent
    chunks = storage.open_chunks(art.storage_key)
    first = next(chunks, b"")
    return StreamingResponse(itertools.chain([first], chunks), media_type=media, headers={
        "Content-Length": str(art.size_bytes), "ETag": f'"{art.sha256}"',
        "Content-Disposition": f'attachment; filename="{job.id}-{name}"'})
