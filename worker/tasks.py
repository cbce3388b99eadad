"""Celery tasks: thin wrappers over the job runner."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.signals import task_failure, worker_process_init
from secateurs.db.settings import get_settings

from .runner import fail_killed_at_hard_limit
from .runner import run_job as _run_job

TASK = "secateurs.run_job"


@worker_process_init.connect
def _load_the_engine(**_: Any) -> None:
    """Each pool process imports the engine as it starts, not inside its first job: there the imports took 10-25 s
    of a job's time limit on a busy machine, and a soft time limit landing mid-import would leave a module
    half-imported for every later job of the process. With the pipeline, the modules it imports only when first
    used (ONNX conversion, the dependency graph, the exporter, FLOP counting, safetensors, the zoo). Importing
    torch starts no CUDA; the job picks its device. Pool processes only: a solo pool (`secateurs up`) runs jobs in
    the worker's main process, where Celery's time limits never fire, and its start stays light."""
    from billiard.process import current_process

    if current_process().name == "MainProcess":
        return
    import onnx2torch  # noqa: F401
    import safetensors.torch  # noqa: F401
    import secateurs.pruning.pipeline  # noqa: F401
    import torch.onnx  # noqa: F401
    import torch.utils.flop_counter  # noqa: F401
    import torch_pruning  # noqa: F401
    import torchvision  # noqa: F401


@task_failure.connect
def _killed_at_the_hard_limit(sender: Any = None, exception: BaseException | None = None,
                              args: Any = None, **_: Any) -> None:
    """Celery kills a pool process whose job passed the hard time limit, reports it here in the worker's main
    process (possibly twice: the pool's timeout and its result callback) and acks the message; the job is then
    failed saying so (once: only a `running` row changes)."""
    from billiard.exceptions import TimeLimitExceeded

    if isinstance(exception, TimeLimitExceeded) and getattr(sender, "name", None) == TASK and args:
        fail_killed_at_hard_limit(get_settings(), str(args[0]))


@shared_task(name=TASK, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> str:
    return _run_job(job_id, get_settings())
