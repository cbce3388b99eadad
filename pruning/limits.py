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
import os
import resource
import threading
import time
from collections.abc import Iterator

from .errors import PruningError

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


class Deadline:
    def __init__(self, minutes: float | None) -> None:
        self.minutes = minutes
        self.end = None if minutes is None else time.monotonic() + minutes * 60

    def check(self, stage: str) -> None:
        if self.end is not None and time.monotonic() > self.end:
            raise ResourceLimitError(f"the job ran past its limit of {self.minutes:g} minutes (in stage {stage})")
