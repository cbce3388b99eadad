"""The FastAPI application: routes by domain, problem+json errors, metrics, migrations on start."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from secateurs.db.session import migrate
from secateurs.db.settings import Settings, get_settings
from secateurs.db.storage import Storage, open_storage

from . import openapi, problems
from .deps import KeyCache
from .limits import BodyLimit
from .metrics import Timing
from .routes import jobs, meta, models


def _operation_id(route: APIRoute) -> str:
    return route.name  # stable, readable ids for generated clients: upload_model, create_job, ...


def create_app(settings: Settings | None = None, *, enqueue: Callable[[str], None] | None = None,
               ping_broker: Callable[[], None] | None = None,
               queue_depth: Callable[[], int] | None = None) -> FastAPI:
    s = settings or get_settings()
    s.ensure_home()
    migrate(s)
    app = FastAPI(title="Secateurs", version="0.1.0", generate_unique_id_function=_operation_id,
                  description="Structured channel pruning as a service.", lifespan=_lifespan)
    app.state.settings = s
    app.state.storage = open_storage(s.storage, s.s3_endpoint_url)
    app.state.key_cache = KeyCache(s.api_key_cache_seconds)
    if enqueue is None or ping_broker is None:
        from secateurs.worker import app as worker_app

        celery = worker_app.make_celery(s)
        queue_depth = queue_depth or (lambda: worker_app.queue_depth(celery))
        enqueue = enqueue or (lambda job_id: celery.send_task("secateurs.run_job", args=[job_id]))
        ping_broker = ping_broker or (lambda: celery.connection_for_write().ensure_connection(max_retries=1))
    app.state.enqueue = enqueue
    app.state.ping_broker = ping_broker
    app.state.queue_depth = queue_depth
    problems.install(app)
    # innermost, so that its 413 reaches FastAPI's body reading as is (not in an outer middleware's task group)
    app.add_middleware(BodyLimit)

    app.add_middleware(Timing)  # plain ASGI: @app.middleware("http") costs a task group and a stream per request

    app.include_router(models.router)
    app.include_router(jobs.router)
    app.include_router(meta.router)
    openapi.install(app)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    sweeper = asyncio.create_task(_sweep_forever(app))
    try:
        yield
    finally:
        sweeper.cancel()


async def _sweep_forever(app: FastAPI) -> None:
    """Any API process notices expired job leases (a killed worker) and puts those jobs back in the queue,
    and hands the broker again the queued jobs it lost (a broker restarted empty)."""
    from fastapi.concurrency import run_in_threadpool
    from secateurs.worker.runner import sweep

    settings = app.state.settings
    loop_time = asyncio.get_running_loop().time
    last_orphan_sweep = loop_time()  # the first orphan sweep one interval after the start
    while True:
        await asyncio.sleep(settings.sweep_interval_seconds)
        try:
            await run_in_threadpool(sweep, settings, app.state.enqueue, queue_depth=app.state.queue_depth)
        except Exception:
            logging.getLogger("secateurs.api").warning("lease sweep failed", exc_info=True)
        if loop_time() - last_orphan_sweep >= settings.orphan_sweep_interval_seconds:
            last_orphan_sweep = loop_time()
            try:
                await run_in_threadpool(_sweep_orphans, settings, app.state.storage)
            except Exception:
                logging.getLogger("secateurs.api").warning("orphan file sweep failed", exc_info=True)


def _sweep_orphans(settings: Settings, storage: Storage) -> list[str]:
    from secateurs.db.orphans import sweep_orphans
    from secateurs.db.session import sessions

    with sessions(settings)() as session:
        return sweep_orphans(session, storage, settings.orphan_grace_seconds)
