"""Resource limits of one job: an address-space cap and a wall-time budget, so that a model whose tracing runs
away (index lists exploding where a feature map is flattened into attention) fails its job with the stage and
the figure reached, and the process that ran it goes on to the next job.

The cap is on address space (RLIMIT_AS), counted from what the process already maps when the job starts: a CUDA
build of torch maps several GB it never touches, so an absolute cap would mean little. An allocation past it
fails in the allocator (MemoryError from Python, a RuntimeError from torch's), before the kernel's OOM killer
would take the whole process, and the cap is lifted when the job ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from typing import get_args

from .errors import PruningError
from .spec import Stage

_CAP_HELD = threading.Lock()
DEFAULT_FRACTION = 0.6  # of the machine's memory, when neither the spec nor the configuration says
GIB = 1 << 30


class ResourceLimitError(PruningError):
    """The job went past one of its limits; the message names the stage, the figure and what to try."""

    code = "resource-limit"


def machine_memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


def default_memory_gb() -> float:
    configured = os.environ.get("SECATEURS_JOB_MEMORY_GB")
    if configured:
        return float(configured)
    return round(DEFAULT_FRACTION * machine_memory_gb(), 1)


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


class MemoryCap:
    """While active, the process may map at most `gb` GiB more than it did when the cap was set. A thread samples
    how much it maps (every 10 ms), so that a failure can be told to be the cap's doing also where a library
    reports it as something else ("Failed to serialize proto", a checker error, a thread that did not start)."""

    INTERVAL = 0.01

    def __init__(self, gb: float) -> None:
        self.gb = gb
        self.base = self.most = 0
        self.active = False
        self._stop = threading.Event()

    def hit(self) -> bool:
        """Whether the job used half its allowance, or all but 256 MiB of it, at some point (one failed request can
        be large: the sampled figure is what was mapped before it)."""
        if not self.active:
            return False
        self.most = max(self.most, _status("VmSize"))
        allowance = self.gb * GIB
        return self.most - self.base >= min(0.5 * allowance, allowance - 256 * (1 << 20))

    def _sample(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            try:
                self.most = max(self.most, _status("VmSize"))
            except (OSError, ValueError):
                return

    @contextlib.contextmanager
    def applied(self) -> Iterator[MemoryCap]:
        # RLIMIT_AS is the whole process's: one job at a time sets it (a second job in another thread of the same
        # process runs uncapped rather than restore a limit that is not its own)
        if not _CAP_HELD.acquire(blocking=False):
            yield self
            return
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            _status("VmSize")
        except (OSError, ValueError):  # no /proc (not Linux): no cap
            _CAP_HELD.release()
            yield self
            return
        sampler = threading.Thread(target=self._sample, name="secateurs-memory-cap", daemon=True)
        sampler.start()  # before the cap: its own stack is mapped already
        self.base = self.most = _status("VmSize")
        cap = self.base + int(self.gb * GIB)
        for limit in (soft, hard):
            if limit != resource.RLIM_INFINITY:
                cap = min(cap, limit)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
        self.active = True
        try:
            yield self
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
            self._stop.set()
            sampler.join()
            _CAP_HELD.release()


def memory_cap(gb: float) -> contextlib.AbstractContextManager[MemoryCap]:
    """Let the process map at most `gb` GiB more than it does now, until the block ends."""
    return MemoryCap(gb).applied()


def out_of_memory(exc: BaseException) -> bool:
    """Whether an allocation failed somewhere in the chain (engine code re-raises library errors as its own)."""
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 20:
        if isinstance(e, MemoryError):
            return True
        text = str(e)
        # torch's RuntimeError, ONNX Runtime's own exception types (not RuntimeError), a C++ bad_alloc
        if any(words in text for words in ("can't allocate memory", "bad_alloc", "out of memory",
                                           "Failed to allocate memory")):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


HINTS = {
    "analyse": "protect the layers where the feature map is flattened (--protect), or give a smaller input_shape",
    "import": "give a smaller input_shape",
    "score": "use a weight-only signal (l1_norm, l2_norm) or fewer calibration samples",
    "recover": "use fewer calibration samples or a smaller recovery batch_size",
}


STAGES = get_args(Stage)
#: Wall time of one pass through a stage when neither the spec nor SECATEURS_STAGE_MINUTES says: tracing is where a
#: model runs away (index lists exploding where a feature map is flattened into attention) without a word
DEFAULT_STAGE_MINUTES = {"analyse": 20.0}


def default_stage_minutes() -> dict[str, float]:
    """SECATEURS_STAGE_MINUTES, e.g. "analyse=10,recover=120" (an empty string: no stage caps), else the default."""
    configured = os.environ.get("SECATEURS_STAGE_MINUTES")
    if configured is None:
        return dict(DEFAULT_STAGE_MINUTES)
    caps = {}
    for part in filter(None, (p.strip() for p in configured.split(","))):
        stage, _, minutes = part.partition("=")
        if stage.strip() not in STAGES:
            raise ValueError(f"SECATEURS_STAGE_MINUTES: unknown stage {stage.strip()!r}; stages: {', '.join(STAGES)}")
        caps[stage.strip()] = float(minutes)
    return caps


class PastLimit(BaseException):
    """Raised in the job's thread by the watchdog. A BaseException, so that a library's `except Exception` around
    the code it interrupts cannot swallow it; the engine turns it into a ResourceLimitError."""


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    # CPython delivers it when the thread next runs Python bytecode: Torch-Pruning's tracing, a recovery loop,
    # the engine between two library calls. A call that stays in C (one ONNX Runtime run) finishes first.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None)


class Watchdog:
    """Wall-time caps of one job: the whole job (`limits.minutes`) and each pass through a stage
    (`limits.stage_minutes`). Past one, the thread that runs the job is interrupted wherever it is, not only
    between stages, and the job fails naming the stage and the figure. One thread watches every deadline; it is
    started before the memory cap, so that arming a deadline under the cap maps nothing."""

    def __init__(self, minutes: float | None, stage_minutes: dict[str, float]) -> None:
        self.minutes = minutes
        self.stage_minutes = stage_minutes
        self.thread_id = threading.get_ident()
        self.end = None if minutes is None else time.monotonic() + minutes * 60
        self._cond = threading.Condition()
        self._deadlines: dict[int, tuple[float, Callable[[], str]]] = {}
        self._keys = 0
        self._fired: str | None = None  # the message of the cap that fired
        self._stopped = False
        self._thread: threading.Thread | None = None

    @property
    def needed(self) -> bool:
        return self.minutes is not None or bool(self.stage_minutes)

    def start(self) -> None:
        if self.needed and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="secateurs-watchdog", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                if self._fired is None:
                    due = [message for end, message in self._deadlines.values() if end <= now]
                    if due:
                        self._fired = due[0]()
                        _raise_in(self.thread_id, PastLimit)
                        continue
                ends = [end for end, _ in self._deadlines.values()]
                self._cond.wait(None if self._fired is not None or not ends else max(min(ends) - now, 0.001))

    def _arm(self, seconds: float, message: Callable[[], str]) -> int:
        with self._cond:
            self._keys += 1
            self._deadlines[self._keys] = (time.monotonic() + seconds, message)
            self._cond.notify()
            return self._keys

    def _disarm(self, key: int) -> None:
        with self._cond:
            self._deadlines.pop(key, None)

    def error(self) -> ResourceLimitError:
        return ResourceLimitError(self._fired or "the job ran past a time limit")

    @contextlib.contextmanager
    def job(self, stage: Callable[[], str]) -> Iterator[None]:
        """The whole job; `stage` tells which stage it is in when the cap fires. Whatever happens, when the block
        ends no deadline is left and nothing is pending for the thread."""
        if self.minutes is not None and self._thread is not None:
            minutes = self.minutes
            self._arm(minutes * 60, lambda: f"the job ran past its limit of {minutes:g} minutes (in stage {stage()})")
        try:
            yield
        except PastLimit:
            raise self.error() from None
        finally:
            self.stop()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        minutes = self.stage_minutes.get(name)
        if minutes is None or self._thread is None:
            yield
            return
        hint = HINTS.get(name)
        message = (f"stage {name} ran past its limit of {minutes:g} minutes"
                   + (f": {hint}, or raise limits.stage_minutes.{name}" if hint else
                      f" (limits.stage_minutes.{name})"))
        key = self._arm(minutes * 60, lambda: message)
        try:
            yield
        except PastLimit:
            raise self.error() from None
        finally:
            self._disarm(key)

    def check(self, stage: str) -> None:
        if self.end is not None and time.monotonic() > self.end:
            raise ResourceLimitError(f"the job ran past its limit of {self.minutes:g} minutes (in stage {stage})")

    def stop(self) -> None:
        """No deadline left, the watching thread ended, and a cap that fired but was not yet delivered withdrawn."""
        with self._cond:
            self._stopped = True
            self._deadlines.clear()
            if self._fired is not None:
                _raise_in(self.thread_id, None)
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
