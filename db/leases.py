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
    """Requeue running jobs whose lease expired; fail those whose workers were lost `max_attempts` times. Returns
    the requeued ids.

    A lost lease is not always a lost worker: one starved of CPU or stopped past its lease, or cut off from the
    database, is alive and comes back. It then takes its job back if nobody claimed it since (event `resumed`, the
    attempt count unchanged), or says it was alive (event `superseded`) when a newer attempt had claimed it. Only
    attempts never heard from again count as lost workers; attempts in all are still capped, at twice
    `max_attempts`, so that a job on machines that starve every attempt past its lease ends too."""
    cutoff = now() - timedelta(seconds=lease_seconds)
    requeued = []
    # SKIP LOCKED (PostgreSQL; SQLite has one writer and no row locks): a row whose worker stopped inside a transaction
    # that holds it (a process frozen mid-write) is left for a later sweep, instead of every lease waiting behind it
    stale = session.execute(select(Job.id, Job.attempts).where(Job.status == "running", Job.heartbeat_at < cutoff)
                            .with_for_update(skip_locked=True)).all()
    for job_id, attempts in stale:
        alive = int(session.execute(select(func.count()).select_from(JobEvent).where(
            JobEvent.job_id == job_id, JobEvent.type == "superseded")).scalar_one())
        lost = attempts - alive
        if lost >= max_attempts or attempts >= 2 * max_attempts:
            why = (f"the worker was lost {lost} times" if lost >= max_attempts else
                   f"{attempts} attempts lost their lease ({alive} of them alive but starved or cut off)")
            n = session.execute(update(Job).where(Job.id == job_id, Job.status == "running", Job.attempts == attempts)
                                .values(status="failed", finished_at=now(), stage="failed",
                                        error=f"{why}; giving up", error_type="worker-lost")).rowcount
            if n:
                session.add(JobEvent(job_id=job_id, type="failed", stage="failed", data={"error_type": "worker-lost"},
                                     message=f"no heartbeat for {lease_seconds} s during attempt {attempts}: {why}; "
                                             "giving up"))
            continue
        n = session.execute(update(Job).where(Job.id == job_id, Job.status == "running", Job.attempts == attempts)
                            .values(status="queued", stage="queued", progress=0.0)).rowcount
        if n:
            session.add(JobEvent(job_id=job_id, type="requeued", stage="queued", progress=0.0,
                                 message=f"no heartbeat for {lease_seconds} s during attempt {attempts} (its worker "
                                         "lost, or starved of CPU, stopped or cut off from the database); queued "
                                         "again: the attempt takes it back if it is alive and nobody claimed it since"))
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
