"""bench/gpu.py: its measurements run on whichever device they are given (the CPU here, CUDA where there is
one), and the section it writes is for GPU figures only."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.pruning.test_device import require_cuda

BENCH = Path(__file__).resolve().parents[1] / "bench"
SIZE = 32


@pytest.fixture(scope="module")
def gpu():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(BENCH))  # the bench scripts import their shared helpers as `common`
    try:
        spec = importlib.util.spec_from_file_location("bench_gpu", BENCH / "gpu.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up by name
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_gpu", None)
        sys.path.remove(str(BENCH))


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()


@pytest.fixture(scope="module")
def pair(gpu):  # type: ignore[no-untyped-def]
    return gpu.prune_pair(tiny(), SIZE, "tiny")


def images(n: int, size: int = SIZE):  # type: ignore[no-untyped-def]
    from secateurs.pruning.data import Dataset

    x = np.random.default_rng(0).standard_normal([n, 3, size, size]).astype(np.float32)
    return Dataset(x, np.zeros(n, dtype=np.int64))


def check_measurements(gpu, pair, device: str) -> None:  # type: ignore[no-untyped-def]
    assert pair.macs_kept <= 0.55 and pair.report["params_after"] < pair.report["params_before"]
    eager = gpu.eager_latency(pair.original, pair.pruned, device, 3, SIZE, repeats=4, warmup=1)
    assert eager["original_ms"] > 0 and eager["pruned_ms"] > 0 and eager["runs"] >= 4
    assert eager["shapes"] == [(3, 10), (3, 10)]  # both timed, and pruning kept the output
    ort = gpu.ort_latency(pair.original_onnx, pair.pruned_onnx, device, 3, SIZE, repeats=4, warmup=1)
    if "missing" in ort:  # CUDA without onnxruntime-gpu
        assert device.startswith("cuda") and ort["missing"] == gpu.NO_CUDA_EP
    else:
        assert ort["original_ms"] > 0 and ort["pruned_ms"] > 0 and ort["runs"] >= 4
        assert ort["shapes"] == [(3, 10), (3, 10)]
    before = [p.detach().clone() for p in pair.pruned.parameters()]
    step = gpu.step_seconds(pair.pruned, pair.original, images(8 * 5), device, batch=8, steps=3, warmup=1)
    assert step["seconds_per_step"] > 0 and step["steps_timed"] == 3 and step["steps"] == 5
    assert step["precision"] in ("fp32", "bf16") and step["device"] == torch.device(device).type
    # the caller's pruned model is trained on a copy, so every device starts from the same weights
    assert all(torch.equal(a, b) for a, b in zip(before, pair.pruned.parameters(), strict=True))


def test_measurements_on_the_cpu(gpu, pair) -> None:  # type: ignore[no-untyped-def]
    check_measurements(gpu, pair, "cpu")


@pytest.mark.require_cuda
@require_cuda
def test_measurements_on_cuda(gpu, pair) -> None:  # type: ignore[no-untyped-def]
    check_measurements(gpu, pair, "cuda")


def test_without_cuda_the_section_says_nothing_was_measured(gpu, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import common

    target = tmp_path / "BENCHMARKS.md"
    monkeypatch.setattr(common, "BENCHMARKS", target)
    monkeypatch.setattr(common, "QUICK", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu, "prune_pair", lambda *a, **k: pytest.fail("measured without a GPU"))
    assert gpu.main([]) == 0
    text = target.read_text()
    assert "<!-- bench:gpu -->" in text and "No GPU was present on this machine" in text
    assert "no GPU" in text and "`.venv/bin/python bench/gpu.py`" in text


def test_a_cpu_run_measures_but_writes_nothing(gpu, pair, monkeypatch, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import common

    target = tmp_path / "BENCHMARKS.md"
    monkeypatch.setattr(common, "BENCHMARKS", target)
    monkeypatch.setattr(gpu, "SIZE", SIZE)
    monkeypatch.setattr(gpu, "build", lambda name: tiny())
    monkeypatch.setattr(gpu, "prune_pair", lambda model, size, name: pair)
    monkeypatch.setattr(gpu, "resnet56_pair", lambda: (pair.original, pair.pruned, pair.macs_kept))
    monkeypatch.setattr(gpu, "cifar", lambda name: images(gpu.TRAIN_BATCH * 4))
    argv = ["--device", "cpu", "--models", "tiny", "--batches", "2", "--repeats", "4", "--warmup", "1",
            "--steps", "2", "--warmup-steps", "1"]
    assert gpu.main(argv) == 0
    out = capsys.readouterr().out
    assert not target.exists()
    assert "| tiny |" in out and "CPU, " in out and "printed only" in out
