"""Dependencies as type aliases: what a route needs, said in its signature."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from secateurs.db.models import ApiKey, Tenant
from secateurs.db.reads import Read, read_one_async
from secateurs.db.session import sessions
from secateurs.db.settings import Settings
from secateurs.db.storage import Storage
from sqlalchemy import bindparam, select
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


@dataclass(frozen=True)
class Caller:
    """The tenant an API key belongs to: every query a route makes filters on `id`."""

    id: str
    name: str


class KeyCache:
    """Verified key hashes -> tenant, kept `ttl` seconds in this process, so that a status poll does not look
    its key up in the database every time. Only keys the database accepted are kept (an unknown or revoked
    key is looked up on every request); a key revoked in the database stops working within `ttl` seconds.
    Keys are stored as their sha256 only, as in the database."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Caller]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> Caller | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        if time.monotonic() >= entry[0]:
            with self._lock:
                self._entries.pop(key_hash, None)
            return None
        return entry[1]

    def put(self, key_hash: str, caller: Caller) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                now = time.monotonic()
                for h in [h for h, (until, _) in self._entries.items() if until <= now] or list(self._entries):
                    del self._entries[h]  # expired ones first; all of them if none has expired
            self._entries[key_hash] = (time.monotonic() + self.ttl, caller)


_TENANT_OF_KEY = Read(select(Tenant.id, Tenant.name).join(ApiKey, ApiKey.tenant_id == Tenant.id)
                      .where(ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked.is_(False)))


async def _lookup(settings: Settings, key_hash: str) -> Caller | None:
    row = await read_one_async(settings, _TENANT_OF_KEY, {"key_hash": key_hash})
    return Caller(row.id, row.name) if row is not None else None


def _unauthorized(detail: str) -> Problem:
    return Problem(401, detail, code="unauthorized", headers={"WWW-Authenticate": "Bearer"})


async def current_tenant(request: Request, authorization: Annotated[str | None, Header()] = None) -> Caller:
    # async, and no request session: a cached key costs no database round trip, and a looked-up one holds
    # its connection only inside that lookup
    if not authorization or not authorization.lower().startswith("bearer "):
        raise _unauthorized("send your API key as 'Authorization: Bearer <key>'")
    key_hash = hash_key(authorization[7:].strip())
    cache: KeyCache = request.app.state.key_cache
    caller = cache.get(key_hash)
    if caller is None:
        caller = await _lookup(request.app.state.settings, key_hash)
        if caller is None:
            raise _unauthorized("unknown or revoked API key")
        cache.put(key_hash, caller)
    return caller


CurrentTenant = Annotated[Caller, Depends(current_tenant)]
