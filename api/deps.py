"""Dependencies as type aliases: what a route needs, said in its signature."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from secateurs.db.models import ApiKey, Tenant
from secateurs.db.session import sessions
from secateurs.db.settings import Settings
from secateurs.db.storage import Storage
from sqlalchemy import select
from sqlalchemy.orm import Session

from .problems import Problem


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_storage(request: Request) -> Storage:
    return request.app.state.storage


def get_session(request: Request) -> Iterator[Session]:
    with sessions(request.app.state.settings)() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]
SessionDep = Annotated[Session, Depends(get_session)]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def current_tenant(session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> Tenant:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Problem(401, "send your API key as 'Authorization: Bearer <key>'", code="unauthorized",
                      headers={"WWW-Authenticate": "Bearer"})
    key = authorization[7:].strip()
    row = session.execute(
        select(Tenant).join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked.is_(False))
    ).scalar_one_or_none()
    if row is None:
        raise Problem(401, "unknown or revoked API key", code="unauthorized", headers={"WWW-Authenticate": "Bearer"})
    return row


CurrentTenant = Annotated[Tenant, Depends(current_tenant)]
