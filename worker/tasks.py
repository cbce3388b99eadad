"""Celery tasks: thin wrappers over the job runner."""

from __future__ import annotations

from celery import shared_task
from secateurs.db.settings import get_settings

from .runner import run_job as _run_job


@shared_task(name="secateurs.run_job", acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> str:
    return _run_job(job_id, get_settings())
