"""The Celery application. This module imports no engine code, so the API can enqueue with it."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery, bootsteps
from secateurs.db.settings import Settings, get_settings

QUEUE = "secateurs"
EMBEDDED_POLL_SECONDS = 0.1


def make_celery(settings: Settings, *, with_tasks: bool = False) -> Celery:
    app = Celery("secateurs", broker=settings.broker, include=["secateurs.worker.tasks"] if with_tasks else [])
    transport: dict[str, object] = {}
    if settings.broker.startswith("redis"):
        # Above the hard time limit, or a long job would be redelivered while it still runs.
        transport["visibility_timeout"] = settings.hard_time_limit + 3600
    app.conf.update(
        task_default_queue=QUEUE,
        task_acks_late=True,  # a job whose worker dies is redelivered, not lost
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # one long job at a time per process
        # A pool process imports the engine before it reports up (worker/tasks.py): 10-25 s on a busy machine, where
        # Celery's default of 4 s would kill every replacement process (after a hard time limit, say) in a loop.
        worker_proc_alive_timeout=180.0,
        task_soft_time_limit=settings.job_soft_time_limit,
        task_time_limit=settings.hard_time_limit,
        task_ignore_result=True,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    if settings.embedded:
        app.steps["consumer"].add(_PollEmbeddedBrokerOften)
    return app


class _PollEmbeddedBrokerOften(bootsteps.StartStopStep):
    """The embedded broker (kombu's SQLAlchemy transport) is polled, by default once a second: that was most of
    a job's queue wait (850 ms median). A poll is one short transaction on broker.db (not the jobs database).
    Set on the consumer's transport, since that transport hands every broker_transport_option to
    create_engine, which refuses `polling_interval`."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, c: Any) -> None:
        c.connection.transport.polling_interval = EMBEDDED_POLL_SECONDS


def queue_depth(celery: Celery) -> int:
    """Messages waiting in the job queue. Declaring the queue first also restores its binding, which a
    broker that restarted empty has lost (Redis keeps bindings as keys, and a message published to an
    unbound exchange is dropped)."""
    with celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1)
        queue = celery.amqp.queues[QUEUE](conn.default_channel)
        queue.declare()
        return int(queue.queue_declare().message_count)


@lru_cache(maxsize=1)
def worker_app() -> Celery:
    return make_celery(get_settings(), with_tasks=True)


def __getattr__(name: str) -> object:
    # `celery -A secateurs.worker.app worker` finds the app here, with the tasks registered; resolved
    # lazily so that importing this module (the API does) reads no settings.
    if name in ("app", "celery"):
        return worker_app()
    raise AttributeError(name)
