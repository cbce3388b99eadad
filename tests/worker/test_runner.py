"""The job runner on a real database (SQLite), real local storage and the real engine: what a worker
does with one delivery of `run_job`, whatever the broker."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
from secateurs.db.models import Artifact, Job, JobEvent, Model, Tenant, new_id
from secateurs.db.session import migrate, sessions
from secateurs.db.settings import Settings
from secateurs.db.storage import open_storage
from secateurs.pruning.onnx_tools import stats
from secateurs.worker.runner import run_job
from sqlalchemy import select, update

from tests.conftest import shared

SPEC = {"signal": "l2_norm", "target": {"macs": 0.6}, "measure": {"repeats": 5}}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    s = Settings(home=tmp_path_factory.mktemp("worker"))
    s.ensure_home()
    migrate(s)
    return s


@pytest.fixture(scope="module")
def tenant_id(settings: Settings) -> str:
    with sessions(settings)() as s:
        t = Tenant(name="worker-tests")
        s.add(t)
        s.commit()
        return t.id


def add_model(settings: Settings, tenant_id: str, data: bytes | None) -> str:
    """A model row as the API leaves it; `data=None` leaves nothing in storage."""
    model_id = new_id("mdl")
    key = f"{tenant_id}/models/{model_id}"
    if data is not None:
        open_storage(settings.storage).put_bytes(key, data)
    with sessions(settings)() as s:
        s.add(Model(id=model_id, tenant_id=tenant_id, filename="m", format="safetensors", arch="resnet20_cifar",
                    num_classes=10, input_shape={"shape": [1, 3, 32, 32]}, size_bytes=len(data or b""),
                    sha256="0" * 64, storage_key=key))
        s.commit()
    return model_id


def add_job(settings: Settings, tenant_id: str, model_id: str, spec: dict = SPEC) -> str:
    with sessions(settings)() as s:
        job = Job(id=new_id("job"), tenant_id=tenant_id, model_id=model_id, spec=spec, status="queued")
        s.add(job)
        s.commit()
        return job.id


def load(settings: Settings, job_id: str) -> tuple[Job, list[JobEvent], list[Artifact]]:
    with sessions(settings)() as s:
        job = s.get(Job, job_id)
        events = list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))
        arts = list(s.scalars(select(Artifact).where(Artifact.job_id == job_id)))
        return job, events, arts


@pytest.fixture(scope="module")
def weights() -> bytes:
    return shared("resnet20_cifar10.safetensors").read_bytes()


@pytest.fixture(scope="module")
def succeeded(settings: Settings, tenant_id: str, weights: bytes) -> str:
    job_id = add_job(settings, tenant_id, add_model(settings, tenant_id, weights))
    assert run_job(job_id, settings) == "succeeded"
    return job_id


def test_a_job_succeeds_with_its_artifacts_recorded_and_its_report_as_metrics(settings, succeeded):
    job, events, arts = load(settings, succeeded)
    assert job.status == "succeeded" and job.progress == 1.0 and job.error is None and job.attempts == 1
    assert job.started_at is not None and job.finished_at is not None
    storage = open_storage(settings.storage)
    files = {a.name: storage.get_bytes(a.storage_key) for a in arts}
    assert set(files) == {"model.onnx", "report.json"}
    report = json.loads(files["report.json"])
    assert job.metrics == report
    assert report["macs_after"] == stats(files["model.onnx"], [1, 3, 32, 32]).macs
    assert report["macs_after"] <= 0.6 * report["macs_before"]
    assert all(a.size_bytes == len(files[a.name]) for a in arts)
    with sessions(settings)() as s:  # the tenant's stored bytes count what its jobs wrote (the first job here)
        assert s.get(Tenant, job.tenant_id).stored_bytes == sum(a.size_bytes for a in arts)
    kinds = [e.type for e in events]
    assert kinds[0] == "running" and kinds[-1] == "succeeded" and set(kinds[1:-1]) == {"progress"}
    progress = [e.progress for e in events if e.type == "progress"]
    assert progress == sorted(progress)
    assert {"import", "analyse", "score", "plan", "apply", "export", "verify"} <= {e.stage for e in events}


def test_a_duplicate_delivery_does_nothing(settings, succeeded):
    _, before, _ = load(settings, succeeded)
    assert run_job(succeeded, settings) == "skipped"
    job, after, arts = load(settings, succeeded)
    assert job.status == "succeeded" and job.attempts == 1 and len(after) == len(before) and len(arts) == 2


def test_cancel_while_running_stops_the_job_and_keeps_no_artifact(settings, tenant_id, weights):
    job_id = add_job(settings, tenant_id, add_model(settings, tenant_id, weights))

    def cancel_once_running() -> None:  # what POST /v1/jobs/{id}/cancel does to a running job
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with sessions(settings)() as s:
                if s.execute(update(Job).where(Job.id == job_id, Job.status == "running")
                             .values(cancel_requested=True)).rowcount:
                    s.commit()
                    return
            time.sleep(0.02)

    canceller = threading.Thread(target=cancel_once_running)
    canceller.start()
    run_job(job_id, settings)
    canceller.join()
    job, events, arts = load(settings, job_id)
    assert job.status == "cancelled" and job.error is None and arts == []
    assert events[-1].type == "cancelled"
    assert not list((settings.home / "storage" / tenant_id).glob(f"jobs/{job_id}/**/*"))


def test_bad_input_fails_the_job_with_the_engines_message(settings, tenant_id):
    job_id = add_job(settings, tenant_id, add_model(settings, tenant_id, b"\x00\x01 not a model" * 50))
    assert run_job(job_id, settings) == "failed"
    job, events, arts = load(settings, job_id)
    assert job.status == "failed" and arts == []
    assert job.error and "internal error" not in job.error  # the engine's user-facing message, as it said it
    assert job.error_type == "invalid-model", job.error_type
    assert events[-1].type == "failed" and events[-1].message == job.error


def test_an_unexpected_crash_fails_the_job_and_the_worker_lives_on(settings, tenant_id, weights):
    job_id = add_job(settings, tenant_id, add_model(settings, tenant_id, None))  # its file vanished
    assert run_job(job_id, settings) == "failed"
    job, _, _ = load(settings, job_id)
    assert job.status == "failed" and job.error.startswith("internal error:") and job.error_type == "internal-error"


def test_a_job_past_the_soft_time_limit_fails_saying_so_even_in_a_solo_pool(settings, tenant_id, weights):
    """`secateurs up` runs a solo pool, where Celery's soft time limit never fires: the runner enforces it."""
    limited = settings.model_copy(update={"job_soft_time_limit": 1})
    # 50 rounds of reports: past the 1 s limit however fast the machine (8 rounds took 0.5 s on some), before the
    # latency measurement of 4000 runs, which reports nothing
    job_id = add_job(settings, tenant_id, add_model(settings, tenant_id, weights),
                     {**SPEC, "schedule": {"steps": 50}, "measure": {"repeats": 4000}})
    t0 = time.monotonic()
    assert run_job(job_id, limited) == "failed"
    job, events, arts = load(settings, job_id)
    assert job.error == "the job ran past its time limit (1 s)" and arts == [] and job.error_type == "resource-limit"
    assert events[-1].type == "failed" and events[-1].message == job.error
    assert time.monotonic() - t0 < 6, "stopped at the first progress report past the limit"
    assert not [p for p in (settings.home / "storage" / tenant_id).glob(f"jobs/{job_id}/**/*") if p.is_file()]


def test_the_pools_soft_time_limit_is_named_even_when_engine_code_wrapped_it(settings, tenant_id):
    """Celery raises SoftTimeLimitExceeded from a signal handler wherever the job is, possibly inside a library
    call that the engine turns into its own error (`raise ... from None` keeps the context)."""
    from celery.exceptions import SoftTimeLimitExceeded
    from secateurs.pruning.errors import UnsupportedModelError
    from secateurs.worker.runner import _fail

    job_id = add_job(settings, tenant_id, add_model(settings, tenant_id, None))
    with sessions(settings)() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status="running", attempts=1))
        s.commit()
    try:
        try:
            raise SoftTimeLimitExceeded()
        except Exception as e:
            raise UnsupportedModelError(f"the dependency graph cannot be traced: {type(e).__name__}") from None
    except UnsupportedModelError as wrapped:
        assert _fail(settings, job_id, 1, wrapped)
    job, _, _ = load(settings, job_id)
    assert job.status == "failed" and job.error == f"the job ran past its time limit ({settings.job_soft_time_limit} s)"


def test_importing_the_tasks_leaves_torch_and_cuda_to_the_process_that_runs_a_job():
    code = ("import sys, secateurs.worker.tasks, secateurs.worker.app as a; a.worker_app(); "
            "assert 'torch' not in sys.modules, 'torch imported by the worker parent'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_celery_is_configured_for_long_jobs_that_are_never_lost(tmp_path):
    from secateurs.worker.app import make_celery

    s = Settings(home=tmp_path, broker_url="redis://127.0.0.1:6379/13", job_soft_time_limit=100, job_time_limit=160)
    conf = make_celery(s, with_tasks=True).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.worker_proc_alive_timeout >= 120  # a pool process importing the engine is not killed as hung
    assert (conf.task_soft_time_limit, conf.task_time_limit) == (100, 160)
    # a lowered soft limit brings the hard one down with it, unless that is set too
    assert make_celery(Settings(home=tmp_path, job_soft_time_limit=3)).conf.task_time_limit == 303
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    embedded = make_celery(Settings(home=tmp_path))
    assert embedded.conf.broker_url.startswith("sqla+sqlite:///") and str(tmp_path) in embedded.conf.broker_url


def test_an_attempt_taken_back_meanwhile_keeps_nothing_and_leaves_the_job_to_its_successor(settings, tenant_id, weights):
    job_id = add_job(settings, tenant_id, add_model(settings, tenant_id, weights))

    def take_back_once_running() -> None:  # the sweeper requeued the job and another worker claimed it
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with sessions(settings)() as s:
                if s.execute(update(Job).where(Job.id == job_id, Job.status == "running")
                             .values(attempts=Job.attempts + 1)).rowcount:
                    s.commit()
                    return
            time.sleep(0.02)

    thief = threading.Thread(target=take_back_once_running)
    thief.start()
    outcome = run_job(job_id, settings)
    thief.join()
    job, _, arts = load(settings, job_id)
    assert outcome == "superseded" and job.status == "running" and job.attempts == 2 and arts == []
    assert not [p for p in (settings.home / "storage" / tenant_id).glob(f"jobs/{job_id}/**/*") if p.is_file()]


def test_an_attempt_taken_back_before_its_first_check_stops_there_without_writing(settings, tenant_id, weights,
                                                                                 monkeypatch):
    """Whatever the job's length: the lease is taken back (and the job claimed again, attempt 2) after this attempt
    claimed it and before the engine starts; the engine's first check, at the start of its first stage, reads the
    row (the first read is never throttled) and stops the attempt. No progress is written to a row it lost."""
    from secateurs.worker import runner

    job_id = add_job(settings, tenant_id, add_model(settings, tenant_id, weights))
    real, reports = runner._prune, []

    def taken_back_first(job, settings_, storage, progress, should_cancel):  # type: ignore[no-untyped-def]
        with sessions(settings)() as s:  # what the sweeper and the next worker's claim leave on the row
            assert s.execute(update(Job).where(Job.id == job_id, Job.status == "running", Job.attempts == 1)
                             .values(attempts=2)).rowcount == 1
            s.commit()
        return real(job, settings_, storage, lambda *a: (reports.append(a[0]), progress(*a)), should_cancel)

    monkeypatch.setattr(runner, "_prune", taken_back_first)
    assert run_job(job_id, settings) == "superseded"
    job, events, arts = load(settings, job_id)
    assert reports == [], f"the attempt went on into {reports}"
    assert job.status == "running" and job.attempts == 2 and job.stage == "starting" and arts == []
    assert [e.type for e in events] == ["running", "superseded"]  # it says it was alive: not a lost worker
    assert not [p for p in (settings.home / "storage" / tenant_id).glob(f"jobs/{job_id}/**/*") if p.is_file()]


def test_progress_is_never_written_to_a_row_the_attempt_lost(settings, tenant_id, weights, monkeypatch):
    """Taken back and claimed by a newer attempt between two checks (the check is throttled to twice a second): the
    next progress report finds the row no longer its own and stops the attempt instead of writing."""
    from secateurs.worker import runner

    job_id = add_job(settings, tenant_id, add_model(settings, tenant_id, weights))
    real, reports = runner._prune, []

    def taken_back_at_first_report(job, settings_, storage, progress, should_cancel):  # type: ignore[no-untyped-def]
        def report(*a):  # type: ignore[no-untyped-def]
            reports.append(a[0])
            if len(reports) == 1:  # the first check has just read the row as this attempt's: a newer one claims it
                with sessions(settings)() as s:
                    s.execute(update(Job).where(Job.id == job_id).values(attempts=Job.attempts + 1))
                    s.commit()
            progress(*a)

        return real(job, settings_, storage, report, should_cancel)

    monkeypatch.setattr(runner, "_prune", taken_back_at_first_report)
    assert run_job(job_id, settings) == "superseded"
    job, events, _ = load(settings, job_id)
    assert reports == ["import"] and job.status == "running" and job.attempts == 2
    assert [e.type for e in events] == ["running", "superseded"], [(e.type, e.stage) for e in events]


def _expire_lease(settings: Settings, job_id: str) -> list[str]:
    """What the sweeper does once the attempt's heartbeat is a lease old: the job queued again."""
    from datetime import timedelta

    from secateurs.db.leases import take_back_expired
    from secateurs.db.models import now

    with sessions(settings)() as s:
        s.execute(update(Job).where(Job.id == job_id).values(
            heartbeat_at=now() - timedelta(seconds=settings.job_lease_seconds + 1)))
        s.commit()
        return take_back_expired(s, settings.job_lease_seconds, settings.job_max_attempts)


def test_an_alive_attempt_whose_lease_was_taken_back_resumes_the_job_when_nobody_claimed_it(settings, tenant_id,
                                                                                          weights, monkeypatch):
    """The sweeper queues the job again while its attempt still runs (starved past its lease, say) and no worker
    claims it: the attempt takes it back at its next check and finishes it, as attempt 1, with one set of files."""
    from secateurs.worker import runner

    job_id = add_job(settings, tenant_id, add_model(settings, tenant_id, weights))
    real, reports = runner._prune, []

    def requeued_at_first_report(job, settings_, storage, progress, should_cancel):  # type: ignore[no-untyped-def]
        def report(*a):  # type: ignore[no-untyped-def]
            reports.append(a[0])
            if len(reports) == 1:
                assert job_id in _expire_lease(settings, job_id)
            progress(*a)

        return real(job, settings_, storage, report, should_cancel)

    monkeypatch.setattr(runner, "_prune", requeued_at_first_report)
    assert run_job(job_id, settings) == "succeeded"
    job, events, arts = load(settings, job_id)
    kinds = [e.type for e in events]
    assert job.status == "succeeded" and job.attempts == 1 and sorted(a.name for a in arts) == ["model.onnx",
                                                                                               "report.json"]
    assert kinds[:3] == ["running", "requeued", "resumed"] and kinds.count("succeeded") == 1, kinds
    assert "was alive after all" in events[2].message
    assert run_job(job_id, settings) == "skipped"  # the requeue's message, delivered later, finds nothing to do


def test_only_attempts_never_heard_from_again_count_as_lost_workers(settings, tenant_id):
    """Three attempts lost their lease: two of them said they were alive (superseded), so the job is queued again;
    with none alive it fails; and attempts in all stop at twice the cap."""
    from secateurs.db.models import now

    model = add_model(settings, tenant_id, None)

    def stale(attempts: int, alive: int) -> str:
        job_id = add_job(settings, tenant_id, model)
        with sessions(settings)() as s:
            s.execute(update(Job).where(Job.id == job_id).values(status="running", attempts=attempts,
                                                                 heartbeat_at=now()))
            s.add_all([JobEvent(job_id=job_id, type="superseded") for _ in range(alive)])
            s.commit()
        return job_id

    max_attempts = settings.job_max_attempts
    starved, dead, endless = stale(max_attempts, 2), stale(max_attempts, 0), stale(2 * max_attempts, 2 * max_attempts - 1)
    for job_id in (starved, dead, endless):
        _expire_lease(settings, job_id)
    assert load(settings, starved)[0].status == "queued"
    failed = load(settings, dead)[0]
    assert failed.status == "failed" and failed.error == f"the worker was lost {max_attempts} times; giving up"
    assert failed.error_type == "worker-lost"
    assert load(settings, endless)[0].error == (f"{2 * max_attempts} attempts lost their lease "
                                                f"({2 * max_attempts - 1} of them alive but starved or cut off); "
                                                "giving up")


class _FlakyStorage:
    """Local storage whose writes (or the writes of one file) fail as S3 unreachable does, `failures` times."""

    def __init__(self, real, failures: int, only: str | None = None) -> None:  # type: ignore[no-untyped-def]
        self.real, self.failures, self.only, self.puts = real, failures, only, 0

    def put_bytes(self, key: str, data: bytes) -> None:
        from secateurs.db.storage import StorageUnavailable

        if self.failures and (self.only is None or key.endswith(self.only)):
            self.failures -= 1
            raise StorageUnavailable("EndpointConnectionError: Could not connect to the endpoint URL")
        self.puts += 1
        self.real.put_bytes(key, data)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.real, name)


def _job_files(settings: Settings, tenant_id: str, job_id: str) -> list[str]:
    return sorted(p.name for p in (settings.home / "storage" / tenant_id).glob(f"jobs/{job_id}/**/*") if p.is_file())


def test_storage_unavailable_while_the_results_are_stored_is_waited_out(settings, tenant_id, weights, monkeypatch):
    from secateurs.worker import runner

    job_id = add_job(settings, tenant_id, add_model(settings, tenant_id, weights))
    flaky = _FlakyStorage(open_storage(settings.storage), failures=2)
    monkeypatch.setattr(runner, "open_storage", lambda *_: flaky)
    assert run_job(job_id, settings) == "succeeded"
    job, _, arts = load(settings, job_id)
    assert job.status == "succeeded" and flaky.failures == 0 and len(arts) == 2
    assert _job_files(settings, tenant_id, job_id) == ["model.onnx", "report.json"]


def test_storage_down_past_the_retry_window_fails_the_job_saying_so_and_keeps_nothing(settings, tenant_id, weights,
                                                                                     monkeypatch):
    """The model is stored, then storage goes away before the report is: the job fails naming object storage, the
    model's file is deleted again, and no row names a file (nothing half-recorded)."""
    from secateurs.worker import runner

    job_id = add_job(settings, tenant_id, add_model(settings, tenant_id, weights))
    flaky = _FlakyStorage(open_storage(settings.storage), failures=1000, only="report.json")
    monkeypatch.setattr(runner, "open_storage", lambda *_: flaky)
    monkeypatch.setattr(settings, "storage_retry_seconds", 2.0)
    assert run_job(job_id, settings) == "failed"
    job, events, arts = load(settings, job_id)
    assert job.status == "failed" and arts == [] and flaky.puts == 1, (job.error, flaky.puts)
    assert job.error.startswith("object storage was unavailable while storing the job's report.json (tried for 2 s): "
                                "EndpointConnectionError"), job.error
    assert job.error_type == "storage-unavailable"
    assert events[-1].type == "failed" and _job_files(settings, tenant_id, job_id) == []


def test_a_result_whose_commit_meets_the_database_down_is_recorded_once_it_is_back(settings, tenant_id, weights,
                                                                                   monkeypatch):
    """The attempt's final commit fails twice on an unavailable database (once with the commit done and only its
    answer lost): the attempt tries again, records its result exactly once, and keeps one set of files."""
    from secateurs.worker import runner
    from sqlalchemy.exc import OperationalError

    job_id = add_job(settings, tenant_id, add_model(settings, tenant_id, weights))
    real, calls = runner._record, []

    def flaky_record(*a, **kw):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))
        if len(calls) == 2:
            real(*a, **kw)  # committed; the answer is lost on the way back
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))
        return real(*a, **kw)

    monkeypatch.setattr(runner, "_record", flaky_record)
    assert run_job(job_id, settings) == "succeeded"
    job, events, arts = load(settings, job_id)
    assert len(calls) == 3 and job.status == "succeeded" and len(arts) == 2
    assert [e.type for e in events].count("succeeded") == 1
    assert _job_files(settings, tenant_id, job_id) == ["model.onnx", "report.json"]
