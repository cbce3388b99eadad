"""Every error is application/problem+json (RFC 9457), mapped in this one place."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from secateurs.db.storage import StorageUnavailable
from secateurs.pruning.errors import InputError, UnsafeFormatError
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("secateurs.api")
MEDIA = "application/problem+json"
TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
          409: "Conflict", 413: "Payload too large", 415: "Unsupported media type", 422: "Unprocessable content",
          429: "Too many requests", 500: "Internal server error", 503: "Service unavailable"}


class Problem(Exception):
    def __init__(self, status: int, detail: str, *, code: str | None = None, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code
        self.headers = headers
        self.extra = extra


def problem(status: int, detail: str, *, code: str | None = None, headers: dict[str, str] | None = None,
            **extra: Any) -> JSONResponse:
    body = {"type": f"https://secateurs.dev/problems/{code}" if code else "about:blank",
            "title": TITLES.get(status, "Error"), "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=MEDIA, headers=headers)


def field_code(field: str) -> str:
    """The problem type of a refused field: a job's spec is `invalid-spec`, as the CLI says it; any other
    `validation`."""
    return "invalid-spec" if field.split(".")[0] == "spec" else "validation"


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    # pydantic names union members (e.g. "str", "ComposedSignal"): not part of the user's field path
    parts = [p for p in parts if not (p[:1].isupper() or p in ("str", "int", "float", "function-after"))]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        return problem(exc.status, exc.detail, code=exc.code, headers=exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": _field(tuple(e["loc"])), "message": e["msg"]} for e in exc.errors()]
        first = errors[0] if errors else {"field": "body", "message": "invalid request"}
        return problem(422, f"{first['field']}: {first['message']}", code=field_code(first["field"]), errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(UnsafeFormatError)
    async def _unsafe(_: Request, exc: UnsafeFormatError) -> JSONResponse:
        return problem(415, str(exc), code=exc.code)

    @app.exception_handler(InputError)
    async def _input(_: Request, exc: InputError) -> JSONResponse:
        return problem(422, str(exc), code=exc.code)

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return problem(503, "the database is unavailable; retry shortly", code="unavailable",
                       headers={"Retry-After": "2"})

    @app.exception_handler(StorageUnavailable)
    async def _storage_down(_: Request, exc: StorageUnavailable) -> JSONResponse:
        log.warning("object storage unavailable: %s", exc)
        return problem(503, "object storage is unavailable; retry shortly", code="unavailable",
                       headers={"Retry-After": "2"})

    @app.exception_handler(PoolTimeout)
    async def _pool_exhausted(_: Request, exc: PoolTimeout) -> JSONResponse:
        log.warning("no database connection free: %s", exc)  # every one stuck on a database that does not answer
        return problem(503, "the database is not answering; retry shortly", code="unavailable",
                       headers={"Retry-After": "2"})

    @app.exception_handler(DataError)
    async def _unstorable(_: Request, exc: DataError) -> JSONResponse:
        # The database refused a value of the request as data (PostgreSQL: a NUL character in a string, a number
        # past its column's range): the request is at fault, whichever field it was.
        log.info("value refused by the database: %s", exc.orig)
        return problem(422, "a value in the request cannot be stored or looked up: strings may not contain NUL "
                            "characters, and numbers must fit 64 bits", code="validation")

    @app.exception_handler(DBAPIError)
    async def _db_error(_: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated:
            return problem(503, "the database connection was lost; retry shortly", code="unavailable",
                           headers={"Retry-After": "2"})
        log.exception("database error")
        return problem(500, "internal error", code="internal")

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        if _lone_surrogate(exc):  # JSON may escape half a UTF-16 pair (\ud800); no database can store it
            return problem(422, "a string in the request is not valid Unicode (a lone UTF-16 surrogate such as "
                                "\\ud800)", code="validation")
        log.exception("unhandled error")
        return problem(500, "internal error", code="internal")


def _lone_surrogate(exc: BaseException) -> bool:
    """Whether encoding a string of the request failed on a lone surrogate, here or below a wrapper
    (SQLAlchemy's StatementError keeps it as .orig)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, UnicodeEncodeError) and "surrogate" in str(cur):
            return True
        seen.add(id(cur))
        orig = getattr(cur, "orig", None)
        cur = orig if isinstance(orig, BaseException) else (cur.__cause__ or cur.__context__)
    return False
