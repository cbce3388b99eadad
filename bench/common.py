"""Shared by the benchmarks: where the data is, what machine ran it, CIFAR-10 loading, MAC counting and
accuracy, and rewriting one section of BENCHMARKS.md (each script owns the block between its markers;
nothing in the file is hand-edited)."""

from __future__ import annotations

import fcntl
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# The shared data sits next to the repository and is read in place, never copied into it.
DATA = Path(os.environ.get("SECATEURS_SHARED_DATA", ROOT.parent / "shared" / "data"))
BENCHMARKS = ROOT / "BENCHMARKS.md"
PLOTS = ROOT / "bench" / "plots"
# `make bench-quick` (bench/run_all.py quick) sets this: every section and plot then goes under a name of its
# own ending in -quick, so a quick run never overwrites the full run's figures.
QUICK = os.environ.get("SECATEURS_BENCH_QUICK") == "1"
# A quick run scores CIFAR-10 models on the first QUICK_TEST test images (a full run: all 10,000). Top-1 on
# 2,000 images has a standard error of about 0.7 points at 85%: enough to see a method work or collapse.
QUICK_TEST = 2000
CIFAR_MEAN = np.asarray((0.485, 0.456, 0.406), dtype=np.float32)[None, :, None, None]
CIFAR_STD = np.asarray((0.229, 0.224, 0.225), dtype=np.float32)[None, :, None, None]
HEADER = (
    "# Benchmarks\n\nEvery figure below was written by the script named under its table, on the machine it\n"
    "names, in the same run as anything it is compared with. Each script rewrites only its own section\n"
    "(between `<!-- bench:NAME -->` markers); rerun a script to refresh its section.\n"
)


def cifar(name: str, n: int | None = None):  # type: ignore[no-untyped-def]
    """CIFAR-10 from the shared data as the pretrained ResNets take it: NCHW float32, x/255, then
    ImageNet mean/std (the source repository's preprocessing); labels int64."""
    from secateurs.pruning.data import Dataset

    with np.load(DATA / name) as d:
        x, y = d["x"][:n], d["y"][:n]
    x = (x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - CIFAR_MEAN) / CIFAR_STD
    return Dataset(np.ascontiguousarray(x), y.astype(np.int64))


def cifar_test():  # type: ignore[no-untyped-def]
    """The CIFAR-10 test set the benchmarks score on: all of it, or in a quick run its first QUICK_TEST images."""
    return cifar("cifar10_test.npz", QUICK_TEST if QUICK else None)


def cifar_test_text() -> str:
    """What `cifar_test()` returned, for a section's text."""
    if QUICK:
        return f"the first {QUICK_TEST:,} images of the CIFAR-10 test set (quick run)"
    return "the full 10,000-image CIFAR-10 test set"


def macs(model, shape: tuple[int, ...]) -> float:  # type: ignore[no-untyped-def]
    """MACs at one input of `shape`, counted as the engine counts them: FlopCounterMode total / 2."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(shape))
    return counter.get_total_flops() / 2


def params(model) -> int:  # type: ignore[no-untyped-def]
    return sum(p.numel() for p in model.parameters())


def accuracy(model, data, batch: int = 500) -> float:  # type: ignore[no-untyped-def]
    """Top-1 of a PyTorch model on a Dataset, in eval mode."""
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data), batch):
            logits = model(torch.from_numpy(data.x[start : start + batch]))
            correct += int((logits.argmax(1).numpy() == data.y[start : start + batch]).sum())
    return correct / len(data)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def cpu_isa() -> str:
    """The widest x86 vector extension the CPU reports: it decides ONNX Runtime's NCHWc block (16 or 8)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return "?"
    for isa in ("avx512f", "avx2", "avx"):
        if isa in flags:
            return isa.upper().replace("AVX512F", "AVX-512")
    return "no AVX"


OUTPUTS = ("bench/results/", "bench/plots/")


def revision(paths: tuple[str, ...] = ("pruning",)) -> str:
    """The commit the code was measured at, and whether `paths` (the engine by default) had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    # a benchmark's own outputs (results, plots) are not changes to the code it measured
    changed = [line[3:] for line in dirty.splitlines() if not line[3:].startswith(OUTPUTS)]
    touched = [p + "/" for p in paths if any(c == p or c.startswith(p + "/") for c in changed)]
    return f"commit {head}" + (f" with uncommitted changes in {', '.join(touched)}" if touched else "")


def machine(paths: tuple[str, ...] = ("pruning",)) -> str:
    import onnxruntime
    import torch
    import torch_pruning

    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    isa = cpu_isa()
    # said outright: figures from AVX-512 machines (16-channel NCHWc blocks) and AVX2 ones (8) differ
    isa += "" if isa in ("AVX-512", "?") else ", no AVX-512"
    return (f"{cpu_model()} ({isa}), {os.cpu_count()} cores{gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, torch-pruning {torch_pruning.__version__}, "
            f"onnxruntime {onnxruntime.__version__}; secateurs at {revision(paths)}")


def load_average() -> str:
    """1-minute load average: other work on the machine while a benchmark ran shows here."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process, ONNX Runtime's included
    return r.ru_utime + r.ru_stime


class CpuWatch:
    """How many cores other processes kept busy while the block ran (0.0: the machine was ours). On a
    2-core machine anything above ~0.2 means the timings inside the block shared the CPU."""

    other: float = 0.0

    def __enter__(self) -> CpuWatch:
        self._t, self._busy, self._own = time.perf_counter(), _busy_seconds(), _own_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.perf_counter() - self._t, 1e-9)
        other = (_busy_seconds() - self._busy) - (_own_seconds() - self._own)
        self.other = max(other, 0.0) / wall


def command() -> str:
    return " ".join([".venv/bin/python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def plot_path(name: str) -> Path:
    """Where a script saves its figure `name` (bench/plots/NAME.png, NAME-quick.png in a quick run)."""
    return PLOTS / f"{name}{'-quick' if QUICK else ''}.png"


def plot_link(path: Path, alt: str) -> str:
    """The Markdown image of a saved plot, relative to BENCHMARKS.md."""
    return f"![{alt}]({path.relative_to(ROOT).as_posix()})"


def pyplot():  # type: ignore[no-untyped-def]
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_section(name: str, body: str, top: bool = False) -> None:
    """Replace the block between `<!-- bench:name -->` and `<!-- /bench:name -->` (append it when
    absent, or put it right after the file's header with `top`), under a lock so that several benchmark
    scripts can share the file. In a quick run the section is NAME-quick and its heading says so."""
    if QUICK:
        name += "-quick"
        lines = body.splitlines()
        if lines and lines[0].startswith("## "):
            body = "\n".join([lines[0] + " (quick run: `make bench-quick`)", *lines[1:]])
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    with open(BENCHMARKS, "a+") as f:  # the file is its own lock
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        text = f.read() or HEADER
        if start in text and end in text:
            text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
        elif top and "<!-- bench:" in text:
            at = text.index("<!-- bench:")
            text = text[:at] + block + "\n\n" + text[at:]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        f.seek(0)
        f.truncate()
        f.write(text)
