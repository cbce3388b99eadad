"""Leases: the database, not the broker, is the source of truth about jobs.

A running job heartbeats; when its heartbeat is older than the lease (its worker was killed, its machine
lost), whoever notices puts it back in the queue, up to a number of attempts, and says so in its events.
Jobs left queued (a broker that lost its messages) are handed to the broker again; a duplicate delivery
is harmless because workers claim jobs with a compare-and-set.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .models import Job, JobEvent, now


def take_back_expired(session: Session, lease_seconds: int, max_attempts: int) -> list[str]:
    """Requeue running jobs whose lease expired; fail those out of attempts. Returns the requeued ids."""
    cutoff = now() - timedelta(seconds=lease_seconds)
    requeued = []
    stale = session.execute(select(Job.id, Job.attempts).where(Job.status == "running", Job.heartbeat_at < cutoff)).all()
    for job_id, attempts in stale:
        if attempts >= max_attempts:
            n = session.execute(update(Job).where(Job.id == job_id, Job.status == "running", Job.attempts == attempts)
                                .values(status="failed", finished_at=now(), stage="failed",
                                        error=f"the worker was lost {attempts} times; giving up")).rowcount
            if n:
                session.add(JobEvent(job_id=job_id, type="failed", stage="failed",
                                     message=f"worker lost on attempt {attempts} of {max_attempts}; giving up"))
            continue
        n = session.execute(update(Job).where(Job.id == job_id, Job.status == "running", Job.attempts == attempts)
                            .values(status="queued", stage="queued", progress=0.0)).rowcount
        if n:
            session.add(JobEvent(job_id=job_id, type="requeued", stage="queued", progress=0.0,
                                 message=f"worker lost during attempt {attempts} (no heartbeat for "
                                         f"{lease_seconds} s); queued again"))
            requeued.append(job_id)
    session.commit()
    return requeued


def waiting(session: Session, older_than_seconds: float) -> list[str]:
    cutoff = now() - timedelta(seconds=older_than_seconds)
    return list(session.scalars(select(Job.id).where(Job.status == "queued", Job.created_at < cutoff)))
