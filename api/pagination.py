"""Cursor pagination: newest first, the cursor names the last row seen (created_at, id)."""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_

from .problems import Problem

MAX_LIMIT = 200
MAX_EVENT_ID = 2**63 - 1  # event ids are 64-bit integers in every database


def event_id(raw: str) -> int | None:
    """An event id as a client sends it back (`?cursor=`, `Last-Event-ID`): decimal digits that fit 64 bits,
    else None (`str.isdigit` also takes digits `int` refuses, such as superscripts)."""
    if not re.fullmatch(r"[0-9]{1,19}", raw):
        return None
    value = int(raw)
    return value if value <= MAX_EVENT_ID else None


def encode(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, row_id = json.loads(raw)
        if not re.fullmatch(r"[a-z]{2,8}_[0-9a-f]{1,64}", row_id):  # ids are new_id()'s
            raise ValueError(row_id)
        return datetime.fromisoformat(stamp), row_id
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
