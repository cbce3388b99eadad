"""Per-tenant usage limits, counted in the database so that every API process enforces the same figures.

Each check is one conditional UPDATE of the tenant's row: the database applies it atomically (SQLite takes its
write lock, PostgreSQL re-checks the condition on the row it locked), so concurrent uploads through any number of
API processes can never pass a limit together, where a count-then-insert could.
"""

from __future__ import annotations

import math
import time

from sqlalchemy import case, select, update
from sqlalchemy.orm import Session

from .models import Tenant


def take_upload_slot(session: Session, tenant_id: str, per_minute: int, clock: float | None = None) -> float | None:
    """Count an upload begun now against the tenant's uploads of this minute (fixed windows, minute-aligned)
    and commit. None when it is within the limit; otherwise the seconds until the next minute (Retry-After)."""
    t = time.time() if clock is None else clock
    minute = int(t // 60)
    # `upload_minute < minute`: a new window starts at one; a process whose clock lags a little never resets
    # the window a peer has started
    counted = session.execute(
        update(Tenant)
        .where(Tenant.id == tenant_id,
               (Tenant.upload_minute < minute) | (Tenant.uploads_this_minute < per_minute))
        .values(uploads_this_minute=case((Tenant.upload_minute >= minute, Tenant.uploads_this_minute + 1), else_=1),
                upload_minute=case((Tenant.upload_minute >= minute, Tenant.upload_minute), else_=minute))
        .execution_options(synchronize_session=False)
    ).rowcount
    session.commit()
    return None if counted else max(1.0, math.ceil(60 - t % 60))


def stored_bytes(session: Session, tenant_id: str) -> int:
    return int(session.execute(select(Tenant.stored_bytes).where(Tenant.id == tenant_id)).scalar_one())


def charge_storage(session: Session, tenant_id: str, size: int, limit: int | None) -> bool:
    """Add `size` bytes to the tenant's stored bytes in the caller's transaction, unless that passes `limit`
    (None: no limit, for the artifacts a job writes). False when refused; the caller then keeps nothing."""
    condition = [Tenant.id == tenant_id]
    if limit is not None:
        condition.append(Tenant.stored_bytes + size <= limit)
    return bool(session.execute(
        update(Tenant).where(*condition).values(stored_bytes=Tenant.stored_bytes + size)
        .execution_options(synchronize_session=False)
    ).rowcount)


def release_storage(session: Session, tenant_id: str, size: int) -> None:
    """Take `size` bytes (a deleted model, dataset or job's artifacts) off the tenant's stored bytes in the caller's
    transaction; never below zero, should the count ever have missed something."""
    session.execute(
        update(Tenant).where(Tenant.id == tenant_id)
        .values(stored_bytes=case((Tenant.stored_bytes > size, Tenant.stored_bytes - size), else_=0))
        .execution_options(synchronize_session=False)
    )
