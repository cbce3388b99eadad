"""Models and datasets: streamed uploads, checked from their headers by the engine before acceptance."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from secateurs.db.models import Dataset, Model, new_id
from secateurs.db.quotas import charge_storage, stored_bytes, take_upload_slot
from secateurs.db.settings import Settings
from secateurs.pruning.errors import InputError
from sqlalchemy import select

from .. import pagination
from ..deps import CurrentTenant, SessionDep, SettingsDep, StorageDep
from ..problems import Problem
from ..schemas import dataset_out, model_out
from ..uploads import Upload, read_upload

router = APIRouter(prefix="/v1")


def _validate_model(path: str, arch: str | None, num_classes: int | None) -> dict[str, Any]:
    # Headers only, in bounded memory and without torch: the weights are never read into this process. The
    # full import (conversion, ONNX Runtime check) runs in the worker, whose job fails with its message.
    from secateurs.pruning.headers import read_model_header

    header = read_model_header(path, arch=arch, num_classes=num_classes)
    return {"format": header.format, "input_shape": header.input_shape, "num_classes": num_classes}


def _validate_dataset(path: str) -> dict[str, Any]:
    from secateurs.pruning.headers import read_npz_header

    header = read_npz_header(path)
    return {"samples": header.samples, "shape": header.shape, "labelled": header.labelled}


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
async def upload_model(request: Request, tenant: CurrentTenant, session: SessionDep, settings: SettingsDep,
                       storage: StorageDep) -> dict[str, Any]:
    limit, over_limit = await _admit(tenant.id, session, settings)
    up = await read_upload(request, limit, settings.home / "tmp", over_limit)
    try:
        arch = up.fields.get("arch") or None
        num_classes = _int_field(up, "num_classes")
        info = await run_in_threadpool(_validate_model, str(up.path), arch, num_classes)
        model = Model(id=new_id("mdl"), tenant_id=tenant.id, filename=up.filename, format=info["format"],
                      arch=arch, num_classes=num_classes, input_shape={"shape": info["input_shape"]},
                      size_bytes=up.size, sha256=up.sha256, storage_key="")
        await _store(model, f"{tenant.id}/models/{model.id}", up, session, storage, settings)
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
async def upload_dataset(request: Request, tenant: CurrentTenant, session: SessionDep, settings: SettingsDep,
                         storage: StorageDep) -> dict[str, Any]:
    limit, over_limit = await _admit(tenant.id, session, settings)
    up = await read_upload(request, limit, settings.home / "tmp", over_limit)
    try:
        info = await run_in_threadpool(_validate_dataset, str(up.path))
        ds = Dataset(id=new_id("dst"), tenant_id=tenant.id, filename=up.filename, samples=info["samples"],
                     sample_shape={"shape": info["shape"]}, labelled=info["labelled"], size_bytes=up.size,
                     sha256=up.sha256, storage_key="")
        await _store(ds, f"{tenant.id}/datasets/{ds.id}", up, session, storage, settings)
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


async def _admit(tenant_id: str, session: SessionDep, settings: Settings) -> tuple[int, str | None]:
    """Before anything is read: the tenant's upload rate (429), then how many bytes this upload may take, with
    the detail its refusal gives when the tenant's storage limit, not the per-file one, is what bounds it."""
    wait = await run_in_threadpool(take_upload_slot, session, tenant_id, settings.max_uploads_per_minute_per_tenant)
    if wait is not None:
        raise Problem(429, f"more than {settings.max_uploads_per_minute_per_tenant} uploads in a minute: retry in "
                           f"{wait:.0f} s", code="too-many-uploads", headers={"Retry-After": f"{wait:.0f}"})
    used = await run_in_threadpool(stored_bytes, session, tenant_id)
    room = max(0, settings.max_storage_bytes_per_tenant - used)
    if room < settings.max_upload_bytes:
        return room, _over_quota(used, settings.max_storage_bytes_per_tenant)
    return settings.max_upload_bytes, None


def _over_quota(used: int, limit: int) -> str:
    # 413, not 429: the request is refused for the size of what it sends, and sending it again later will not
    # help (429 is for request rates, and its Retry-After promises that waiting does); not 507, a server error.
    return (f"your models, datasets and job results take {used} of the {limit} bytes a tenant may keep, and this "
            "upload would pass that: ask the service's operator for more room")


async def _store(row: Model | Dataset, key: str, up: Upload, session: SessionDep, storage: StorageDep,
                 settings: Settings) -> None:
    """The validated upload goes to storage, then its row is committed with the tenant's stored bytes (unless
    a concurrent upload took the room meanwhile); a failed commit removes the object again, so storage never
    holds a file no row names."""
    assert up.path is not None
    row.storage_key = key
    await run_in_threadpool(storage.put_file, key, up.path)
    session.add(row)
    try:
        if not charge_storage(session, row.tenant_id, up.size, settings.max_storage_bytes_per_tenant):
            session.rollback()
            raise Problem(413, _over_quota(stored_bytes(session, row.tenant_id), settings.max_storage_bytes_per_tenant),
                          code="too-large")
        session.commit()
    except Exception:
        storage.delete(key)
        raise


def owned(session: SessionDep, model: Any, row_id: str, tenant_id: str) -> Any:
    """The row if it exists and belongs to the tenant; 404 otherwise (never 403: ids do not leak)."""
    row = session.execute(select(model).where(model.id == row_id, model.tenant_id == tenant_id)).scalar_one_or_none()
    if row is None:
        raise Problem(404, f"no {model.__tablename__[:-1]} {row_id!r}", code="not-found")
    return row


__all__ = ["InputError", "owned", "router"]
