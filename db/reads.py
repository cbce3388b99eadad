"""One-row reads from the API's event loop, for the routes that run on every poll (a job's status, an API key).

On PostgreSQL (psycopg 3) a read goes over an asyncio connection of a small pool of this process and event
loop: no thread hop and no GIL handover per request, and a read that finds every connection busy waits on
the loop, not in a thread. The statement is an SQLAlchemy statement built once (`Read`) and compiled once per
dialect; the connection is made with the engine's own connect arguments, so rows come back as SQLAlchemy's
psycopg dialect returns them. SQLAlchemy's asyncio engine would do the same work at about four times the CPU
per read (its pool and result machinery, run through greenlets), which at a thousand polls a second is most
of a core. Database errors are raised as SQLAlchemy's (`DBAPIError` and its subclasses, `TimeoutError` for a
pool that stays full), so the API's problem+json mapping (503 while the database is down) applies unchanged.

Elsewhere (SQLite, the embedded stack) a read runs `session.read_one` in a worker thread, with no more reads
in threads at once than the engine's pool holds connections.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from typing import Any

from sqlalchemy import Executable, exc
from sqlalchemy.engine import make_url

from .session import PING_AFTER_IDLE_SECONDS, SQLITE_POOL_SIZE, connect_args, engine_for, read_one
from .settings import Settings

POOL_SIZE = 8  # connections an API process reads through (each uvicorn worker has its own)
POOL_TIMEOUT = 10.0  # seconds a read waits for a free connection before the request answers 503


class Read:
    """A read statement built once (with `bindparam`s for what varies), its SQL compiled once per dialect."""

    def __init__(self, stmt: Executable) -> None:
        self.stmt = stmt
        self._sql: dict[str, str] = {}

    def sql(self, dialect: Any) -> str:
        text = self._sql.get(dialect.name)
        if text is None:
            text = self._sql[dialect.name] = str(self.stmt.compile(dialect=dialect))
        return text


def async_reads(url: str) -> bool:
    """Whether reads of this database run on the event loop (psycopg 3) rather than in threads."""
    return make_url(url).drivername == "postgresql+psycopg"


class _Pool:
    """At most `size` psycopg AsyncConnections (autocommit) of one event loop. The newest idle one is reused;
    one idle for more than a second is pinged first, and one that fails its ping or a read is closed (a
    failed read also drops every idle connection, which the same server restart has broken)."""

    def __init__(self, url: str, size: int = POOL_SIZE, timeout: float = POOL_TIMEOUT) -> None:
        import psycopg

        self.psycopg = psycopg
        self.dialect = engine_for(url).dialect
        cargs, cparams = self.dialect.create_connect_args(make_url(url))
        self.cargs, self.cparams = cargs, {**cparams, **connect_args(url), "autocommit": True}
        self.timeout = timeout
        self.slots = asyncio.Semaphore(size)
        self.idle: deque[tuple[float, Any]] = deque()

    async def _connection(self) -> Any:
        while self.idle:
            since, conn = self.idle.pop()
            if conn.closed:
                continue
            if time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
                return conn
            try:
                await conn.execute("SELECT 1")
                return conn
            except self.psycopg.Error:
                await conn.close()
        return await self.psycopg.AsyncConnection.connect(*self.cargs, **self.cparams)

    async def _give_back(self, conn: Any) -> None:
        if conn.closed or conn.info.transaction_status != self.psycopg.pq.TransactionStatus.IDLE:
            await conn.close()
        else:
            self.idle.append((time.monotonic(), conn))

    async def drop_idle(self) -> None:
        while self.idle:
            await self.idle.popleft()[1].close()

    async def first_row(self, read: Read, params: dict[str, Any] | None) -> Any:
        from psycopg.rows import namedtuple_row

        sql = read.sql(self.dialect)
        try:
            await asyncio.wait_for(self.slots.acquire(), self.timeout)
        except asyncio.TimeoutError:
            raise exc.TimeoutError(f"no database connection free within {self.timeout:.0f} s") from None
        try:
            for attempt in (1, 2):
                conn = None
                try:
                    conn = await self._connection()
                    async with conn.cursor(row_factory=namedtuple_row) as cur:
                        await cur.execute(sql, params)
                        row = await cur.fetchone()
                    await self._give_back(conn)
                    return row
                except self.psycopg.Error as e:
                    # a connection that died in use (the server restarted): drop it and the idle ones, and
                    # try once more on a new one; one that could not be made is not tried twice
                    lost = conn is not None and (conn.closed or conn.broken)
                    if conn is not None:
                        await (self._close_all(conn) if lost else self._give_back(conn))
                    if attempt == 2 or not lost:
                        raise exc.DBAPIError.instance(sql, params, e, self.psycopg.Error,
                                                      connection_invalidated=lost or conn is None) from e
        finally:
            self.slots.release()
        return None  # not reached

    async def _close_all(self, conn: Any) -> None:
        await conn.close()
        await self.drop_idle()


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Any]] = weakref.WeakKeyDictionary()


def _of_this_loop(url: str) -> Any:
    """The connection pool (PostgreSQL) or the thread limiter (elsewhere) of the running event loop: an
    asyncio connection belongs to the loop that opened it (a TestClient used without `with` runs a loop per
    request)."""
    import anyio

    mine = _pools.setdefault(asyncio.get_running_loop(), {})
    if url not in mine:
        mine[url] = _Pool(url) if async_reads(url) else anyio.CapacityLimiter(SQLITE_POOL_SIZE)
    return mine[url]


async def read_one_async(settings: Settings, read: Read, params: dict[str, Any] | None = None) -> Any:
    """The first row of `read` with `params` (attribute access by column name), or None."""
    import anyio.to_thread

    target = _of_this_loop(settings.db_url)
    if isinstance(target, _Pool):
        return await target.first_row(read, params)
    return await anyio.to_thread.run_sync(read_one, settings, read.stmt, params, limiter=target)
