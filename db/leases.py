"""Leases: the database, not the broker, is the source of truth about jobs.

A running job heartbeats; when its heartbeat is older than the lease (its worker was killed, its machine
lost), whoever notices puts it back in the queue, up to a number of attempts, and says so in its events.
Jobs left queued (a broker that lost its messages) are handed to the broker again; a duplicate delivery
is harmless because workers claim jobs with a compare-and-set.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, update
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


def unclaimed(session: Session, older_than_seconds: float) -> list[str]:
    """Queued jobs nothing has happened to for `older_than_seconds` (no claim, no requeue, no redelivery):
    the ones a broker that restarted empty would have lost, oldest first."""
    cutoff = now() - timedelta(seconds=older_than_seconds)
    recent = select(JobEvent.id).where(JobEvent.job_id == Job.id, JobEvent.created_at >= cutoff)
    return list(session.scalars(select(Job.id).where(Job.status == "queued", Job.created_at < cutoff,
                                                     ~recent.exists()).order_by(Job.created_at)))


def queued_count(session: Session) -> int:
    return int(session.execute(select(func.count()).select_from(Job).where(Job.status == "queued")).scalar_one())


def mark_redelivered(session: Session, job_ids: list[str], waited_seconds: float) -> None:
    for job_id in job_ids:
        session.add(JobEvent(job_id=job_id, type="redelivered", stage="queued",
                             message=f"not picked up for {waited_seconds:.0f} s and missing from the broker's "
                                     "queue; handed to the broker again"))
    session.commit()
