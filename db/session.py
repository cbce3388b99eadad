"""Engine, sessions and migrations. The same code runs on SQLite (embedded) and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Executable, Row, create_engine, event
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from .settings import Settings, get_settings

MIGRATIONS = Path(__file__).parent / "migrations"


SQLITE_POOL_SIZE = 8  # connections a process keeps to the embedded database (and reads it holds at once)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, pool_size=SQLITE_POOL_SIZE, max_overflow=8, pool_timeout=30,
                               connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # the API reads while the worker writes
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    engine = create_engine(url, pool_size=10, max_overflow=20, pool_timeout=10, connect_args=connect_args(url))
    _ping_when_idle(engine)
    return engine


def connect_args(url: str) -> dict[str, Any]:
    # A database that is down or unreachable must fail a request fast (the API maps it to 503), not hang it:
    # bounded connect, pool wait and dead-peer detection; a ping drops connections a restart broke.
    return {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
            "keepalives_count": 3} if url.startswith("postgresql") else {}


PING_AFTER_IDLE_SECONDS = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """Pessimistic disconnect handling without a round trip per checkout (pool_pre_ping pings every time,
    which was a third of a status poll's database work): a connection idle in the pool for more than a
    second is pinged before use, and one that fails is replaced (the pool retries on DisconnectionError).
    One used within the last second is trusted; if the server died in that second the statement fails
    with `connection_invalidated`, the pool drops every older connection, and the request answers 503
    (reads through `read_one` retry once on a fresh connection instead)."""

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_conn, record):  # type: ignore[no-untyped-def]
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_conn, record, _proxy):  # type: ignore[no-untyped-def]
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            raise DisconnectionError(f"pooled connection failed its ping: {exc}") from exc


@lru_cache(maxsize=4)
def engine_for(url: str) -> Engine:
    return make_engine(url)


def sessions(settings: Settings | None = None) -> sessionmaker[Session]:
    s = settings or get_settings()
    return sessionmaker(engine_for(s.db_url), expire_on_commit=False)


def read_one(settings: Settings, stmt: Executable, params: dict[str, Any] | None = None) -> Row[Any] | None:
    """One row of a read, on a pooled connection in autocommit (no BEGIN/ROLLBACK round trips around a
    single SELECT), checked out and returned within this call (so no connection is held while a request
    waits for a thread). Retried once when the connection turns out dead (the database restarted)."""
    engine = engine_for(settings.db_url)
    for attempt in (1, 2):
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                return conn.execute(stmt, params).first()
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
    return None  # not reached


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    with sessions(settings)() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def causes(exc: BaseException) -> list[BaseException]:
    """The exception and those it was raised from or during (code may wrap what it caught)."""
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and all(cur is not e for e in seen):
        seen.append(cur)
        orig = getattr(cur, "orig", None)  # SQLAlchemy keeps the driver's error there
        cur = cur.__cause__ or cur.__context__ or (orig if isinstance(orig, BaseException) else None)
    return seen


def database_unavailable(exc: BaseException) -> bool:
    """A failure of the database, not of the work: unreachable, restarting, a connection cut, no connection free.
    A commit that fails so may have happened with only its answer lost."""
    return any(isinstance(e, (OperationalError, PoolTimeout))
               or (isinstance(e, DBAPIError) and e.connection_invalidated) for e in causes(exc))


def alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(settings: Settings | None = None) -> None:
    """Bring the schema to the newest revision (run on every start; a no-op when current)."""
    from alembic import command

    s = settings or get_settings()
    engine = engine_for(s.db_url)
    cfg = alembic_config(s.db_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
