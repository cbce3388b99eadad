"""Celery tasks: thin wrappers over the job runner."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.signals import worker_process_init
from secateurs.db.settings import get_settings

from .runner import run_job as _run_job


@worker_process_init.connect
def _load_the_engine(**_: Any) -> None:
    """Each pool process imports the engine (torch, ONNX Runtime) as it starts, not inside its first job: there the
    import took seconds of the job's time limit, and a soft time limit landing mid-import would leave torch
    half-imported for every later job of the process. Importing torch starts no CUDA; the job picks its device."""
    import secateurs.pruning.pipeline  # noqa: F401


@shared_task(name="secateurs.run_job", acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> str:
    return _run_job(job_id, get_settings())
