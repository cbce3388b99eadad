"""Run one job through the engine, with progress and cancellation wired to the database.

The job row is claimed with a compare-and-set (queued -> running), so a duplicate delivery does nothing.
Artifacts are written to storage first and the job becomes `succeeded` in the same transaction that
records them: a job is never succeeded without its files.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from secateurs.db.models import Artifact, Dataset, Job, JobEvent, Model, new_id, now
from secateurs.db.quotas import charge_storage
from secateurs.db.session import causes as _chain
from secateurs.db.session import database_unavailable, sessions
from secateurs.db.settings import Settings
from secateurs.db.storage import StorageUnavailable, open_storage
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .webhooks import notify

log = logging.getLogger("secateurs.worker")
T = TypeVar("T")


def _claim(settings: Settings, job_id: str) -> Job | None:
    with sessions(settings)() as s:
        claimed = s.execute(
            update(Job).where(Job.id == job_id, Job.status == "queued")
            .values(status="running", started_at=now(), heartbeat_at=now(), attempts=Job.attempts + 1,
                    stage="starting")
        ).rowcount
        if not claimed:
            s.rollback()
            return None
        s.add(JobEvent(job_id=job_id, type="running", stage="starting", progress=0.0, message="job started"))
        s.commit()
        return s.get(Job, job_id)


class _Lease:
    """This attempt's hold on its job row: the heartbeat that keeps it, and taking it back after it was lost while the
    attempt was alive.

    A lease is lost when no heartbeat reached the database for SECATEURS_JOB_LEASE_SECONDS: the worker died, or it
    was alive but could not beat (starved of CPU, stopped, the database away). The sweeper cannot tell the two
    apart and queues the job again. An attempt that finds its job still queued with its own attempt number (nobody
    claimed it since) was the alive kind: it takes the job back (event `resumed`) and goes on, so a starved worker
    costs the job neither its work so far nor one of its attempts. One that finds the job claimed by a newer attempt
    stops and says it was alive (event `superseded`), and that attempt does not count as a lost worker either."""

    def __init__(self, settings: Settings, job_id: str, attempt: int) -> None:
        self.settings, self.job_id, self.attempt = settings, job_id, attempt
        self.make = sessions(settings)
        self.held_at = time.monotonic()  # when the row was last seen or written as this attempt's
        self.stage, self.progress = "starting", 0.0  # what a resumed row shows until the next report

    def held(self) -> None:
        self.held_at = time.monotonic()

    def resume(self, s: Session) -> bool:
        """Take the job back if it was queued again while this attempt ran and nobody claimed it since (in the
        caller's transaction); True when it did."""
        n = s.execute(update(Job).where(Job.id == self.job_id, Job.status == "queued", Job.attempts == self.attempt,
                                        Job.cancel_requested.is_(False))
                      .values(status="running", heartbeat_at=now(), stage=self.stage, progress=self.progress)).rowcount
        if n:
            gap = time.monotonic() - self.held_at
            s.add(JobEvent(job_id=self.job_id, type="resumed", stage=self.stage, progress=self.progress,
                           message=f"attempt {self.attempt} was alive after all: {gap:.0f} s without a heartbeat "
                                   "reaching the database (its worker starved of CPU or stopped, or the database "
                                   "away) lost it its lease, and nobody had claimed the job since; it goes on"))
            log.warning("job %s: attempt %s resumed after %.0f s without a heartbeat", self.job_id, self.attempt, gap)
            self.held()
        return bool(n)

    def reclaim(self, s: Session) -> bool:
        """After finding the row not this attempt's: resume it if it can (see resume); True when the row is this
        attempt's again, by this call or by a concurrent one (the heartbeat thread's and the engine's checks race)."""
        if self.resume(s):
            return True
        row = s.execute(select(Job.status, Job.attempts).where(Job.id == self.job_id)).one_or_none()
        return row is not None and row.status == "running" and row.attempts == self.attempt

    def beat(self) -> None:
        with self.make() as s:
            n = s.execute(update(Job).where(Job.id == self.job_id, Job.status == "running",
                                            Job.attempts == self.attempt).values(heartbeat_at=now())).rowcount
            if n or self.resume(s):
                self.held()
            # else taken by a newer attempt, cancelled or finished: the engine's next check stops this attempt
            s.commit()

    def note_superseded(self) -> None:
        """Say, on a job still under way, that this attempt was alive when a newer one replaced it."""
        try:
            with self.make() as s:
                status = s.execute(select(Job.status).where(Job.id == self.job_id)).scalar_one_or_none()
                if status in ("queued", "running"):
                    s.add(JobEvent(job_id=self.job_id, type="superseded", stage=status,
                                   message=f"attempt {self.attempt} was alive after all (its worker starved of CPU or "
                                           "stopped past its lease, or the database away), but a newer attempt had "
                                           "claimed the job; it stopped and kept nothing"))
                    s.commit()
        except Exception:
            log.warning("job %s: could not record that attempt %s was superseded", self.job_id, self.attempt,
                        exc_info=True)


def _heartbeat(lease: _Lease, stop: threading.Event) -> None:
    """Keep the lease while the job runs, whatever the engine is busy with."""
    while not stop.wait(max(1.0, lease.settings.job_lease_seconds / 4)):
        try:
            lease.beat()
        except Exception:  # the database may be restarting; the next beat tries again
            log.warning("heartbeat for job %s failed", lease.job_id, exc_info=True)


class TimeLimitExceeded(Exception):
    """The job ran past SECATEURS_JOB_SOFT_TIME_LIMIT, noticed at a progress report or between stages."""


class Superseded(Exception):
    """This attempt's lease was taken back: the job is queued again, or another attempt runs it."""


class StorageDown(Exception):
    """Object storage stayed unavailable for SECATEURS_STORAGE_RETRY_SECONDS while the job read or wrote a file."""


def _storage_call(settings: Settings, what: str, call: Callable[[], T]) -> T:
    """A storage call retried while storage is unavailable (the heartbeat keeps the lease meanwhile), for up to
    SECATEURS_STORAGE_RETRY_SECONDS; then StorageDown, which fails the job saying so."""
    deadline, delay = time.monotonic() + settings.storage_retry_seconds, 0.5
    while True:
        try:
            return call()
        except StorageUnavailable as exc:
            if time.monotonic() + delay > deadline:
                raise StorageDown(f"object storage was unavailable while {what} (tried for "
                                  f"{settings.storage_retry_seconds:.0f} s): {exc}") from exc
            log.warning("storage unavailable while %s (%s); trying again in %.1f s", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def run_job(job_id: str, settings: Settings) -> str:
    job = _claim(settings, job_id)
    if job is None:
        log.info("job %s is not queued (duplicate delivery or cancelled): nothing to do", job_id)
        return "skipped"
    notify(settings, job_id, "job.running")
    lease = _Lease(settings, job_id, job.attempts)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(lease, stop), name=f"heartbeat-{job_id}", daemon=True)
    beat.start()
    try:
        return _run_claimed(job, settings, lease)
    except Exception as exc:  # past the engine (the pool's soft time limit while the files are stored, say)
        return "failed" if _fail(settings, job_id, job.attempts, exc) else "interrupted"
    finally:
        stop.set()
        beat.join(timeout=5)


def _run_claimed(job: Job, settings: Settings, lease: _Lease) -> str:
    from secateurs.pruning.errors import Cancelled

    job_id, attempt = job.id, job.attempts
    storage = open_storage(settings.storage, settings.s3_endpoint_url)
    make = sessions(settings)
    last_cancel_check = [0.0, False]
    last_event: dict[str, Any] = {"stage": None, "progress": -1.0, "at": 0.0}
    # Celery's soft time limit interrupts a job only in a prefork pool; `secateurs up` runs a solo pool, where
    # nothing would. So the runner enforces the limit too, at every progress report and between stages.
    deadline = time.monotonic() + settings.job_soft_time_limit

    def should_cancel() -> bool:
        t = time.monotonic()
        if t > deadline:
            raise TimeLimitExceeded(f"the job ran past its time limit ({settings.job_soft_time_limit} s)")
        if t - last_cancel_check[0] > 0.5:  # the first call always reads the row
            try:
                with make() as s:
                    row = s.execute(select(Job.cancel_requested, Job.status, Job.attempts)
                                    .where(Job.id == job_id)).one()
                    ours = row.status == "running" and row.attempts == attempt
                    if not ours and lease.reclaim(s):  # its lease was lost while it ran, and nobody claimed it since
                        ours = True
                        s.commit()
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                # the database is restarting: go on; the heartbeat, or failing that the lease, decides
                log.warning("job %s: could not read its row (%s); going on", job_id, type(exc).__name__)
                return bool(last_cancel_check[1])
            if not ours:
                # claimed by a newer attempt (this one's lease expired while it ran, starved of CPU, say), cancelled
                # while queued, or ended: stop now rather than finish work whose result is discarded
                raise Superseded(f"attempt {attempt} of job {job_id} was taken back")
            lease.held()
            last_cancel_check[0], last_cancel_check[1] = t, bool(row.cancel_requested)
        return bool(last_cancel_check[1])

    def progress(stage: str, fraction: float, message: str, metrics: dict[str, Any]) -> None:
        # The engine checks for cancellation between stages; checking here too stops a long stage
        # (recovery, a latency search) at its next progress report.
        if should_cancel():
            raise Cancelled("the job was cancelled")
        t = time.monotonic()
        # A row per stage change, per percent of progress or per second at most: a fine-tune reporting
        # every step must not write thousands of rows.
        if (stage == last_event["stage"] and fraction - last_event["progress"] < 0.01
                and t - last_event["at"] < 1.0 and fraction < 1.0):
            return
        new_stage = stage != last_event["stage"]
        last_event.update(stage=stage, progress=fraction, at=t)
        lease.stage, lease.progress = stage, fraction
        clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}
        try:
            with make() as s:
                held = s.execute(update(Job).where(Job.id == job_id, Job.status == "running", Job.attempts == attempt)
                                 .values(stage=stage, progress=fraction, heartbeat_at=now())).rowcount
                if not held and not lease.reclaim(s):  # never a row of progress on a job this attempt no longer runs
                    s.rollback()
                    raise Superseded(f"attempt {attempt} of job {job_id} was taken back")
                s.add(JobEvent(job_id=job_id, type="progress", stage=stage, progress=fraction, message=message,
                               data=clean or None))
                s.commit()
                lease.held()
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            # progress is a report, not the job's work: a database restarting under it loses a row, not the job
            log.warning("job %s: progress not recorded (%s)", job_id, type(exc).__name__)
            return
        if new_stage:  # webhooks get one job.progress per stage, not every row
            notify(settings, job_id, "job.progress", {"message": message})

    try:
        result = _prune(job, settings, storage, progress, should_cancel)
        if time.monotonic() > deadline:  # the last stages report no progress: a job past its limit never succeeds
            raise TimeLimitExceeded(f"the job ran past its time limit ({settings.job_soft_time_limit} s)")
    except Exception as exc:  # every failure ends the job with a message; the worker lives on
        if any(isinstance(e, Superseded) for e in _chain(exc)):
            log.info("job %s: attempt %s was taken back; stopped", job_id, attempt)
            lease.note_superseded()
            return "superseded"
        return "failed" if _fail(settings, job_id, attempt, exc) else "interrupted"
    # Keys per attempt: an attempt whose lease was taken back never overwrites or deletes the files of
    # the attempt that replaced it.
    base = f"{job.tenant_id}/jobs/{job_id}/{attempt}"
    report_bytes = json.dumps(result.report, indent=2).encode()
    files = {"model.onnx": result.onnx, "report.json": report_bytes}
    try:
        outcome = _keep(settings, lease, job, base, files, result.report, storage)
    except BaseException as exc:  # the files of a job that did not succeed are not kept
        if isinstance(exc, Exception) and database_unavailable(exc):
            # unless the database stayed away through every try of the commit, whose answer may be all that was
            # lost: the orphan sweep (db/orphans.py) deletes them once no row names them and this attempt can no
            # longer record them; a succeeded job without its files would be a loss
            log.warning("job %s: the database stayed away while attempt %s recorded its files; %s left to the "
                        "orphan sweep", job_id, attempt, base)
        else:
            for name in files:
                _delete_quietly(storage, f"{base}/{name}")
        raise
    if outcome == "succeeded":
        notify(settings, job_id, "job.succeeded")
    return outcome


def _delete_quietly(storage: Any, key: str) -> None:
    try:
        storage.delete(key)
    except Exception:  # storage unavailable, say: the orphan sweep deletes it later
        log.warning("could not delete %s", key, exc_info=True)


def _keep(settings: Settings, lease: _Lease, job: Job, base: str, files: dict[str, bytes], report: dict[str, Any],
          storage: Any) -> str:
    """Store the files (waiting out object storage for a while), then make the job succeeded in the transaction that
    records them, trying the commit again while the database is unavailable (the attempt is alive and its result
    done: worth waiting for, rather than run the job again); or, when it was cancelled or taken back meanwhile,
    keep nothing."""
    for name, data in files.items():
        _storage_call(settings, f"storing the job's {name}", functools.partial(storage.put_bytes, f"{base}/{name}", data))
    deadline, delay = time.monotonic() + settings.record_retry_seconds, 0.5
    while True:
        try:
            return _record(settings, lease, job, base, files, report, storage)
        except Exception as exc:
            if not database_unavailable(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("job %s: the database is unavailable to record attempt %s's result (%s); trying again in "
                        "%.1f s", job.id, job.attempts, type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def _record(settings: Settings, lease: _Lease, job: Job, base: str, files: dict[str, bytes], report: dict[str, Any],
            storage: Any) -> str:
    from secateurs.pruning.errors import Cancelled

    job_id, attempt = job.id, job.attempts
    with sessions(settings)() as s:
        if s.execute(select(Artifact.id).where(Artifact.storage_key == f"{base}/{next(iter(files))}")).first():
            return "succeeded"  # an earlier try's commit went through, and only its answer was lost
        lease.resume(s)  # its lease lost since the last check and nobody claimed the job: this commit takes it back
        for name, data in files.items():
            s.add(Artifact(id=new_id("art"), job_id=job_id, name=name, storage_key=f"{base}/{name}",
                           size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))
        # A cancel that arrived after the engine's last check (it reads the flag at most twice a second)
        # still wins: the job only succeeds if nobody asked to stop it before this commit.
        done = s.execute(update(Job).where(Job.id == job_id, Job.status == "running", Job.attempts == attempt,
                                           Job.cancel_requested.is_(False)).values(
            status="succeeded", progress=1.0, stage="done", metrics=report, finished_at=now(), error=None)
        ).rowcount
        if not done:  # cancelled, or taken back and run again meanwhile: keep nothing of this attempt
            s.rollback()
            for name in files:
                _delete_quietly(storage, f"{base}/{name}")
            # ends it as cancelled when it is still this attempt's; does nothing when it was taken back
            if _fail(settings, job_id, attempt, Cancelled("the job was cancelled")):
                return "cancelled"
            lease.note_superseded()
            return "superseded"
        charge_storage(s, job.tenant_id, sum(len(data) for data in files.values()), None)  # counted, never refused
        s.add(JobEvent(job_id=job_id, type="succeeded", stage="done", progress=1.0, message="job succeeded",
                       data={k: report.get(k) for k in ("macs_kept", "params_kept", "latency_ms_before",
                                                         "latency_ms_after", "accuracy_after")}))
        s.commit()
    return "succeeded"


def _prune(job: Job, settings: Settings, storage: Any, progress: Any, should_cancel: Any) -> Any:
    import torch
    from secateurs.pruning.data import load_npz
    from secateurs.pruning.pipeline import prune
    from secateurs.pruning.spec import PruneSpec

    spec = PruneSpec.model_validate(job.spec)
    if spec.limits.memory_gb is None and settings.job_memory_gb is not None:  # the service's default cap
        spec = spec.model_copy(update={"limits": spec.limits.model_copy(update={"memory_gb": settings.job_memory_gb})})
    keys: dict[str, str] = {}
    with sessions(settings)() as s:
        model = s.get(Model, job.model_id)
        assert model is not None
        for name in ("calibration", "evaluation"):
            ref = getattr(spec, name).dataset_id
            if ref:
                keys[name] = s.execute(select(Dataset.storage_key).where(
                    Dataset.id == ref, Dataset.tenant_id == job.tenant_id)).scalar_one()
    datasets = {name: load_npz(_storage_call(settings, f"reading the {name} dataset",
                                             functools.partial(storage.get_bytes, key))) for name, key in keys.items()}
    onnx_or_weights = _storage_call(settings, "reading the model", functools.partial(storage.get_bytes,
                                                                                     model.storage_key))
    device = "cuda" if torch.cuda.is_available() else "cpu"  # chosen here, in the process that runs the job
    return prune(onnx_or_weights, spec, arch=model.arch, num_classes=model.num_classes,
                 calibration=datasets.get("calibration"), evaluation=datasets.get("evaluation"),
                 progress=progress, should_cancel=should_cancel, device=device)


def _fail(settings: Settings, job_id: str, attempt: int, exc: Exception) -> bool:
    """End the attempt's job as failed (or cancelled) saying why; True when it did. A job whose attempt failed
    because the database did is left running, for its lease to hand it to a new attempt: not the job's fault."""
    from secateurs.pruning.errors import Cancelled, FidelityError, PruningError

    if database_unavailable(exc):
        log.warning("job %s: attempt %s stopped, the database is unavailable (%s); the lease will take it back",
                    job_id, attempt, exc)
        return False
    if _past_time_limit(exc):
        status, kind, why = "failed", "failed", "resource-limit"
        message = f"the job ran past its time limit ({settings.job_soft_time_limit} s)"
    elif isinstance(exc, Cancelled):
        status, message, kind, why = "cancelled", "cancelled while running", "cancelled", None
    elif isinstance(exc, PruningError):  # its code: invalid-*, unsupported-model, fidelity-budget, resource-limit...
        status, message, kind, why = "failed", str(exc), "failed", exc.code
    elif down := next((e for e in _chain(exc) if isinstance(e, StorageDown)), None):
        status, message, kind, why = "failed", str(down), "failed", "storage-unavailable"
    else:
        log.exception("job %s crashed", job_id)
        status, kind, why = "failed", "failed", "internal-error"
        message = (f"internal error: {type(exc).__name__}: {str(exc)[:300]} (an engine bug: the traceback is in the "
                   f"worker's log under job {job_id})")
    try:
        with sessions(settings)() as s:
            # queued with this attempt's number: its lease was lost meanwhile and nobody claimed it since, so the
            # outcome is still this attempt's to say (rather than a new attempt running into the same end)
            # a model that missed its fidelity budget fails with its full report, to show what was lost
            extra = {"metrics": exc.report} if isinstance(exc, FidelityError) else {}
            n = s.execute(update(Job).where(Job.id == job_id, Job.status.in_(("running", "queued")),
                                            Job.attempts == attempt).values(
                status=status, error=None if status == "cancelled" else message, error_type=why, finished_at=now(),
                stage=kind, **extra)).rowcount
            if n:
                s.add(JobEvent(job_id=job_id, type=kind, stage=kind, message=message,
                               data={"error_type": why} if why else None))
            s.commit()
    except Exception as e:
        if not database_unavailable(e):
            raise
        log.warning("job %s: could not record that it %s (%s); the lease will take it back", job_id, kind, e)
        return False
    if n:
        notify(settings, job_id, f"job.{kind}")
    return bool(n)


def fail_killed_at_hard_limit(settings: Settings, job_id: str) -> bool:
    """Fail a job whose pool process Celery killed at the hard time limit (reported in the worker's main process):
    it was stuck where the soft limit could not stop it, in C code say. Without this its row would stay `running`
    until the lease ran out, and the job would then be run again, into the same wall. The attempt killed is the
    one that started a hard limit ago; one that replaced it (its lease taken back meanwhile) started at least a
    lease later, past the margin, and is left alone. True when the job was failed here."""
    message = (f"the job ran past its hard time limit ({settings.hard_time_limit} s) and its process was killed: "
               f"it was stuck where the soft limit ({settings.job_soft_time_limit} s) could not stop it")
    margin = settings.job_lease_seconds / 2
    cutoff = now() - timedelta(seconds=settings.hard_time_limit - margin)
    with sessions(settings)() as s:
        n = s.execute(update(Job).where(Job.id == job_id, Job.status == "running", Job.started_at <= cutoff)
                      .values(status="failed", error=message, error_type="resource-limit", finished_at=now(),
                              stage="failed")).rowcount
        if n:
            s.add(JobEvent(job_id=job_id, type="failed", stage="failed", message=message,
                           data={"error_type": "resource-limit"}))
        s.commit()
    if n:
        notify(settings, job_id, "job.failed")
    return bool(n)


def _past_time_limit(exc: BaseException) -> bool:
    """The runner's own deadline, or Celery's SoftTimeLimitExceeded (raised by a signal wherever the job was, so
    possibly inside code that wraps every exception in its own: look down the chain too)."""
    return any(isinstance(e, TimeLimitExceeded) or type(e).__name__ == "SoftTimeLimitExceeded" for e in _chain(exc))


def sweep(settings: Settings, enqueue: Any, *, waiting_too: bool = False,
          queue_depth: Callable[[], int] | None = None) -> list[str]:
    """Take back expired leases (see db.leases). With `waiting_too` (at start-up), also hand every queued job
    to the broker again, in case the broker lost it while nothing was running. With `queue_depth` (the
    periodic sweep), hand again the queued jobs left unclaimed for a lease when the broker holds fewer
    messages than there are queued jobs: it restarted empty, or an enqueue failed while it was down."""
    from secateurs.db.leases import mark_redelivered, queued_count, take_back_expired, unclaimed, waiting

    lost: list[str] = []
    with sessions(settings)() as s:
        requeued = take_back_expired(s, settings.job_lease_seconds, settings.job_max_attempts)
        if waiting_too:
            lost = waiting(s, older_than_seconds=0.0)
        elif queue_depth is not None:
            lost = unclaimed(s, settings.job_lease_seconds)
            # only when messages are missing: a long queue behind busy workers is not redelivered every lease
            if lost and queue_depth() < queued_count(s):
                mark_redelivered(s, lost, settings.job_lease_seconds)
            else:
                lost = []
    for job_id in dict.fromkeys([*requeued, *lost]):
        enqueue(job_id)
    return [*requeued, *lost]
