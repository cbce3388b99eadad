"""Models and datasets: streamed uploads, checked from their headers by the engine before acceptance; deleted
with their stored files once no queued or running job needs them.

The uploads are async (the body streams on the event loop) but every piece of their database work runs in one
worker thread, in a session opened and closed inside it: a session carried across thread hops, or committed on
the event loop, blocks every request of the process while it waits for a connection or an SQLite lock."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from secateurs.db.models import Dataset, Job, Model, new_id
from secateurs.db.quotas import charge_storage, release_storage, stored_bytes, take_upload_slot
from secateurs.db.session import database_unavailable, sessions
from secateurs.db.settings import Settings
from secateurs.db.storage import Storage
from secateurs.pruning.errors import InputError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .. import pagination
from ..deps import CurrentTenant, SessionDep, SettingsDep, StorageDep
from ..problems import Problem
from ..schemas import dataset_out, model_out
from ..uploads import Upload, read_upload

router = APIRouter(prefix="/v1")
log = logging.getLogger("secateurs.api")


def _validate_model(path: str, arch: str | None, num_classes: int | None) -> dict[str, Any]:
    # Headers only, in bounded memory and without torch: the weights are never read into this process. The
    # full import (conversion, ONNX Runtime check) runs in the worker, whose job fails with its message.
    from secateurs.pruning.headers import read_model_header

    header = read_model_header(path, arch=arch, num_classes=num_classes)
    return {"format": header.format, "input_shape": header.input_shape, "num_classes": num_classes,
            "inputs": header.inputs, "dtypes": header.dtypes, "dims": header.dims}


def _validate_dataset(path: str) -> dict[str, Any]:
    from secateurs.pruning.headers import read_npz_header

    header = read_npz_header(path)
    return {"samples": header.samples, "shape": header.shape, "labelled": header.labelled, "inputs": header.inputs,
            "arrays": header.arrays}


def _int_field(up: Upload, name: str) -> int | None:
    raw = up.fields.get(name)
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise Problem(422, f"{name}: must be an integer", code="validation",
                      errors=[{"field": name, "message": "must be an integer"}]) from None
    if not 1 <= value <= 2**31 - 1:
        raise Problem(422, f"{name}: must be between 1 and {2**31 - 1}", code="validation",
                      errors=[{"field": name, "message": "out of range"}])
    return value


@router.post("/models", status_code=201, summary="Upload a model (ONNX, or safetensors with arch)")
async def upload_model(request: Request, tenant: CurrentTenant, settings: SettingsDep,
                       storage: StorageDep) -> dict[str, Any]:
    limit, over_limit = await run_in_threadpool(_admit, tenant.id, settings)
    up = await read_upload(request, limit, settings.home / "tmp", over_limit)
    try:
        arch = up.fields.get("arch") or None
        num_classes = _int_field(up, "num_classes")
        info = await run_in_threadpool(_validate_model, str(up.path), arch, num_classes)
        model = Model(id=new_id("mdl"), tenant_id=tenant.id, filename=up.filename, format=info["format"],
                      arch=arch, num_classes=num_classes, input_shape={"shape": info["input_shape"], "inputs": info["inputs"],
                                                                   "dtypes": info["dtypes"], "dims": info["dims"]},
                      size_bytes=up.size, sha256=up.sha256, storage_key="")
        await run_in_threadpool(_store, model, f"{tenant.id}/models/{model.id}", up, storage, settings)
        return model_out(model)
    finally:
        up.discard()


@router.get("/models", summary="List models")
def list_models(tenant: CurrentTenant, session: SessionDep, cursor: str | None = None,
                limit: int = Query(50, ge=1, le=pagination.MAX_LIMIT)) -> dict[str, Any]:
    stmt = pagination.page(select(Model).where(Model.tenant_id == tenant.id), Model, cursor, limit)
    return pagination.result(list(session.scalars(stmt)), limit, model_out)


@router.get("/models/{model_id}", summary="Get a model")
def get_model(model_id: str, tenant: CurrentTenant, session: SessionDep) -> dict[str, Any]:
    return model_out(owned(session, Model, model_id, tenant.id))


@router.post("/datasets", status_code=201, summary="Upload calibration or evaluation data (.npz)")
async def upload_dataset(request: Request, tenant: CurrentTenant, settings: SettingsDep,
                         storage: StorageDep) -> dict[str, Any]:
    limit, over_limit = await run_in_threadpool(_admit, tenant.id, settings)
    up = await read_upload(request, limit, settings.home / "tmp", over_limit)
    try:
        info = await run_in_threadpool(_validate_dataset, str(up.path))
        ds = Dataset(id=new_id("dst"), tenant_id=tenant.id, filename=up.filename, samples=info["samples"],
                     sample_shape={"shape": info["shape"], "inputs": info["inputs"],
                                   "arrays": info["arrays"]}, labelled=info["labelled"], size_bytes=up.size,
                     sha256=up.sha256, storage_key="")
        await run_in_threadpool(_store, ds, f"{tenant.id}/datasets/{ds.id}", up, storage, settings)
        return dataset_out(ds)
    finally:
        up.discard()


@router.get("/datasets", summary="List datasets")
def list_datasets(tenant: CurrentTenant, session: SessionDep, cursor: str | None = None,
                  limit: int = Query(50, ge=1, le=pagination.MAX_LIMIT)) -> dict[str, Any]:
    stmt = pagination.page(select(Dataset).where(Dataset.tenant_id == tenant.id), Dataset, cursor, limit)
    return pagination.result(list(session.scalars(stmt)), limit, dataset_out)


@router.get("/datasets/{dataset_id}", summary="Get a dataset")
def get_dataset(dataset_id: str, tenant: CurrentTenant, session: SessionDep) -> dict[str, Any]:
    return dataset_out(owned(session, Dataset, dataset_id, tenant.id))


@router.delete("/models/{model_id}", status_code=204, response_class=Response,
               summary="Delete a model and its stored file (409 while a queued or running job uses it)")
def delete_model(model_id: str, tenant: CurrentTenant, session: SessionDep, storage: StorageDep) -> Response:
    model = owned(session, Model, model_id, tenant.id)
    remove(session, storage, model, lambda: [(j.id, j.status) for j in _active_jobs(session, tenant.id)
                                             if j.model_id == model.id])
    return Response(status_code=204)


@router.delete("/datasets/{dataset_id}", status_code=204, response_class=Response,
               summary="Delete a dataset and its stored file (409 while a queued or running job uses it)")
def delete_dataset(dataset_id: str, tenant: CurrentTenant, session: SessionDep, storage: StorageDep) -> Response:
    ds = owned(session, Dataset, dataset_id, tenant.id)

    def users() -> list[tuple[str, str]]:  # jobs name their datasets in their spec (at most the tenant's job cap)
        return [(j.id, j.status) for j in _active_jobs(session, tenant.id)
                if ds.id in ((j.spec.get(part) or {}).get("dataset_id") for part in ("calibration", "evaluation"))]

    remove(session, storage, ds, users)
    return Response(status_code=204)


def _active_jobs(session: Session, tenant_id: str) -> list[Any]:
    return list(session.execute(select(Job.id, Job.status, Job.model_id, Job.spec).where(
        Job.tenant_id == tenant_id, Job.status.in_(("queued", "running")))))


def remove(session: Session, storage: Storage, row: Model | Dataset, users: Any) -> None:
    """Delete the row, free its bytes and remove its file, in one transaction that a job being created for it
    cannot interleave with: the row is deleted first (PostgreSQL locks it, and `create_job` reads it again
    `FOR SHARE` after inserting its job; SQLite holds its write lock from here to the commit), and only then are
    its users looked up, so either the new job is seen here (409) or the job's re-read finds no row (422)."""
    table, kind = type(row), type(row).__tablename__[:-1]
    row_id, tenant_id, key, size = row.id, row.tenant_id, row.storage_key, row.size_bytes
    if not session.execute(delete(table).where(table.id == row_id, table.tenant_id == tenant_id)
                           .execution_options(synchronize_session=False)).rowcount:
        session.rollback()  # deleted by a concurrent request since it was read
        raise Problem(404, f"no {kind} {row_id!r}", code="not-found")
    busy = users()
    if busy:
        session.rollback()
        job_id, status = busy[0]
        more = f" (and {len(busy) - 1} more)" if len(busy) > 1 else ""
        raise Problem(409, f"{kind} {row_id} is used by job {job_id}{more}, which is {status}: wait for it to finish "
                           f"or cancel it (POST /v1/jobs/{job_id}/cancel), then delete the {kind}", code="in-use",
                      jobs=[j for j, _ in busy])
    release_storage(session, tenant_id, size)
    delete_objects(session, storage, [key])


def delete_objects(session: Session, storage: Storage, keys: list[str]) -> None:
    """Commit the caller's transaction (rows gone), then remove their stored files. Storage is asked first whether it
    answers: when it does not, nothing is committed and the request answers 503 (it can be sent again). Should it
    fail between that question and a file's delete, the rows are gone already and the file, which no row names
    any more, is left to the orphan sweep (db/orphans.py): never a row naming a file that is not there."""
    try:
        storage.ping()
    except Exception as e:
        session.rollback()
        raise Problem(503, f"object storage is unavailable ({type(e).__name__}); retry shortly", code="unavailable",
                      headers={"Retry-After": "2"}) from e
    session.commit()
    for key in keys:
        try:
            storage.delete(key)  # a file already gone is no error
        except Exception:
            log.warning("could not delete %s; the orphan sweep will", key, exc_info=True)


def _admit(tenant_id: str, settings: Settings) -> tuple[int, str | None]:
    """Before anything is read: the tenant's upload rate (429), then how many bytes this upload may take, with
    the detail its refusal gives when the tenant's storage limit, not the per-file one, is what bounds it."""
    with sessions(settings)() as session:
        wait = take_upload_slot(session, tenant_id, settings.max_uploads_per_minute_per_tenant)
        if wait is not None:
            raise Problem(429, f"more than {settings.max_uploads_per_minute_per_tenant} uploads in a minute: retry "
                               f"in {wait:.0f} s", code="too-many-uploads", headers={"Retry-After": f"{wait:.0f}"})
        used = stored_bytes(session, tenant_id)
    room = max(0, settings.max_storage_bytes_per_tenant - used)
    if room < settings.max_upload_bytes:
        return room, _over_quota(used, settings.max_storage_bytes_per_tenant)
    return settings.max_upload_bytes, None


def _over_quota(used: int, limit: int) -> str:
    # 413, not 429: the request is refused for the size of what it sends, and sending it again later will not
    # help (429 is for request rates, and its Retry-After promises that waiting does); not 507, a server error.
    return (f"your models, datasets and job results take {used} of the {limit} bytes a tenant may keep, and this "
            "upload would pass that: ask the service's operator for more room")


def _store(row: Model | Dataset, key: str, up: Upload, storage: Storage, settings: Settings) -> None:
    """The validated upload goes to storage, then its row is committed with the tenant's stored bytes (unless
    a concurrent upload took the room meanwhile); a failed commit removes the object again, so storage never
    holds a file no row names."""
    assert up.path is not None
    row.storage_key = key
    storage.put_file(key, up.path)  # StorageUnavailable: 503, and no object (a failed upload leaves none)
    try:
        with sessions(settings)() as session:
            session.add(row)
            if not charge_storage(session, row.tenant_id, up.size, settings.max_storage_bytes_per_tenant):
                session.rollback()
                raise Problem(413, _over_quota(stored_bytes(session, row.tenant_id),
                                               settings.max_storage_bytes_per_tenant), code="too-large")
            session.commit()
    except Exception as exc:
        if database_unavailable(exc):
            # the commit may have happened with only its answer lost: deleting the file could leave a row naming
            # nothing; the orphan sweep deletes it later if no row names it (503 to the client either way)
            log.warning("upload %s: the database went away while recording it; its file is left to the orphan "
                        "sweep", key)
        else:
            try:
                storage.delete(key)
            except Exception:
                log.warning("could not delete %s; the orphan sweep will", key, exc_info=True)
        raise


def owned(session: SessionDep, model: Any, row_id: str, tenant_id: str) -> Any:
    """The row if it exists and belongs to the tenant; 404 otherwise (never 403: ids do not leak)."""
    row = session.execute(select(model).where(model.id == row_id, model.tenant_id == tenant_id)).scalar_one_or_none()
    if row is None:
        raise Problem(404, f"no {model.__tablename__[:-1]} {row_id!r}", code="not-found")
    return row


__all__ = ["InputError", "delete_objects", "owned", "router"]
