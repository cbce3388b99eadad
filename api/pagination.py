"""Cursor pagination: newest first, the cursor names the last row seen (created_at, id)."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_

from .problems import Problem

MAX_LIMIT = 200


def encode(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, row_id = json.loads(raw)
        return datetime.fromisoformat(stamp), str(row_id)
    except Exception:
        raise Problem(422, "cursor: not a cursor this API issued", code="validation",
                      errors=[{"field": "cursor", "message": "invalid cursor"}]) from None


def page(stmt: Select[Any], model: Any, cursor: str | None, limit: int) -> Select[Any]:
    if cursor:
        stamp, row_id = decode(cursor)
        stmt = stmt.where(or_(model.created_at < stamp, and_(model.created_at == stamp, model.id < row_id)))
    return stmt.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)


def result(rows: list[Any], limit: int, render: Any) -> dict[str, Any]:
    more = len(rows) > limit
    rows = rows[:limit]
    return {"data": [render(r) for r in rows],
            "next_cursor": encode(rows[-1].created_at, rows[-1].id) if more and rows else None}
