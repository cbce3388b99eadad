"""Stored files that no row names are collected.

A file is written before the transaction that records it, so that no row ever names a missing file; when that
transaction then fails (the database went away during the commit, whose answer may be all that was lost, or the
process died), or a delete's row went but storage did not answer for its file, the file is left behind. The API's
sweeper deletes such files:

- a job's files (`TENANT/jobs/JOB/ATTEMPT/NAME`) once no artifact row names them and their attempt can no longer
  record them: its job is gone, finished, or run by another attempt (an attempt records its files only while the
  row is `running`, or `queued` for it to resume, with its own attempt number; attempts only grow);
- any other file (models, datasets, a write's `.partial` leftover) once no row names it and it is older than
  `SECATEURS_ORPHAN_GRACE_SECONDS`, longer than any upload takes from its write to its commit.

Storage is listed before the rows are read: a file written after the listing is not looked at, and one written
before it is recorded, if ever, by a commit that the rows read afterwards show or that can no longer happen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import Artifact, Dataset, Job, Model
from .storage import Storage

log = logging.getLogger("secateurs.orphans")
CHUNK = 500  # keys per IN (...) query


def _named(session: Session, keys: list[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(keys), CHUNK):
        chunk = keys[i:i + CHUNK]
        for column in (Artifact.storage_key, Model.storage_key, Dataset.storage_key):
            found.update(session.scalars(select(column).where(column.in_(chunk))))
    return found


def _attempt_of(key: str) -> tuple[str, int] | None:
    """(job id, attempt) of a job file's key, None for any other file."""
    parts = key.split("/")
    if len(parts) == 5 and parts[1] == "jobs" and parts[3].isdigit():
        return parts[2], int(parts[3])
    return None


def _recordable(session: Session, attempts: Iterable[tuple[str, int]]) -> set[tuple[str, int]]:
    """The (job, attempt) pairs whose attempt may still record its files."""
    pairs = set(attempts)
    job_ids = sorted({job_id for job_id, _ in pairs})
    live: set[tuple[str, int]] = set()
    for i in range(0, len(job_ids), CHUNK):
        rows = session.execute(select(Job.id, Job.attempts).where(
            Job.id.in_(job_ids[i:i + CHUNK]), Job.status.in_(("queued", "running"))))
        live.update((job_id, attempts) for job_id, attempts in rows)
    return pairs & live


def sweep_orphans(session: Session, storage: Storage, grace_seconds: float) -> list[str]:
    """Delete the stored files no row names (see above); returns their keys. A file whose delete fails is left for
    the next sweep."""
    listed = list(storage.list())
    cutoff = time.time() - grace_seconds
    keys = [key for key, _ in listed]
    named = _named(session, keys)
    unnamed = [(key, mtime) for key, mtime in listed if key not in named]
    recordable = _recordable(session, (a for key, _ in unnamed if (a := _attempt_of(key))))
    session.rollback()  # nothing written; end the read transaction before the deletes, which may be slow
    orphans = []
    for key, mtime in unnamed:
        attempt = _attempt_of(key)
        if (attempt is not None and attempt in recordable) or (attempt is None and mtime > cutoff):
            continue
        try:
            storage.delete(key)
        except Exception:
            log.warning("could not delete the orphan file %s; the next sweep tries again", key, exc_info=True)
            continue
        orphans.append(key)
    if orphans:
        log.warning("deleted %d stored files that no row named: %s", len(orphans), ", ".join(orphans[:20]))
    return orphans
