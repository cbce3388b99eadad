"""Shared by the benchmarks: where the data is, what machine ran it, and rewriting one section of
BENCHMARKS.md (each script owns the block between its markers; nothing in the file is hand-edited)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SECATEURS_SHARED_DATA", ROOT.parent / "shared" / "data"))
BENCHMARKS = ROOT / "BENCHMARKS.md"
CIFAR_MEAN = np.asarray((0.485, 0.456, 0.406), dtype=np.float32)[None, :, None, None]
CIFAR_STD = np.asarray((0.229, 0.224, 0.225), dtype=np.float32)[None, :, None, None]


def cifar(name: str, n: int | None = None):  # type: ignore[no-untyped-def]
    """CIFAR-10 from ../shared/data as the pretrained ResNets take it (NCHW, ImageNet normalisation)."""
    from secateurs.pruning.data import Dataset

    with np.load(DATA / name) as d:
        x, y = d["x"][:n], d["y"][:n]
    x = (x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - CIFAR_MEAN) / CIFAR_STD
    return Dataset(np.ascontiguousarray(x), y.astype(np.int64))


def machine() -> str:
    import onnxruntime
    import torch
    import torch_pruning

    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {os.cpu_count()} cores{gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"torch-pruning {torch_pruning.__version__}, onnxruntime {onnxruntime.__version__}")


def command() -> str:
    return " ".join([".venv/bin/python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def write_section(name: str, body: str) -> None:
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else (
        "# Benchmarks\n\nEvery figure below was measured by the script named under its table, on the machine it\n"
        "names, in the same run as anything it is compared with. Rerun with `make bench` (everything) or\n"
        "`make bench-quick`.\n")
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS.write_text(text)
