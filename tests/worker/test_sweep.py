"""The periodic sweep on a real database: queued jobs left unclaimed for a lease are handed to the broker
again only when the broker holds fewer messages than there are queued jobs (it lost some), once a lease."""

from __future__ import annotations

from datetime import timedelta

from secateurs.db.models import Job, JobEvent, now
from secateurs.db.session import sessions
from secateurs.worker.runner import sweep
from sqlalchemy import select, update

from .test_runner import add_job, add_model, settings, tenant_id  # noqa: F401 (fixtures)


def _age(settings, job_ids, seconds):  # noqa: F811
    with sessions(settings)() as s:
        past = now() - timedelta(seconds=seconds)
        s.execute(update(Job).where(Job.id.in_(job_ids)).values(created_at=past))
        s.execute(update(JobEvent).where(JobEvent.job_id.in_(job_ids)).values(created_at=past))
        s.commit()


def test_unclaimed_jobs_are_redelivered_only_when_the_broker_lost_messages(settings, tenant_id):  # noqa: F811
    with sessions(settings)() as s:  # earlier tests' jobs are not this test's business
        s.execute(update(Job).where(Job.status == "queued").values(status="cancelled"))
        s.commit()
    model = add_model(settings, tenant_id, None)
    old = [add_job(settings, tenant_id, model) for _ in range(2)]
    fresh = add_job(settings, tenant_id, model)
    _age(settings, old, settings.job_lease_seconds + 5)
    sent: list[str] = []

    assert sweep(settings, sent.append, queue_depth=lambda: 3) == [] and sent == []  # the broker holds all three
    assert sweep(settings, sent.append, queue_depth=lambda: 1) == old and sent == old  # it lost some
    with sessions(settings)() as s:
        kinds = list(s.scalars(select(JobEvent.type).where(JobEvent.job_id == old[0]).order_by(JobEvent.id)))
    assert kinds == ["redelivered"]
    # the redelivery counts as something happening: not again before another lease has passed
    assert sweep(settings, sent.append, queue_depth=lambda: 0) == [] and sent == old
    _age(settings, [*old, fresh], settings.job_lease_seconds + 5)
    assert sorted(sweep(settings, sent.append, queue_depth=lambda: 0)) == sorted([*old, fresh])
