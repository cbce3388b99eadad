"""GPU figures, measured only where CUDA is present (issue: GPU figures when a GPU is present).

1. Latency of the original and the engine's pruned model (data-free l2_norm, target macs=0.5, the default
   spec, pruned as bench/latency_vs_macs.py prunes) for torchvision families built from code with random
   weights, at 224x224, batch 1 and 32:
   - PyTorch eager, float32, on the device (both models as the engine holds them: the PyTorch form of
     the ONNX graph it prunes), the input already on the device, synchronised around every run;
   - ONNX Runtime with CUDAExecutionProvider (input and output bound on the device), when the installed
     onnxruntime has that provider.
   Warm-up first, then the two models in interleaved blocks (ABBA order, the first run of each block
   dropped), medians.
2. Recovery speed: seconds per distillation step (batch 128) of ResNet-56 (shared CIFAR-10 weights)
   pruned to macs=0.5, trained by the engine's own `recovery.train` (precision auto) from the original as
   teacher, on CUDA and on the CPU. A step is the time between two consecutive forward passes of the
   student (each step ends by reading its loss, which waits for the device); the warm-up steps are left out.

Without CUDA nothing is measured: the section says so, with the machine and the command to run on a
GPU machine, and the script exits 0. `--device cpu` measures the same things on the CPU (so that the code
path runs anywhere) and prints them without writing the section, which is for GPU figures only.
A quick run (`--quick`, or SECATEURS_BENCH_QUICK=1 as `make bench-quick` sets) times one family and fewer
runs and steps, and writes the section gpu-quick.

    .venv/bin/python bench/gpu.py [--device cuda|cpu] [--quick] [--models resnet18,resnet50,mobilenet_v2]
        [--batches 1,32] [--repeats 50] [--steps 20] [--warmup-steps 3] [--no-write]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import common
import numpy as np
import torch
from common import DATA, cifar, command, load_average, machine, write_section
from latency_vs_macs import build, export_model, ratio
from torch import nn

SECTION = "gpu"
SIZE = 224
FAMILIES = ("resnet18", "resnet50", "mobilenet_v2")
QUICK_FAMILIES = ("resnet18",)
BATCHES = (1, 32)
# Runs are interleaved in blocks of this many per model, ABBA order; the first of each block is dropped
# (on the CPU an idle ONNX Runtime session's workers spin for a while after its run).
BLOCK = 5
TRAIN_BATCH = 128
NO_CUDA_EP = "CUDAExecutionProvider not available in this onnxruntime build"


def sync(device: torch.device | str) -> None:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# ------------------------------------------------------------------------------------------- models


@dataclass
class Pair:
    """An original model and the engine's pruned one, as ONNX and as PyTorch modules (on the CPU)."""

    name: str
    original_onnx: bytes
    pruned_onnx: bytes
    original: nn.Module
    pruned: nn.Module
    report: dict[str, Any] = field(repr=False)
    size: int = SIZE

    @property
    def macs_kept(self) -> float:
        return self.report["macs_after"] / self.report["macs_before"]


def prune_pair(model: nn.Module, size: int = SIZE, name: str = "model") -> Pair:
    """Export `model`, prune it with the engine's default data-free spec (l2_norm, macs=0.5) on the CPU (the
    pruning is not what is timed), and keep both sides in the engine's PyTorch form of the graph."""
    from secateurs.pruning import PruneSpec, prune
    from secateurs.pruning.loading import load_model

    original_onnx = export_model(model, size)
    spec = PruneSpec.model_validate({"signal": "l2_norm", "target": {"macs": 0.5}, "measure": {"repeats": 3}})
    result = prune(original_onnx, spec, device="cpu")
    original = load_model(original_onnx).module.eval()
    return Pair(name, original_onnx, result.onnx, original, result.model.eval(), result.report, size)


# ------------------------------------------------------------------------------------------- latency


def interleaved(runs: list[Callable[[], Any]], repeats: int, warmup: int) -> tuple[list[float], int]:
    """Median ms of each callable (each waits for its device before returning): `warmup` runs each, then
    blocks of BLOCK runs in ABBA order until each has at least `repeats` timed runs."""
    for run in runs:
        for _ in range(warmup):
            run()
    times: list[list[float]] = [[] for _ in runs]
    k = 0
    while len(times[0]) < repeats:
        order = range(len(runs)) if k % 2 == 0 else reversed(range(len(runs)))
        for i in order:
            for j in range(BLOCK):
                t0 = time.perf_counter()
                runs[i]()
                if j:
                    times[i].append((time.perf_counter() - t0) * 1000)
        k += 1
    return [statistics.median(t) for t in times], len(times[0])


def eager_latency(original: nn.Module, pruned: nn.Module, device: torch.device | str, batch: int, size: int,
                  repeats: int, warmup: int = 5) -> dict[str, Any]:
    """PyTorch eager, float32, both models on `device` with the input already there."""
    dev = torch.device(device)
    models = [copy.deepcopy(m).float().eval().to(dev) for m in (original, pruned)]
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dev)
    shapes: list[tuple[int, ...]] = []

    def runner(model: nn.Module) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                out = model(x)
            sync(dev)
            return out

        return run

    with torch.inference_mode():
        for m in models:
            shapes.append(tuple(m(x).shape))
    (before, after), n = interleaved([runner(m) for m in models], repeats, warmup)
    return {"original_ms": before, "pruned_ms": after, "runs": n, "shapes": shapes}


def ort_providers(device: torch.device | str) -> tuple[list[Any], str] | str:
    """ONNX Runtime providers for `device` and the device type its I/O binds to, or why there are none."""
    import onnxruntime as ort

    dev = torch.device(device)
    if dev.type == "cpu":
        return ["CPUExecutionProvider"], "cpu"
    if dev.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": dev.index or 0}), "CPUExecutionProvider"], "cuda"
    if dev.type == "cuda":
        return NO_CUDA_EP
    return f"no ONNX Runtime provider chosen for device {dev.type}"


def ort_latency(original_onnx: bytes, pruned_onnx: bytes, device: torch.device | str, batch: int, size: int,
                repeats: int, warmup: int = 5) -> dict[str, Any]:
    """ONNX Runtime on `device` (CUDAExecutionProvider for cuda), input and output bound on the device;
    {"missing": reason} when this onnxruntime cannot run there."""
    import onnxruntime as ort

    chosen = ort_providers(device)
    if isinstance(chosen, str):
        return {"missing": chosen}
    providers, kind = chosen
    index = torch.device(device).index or 0
    x = np.random.default_rng(0).standard_normal([batch, 3, size, size]).astype(np.float32)
    bindings = []
    for data in (original_onnx, pruned_onnx):
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(data, opts, providers=providers)
        first = providers[0] if isinstance(providers[0], str) else providers[0][0]
        if sess.get_providers()[0] != first:
            return {"missing": f"{first} could not start a session"}
        binding = sess.io_binding()
        binding.bind_ortvalue_input(sess.get_inputs()[0].name, ort.OrtValue.ortvalue_from_numpy(x, kind, index))
        binding.bind_output(sess.get_outputs()[0].name, kind, index)
        bindings.append((sess, binding))

    def runner(sess: Any, binding: Any) -> Callable[[], Any]:
        def run() -> Any:
            sess.run_with_iobinding(binding)
            binding.synchronize_outputs()

        return run

    runs = [runner(s, b) for s, b in bindings]
    for run in runs:
        run()
    shapes = [tuple(b.get_outputs()[0].shape()) for _, b in bindings]
    (before, after), n = interleaved(runs, repeats, warmup)
    return {"original_ms": before, "pruned_ms": after, "runs": n, "shapes": shapes,
            "provider": bindings[0][0].get_providers()[0]}


# ------------------------------------------------------------------------------------------- recovery


def step_seconds(student: nn.Module, teacher: nn.Module, data: Any, device: torch.device | str, *,
                 batch: int = TRAIN_BATCH, steps: int = 20, warmup: int = 3,
                 precision: str = "auto") -> dict[str, Any]:
    """Seconds per distillation step of `student` from `teacher` on `device`, trained by the engine's
    `recovery.train` (copies of both: the callers' modules are left as they were). One epoch of
    warmup + steps + 1 batches; a step is timed from one student forward pass to the next."""
    from secateurs.pruning import recovery
    from secateurs.pruning.data import Dataset

    total = warmup + steps + 1
    if len(data) < total * batch:
        raise ValueError(f"{total} steps of {batch} need {total * batch} samples, got {len(data)}")
    data = Dataset(data.x[: total * batch], None if data.y is None else data.y[: total * batch])
    dev = torch.device(device)
    model = copy.deepcopy(student).float().to(dev)
    original = copy.deepcopy(teacher).float().eval().to(dev)
    stamps: list[float] = []

    def stamp(module: nn.Module, args: Any) -> None:
        if module.training:  # training passes only: the channels-last layout is first tried in eval mode
            sync(dev)
            stamps.append(time.perf_counter())

    handle = model.register_forward_pre_hook(stamp)
    try:
        stats = recovery.train(model, data, teacher=original, epochs=1.0, lr=0.01, batch_size=batch, device=dev,
                               temperature=4.0, precision=precision)
    finally:
        handle.remove()
    intervals = np.diff(stamps)[warmup:]
    return {"device": dev.type, "precision": stats["precision"], "seconds_per_step": float(np.median(intervals)),
            "steps_timed": len(intervals), "steps": int(stats["steps"]), "batch": batch,
            "threads": torch.get_num_threads() if dev.type == "cpu" else None}


def resnet56_pair() -> tuple[nn.Module, nn.Module, float]:
    """The shared ResNet-56 CIFAR-10 weights and the engine's l2_norm cut to macs=0.5: (original, pruned,
    MACs kept)."""
    from secateurs.pruning import PruneSpec, prune
    from secateurs.pruning.loading import load_model

    weights = (DATA / "resnet56_cifar10.safetensors").read_bytes()
    spec = PruneSpec.model_validate({"signal": "l2_norm", "target": {"macs": 0.5}, "measure": {"repeats": 3}})
    result = prune(weights, spec, arch="resnet56_cifar", device="cpu")
    original = load_model(weights, arch="resnet56_cifar").module.eval()
    return original, result.model, result.report["macs_kept"]


# ------------------------------------------------------------------------------------------- the section


def cell(m: dict[str, Any], macs_kept: float) -> str:
    if "missing" in m:
        return m["missing"]
    return (f"{m['original_ms']:.2f} / {m['pruned_ms']:.2f} ({m['original_ms'] / m['pruned_ms']:.2f}x, "
            f"ratio {ratio(m['original_ms'], m['pruned_ms'], macs_kept):.2f}; {m['runs']} runs)")


def no_gpu_lines() -> list[str]:
    import onnxruntime as ort

    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "the CPU only"
    gpu_command = ".venv/bin/python bench/gpu.py" + (" --quick" if common.QUICK else "")
    return [
        "## GPU: pruned models' latency on CUDA and recovery step time",
        "",
        "**No GPU was present on this machine** (`torch.cuda.is_available()` was False), so nothing was "
        "measured and this section holds no figures.",
        "",
        f"Machine: {machine(('pruning', 'bench'))}. The installed torch is built for {build}; onnxruntime's "
        f"providers here: {', '.join(ort.get_available_providers())}.",
        "",
        f"To measure, run on a machine with a CUDA GPU: `{gpu_command}`. Its ONNX Runtime column needs an "
        "onnxruntime build with CUDAExecutionProvider (the onnxruntime-gpu package); without one that column "
        "says so and the PyTorch figures are still measured.",
        "",
        f"Command: `{command()}`",
    ]


def measured_lines(device: str, rows: list[dict], steps: list[dict], macs56: float,
                   args: argparse.Namespace, load_start: str, minutes: float) -> list[str]:
    dev = torch.device(device)
    on_gpu = dev.type == "cuda"
    where = torch.cuda.get_device_name(dev) if on_gpu else "the CPU"
    ort_head = "ONNX Runtime CUDA" if on_gpu else "ONNX Runtime CPU"
    lines = [
        "## GPU: pruned models' latency on CUDA and recovery step time" if on_gpu
        else "## The GPU benchmark's measurements on the CPU (printed only: the section is for GPU figures)",
        "",
        f"Machine: {machine(('pruning', 'bench'))}. Measured on {where}"
        + (f" (torch CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, cuDNN TF32 for "
           f"convolutions {'on' if torch.backends.cudnn.allow_tf32 else 'off'}, the torch default)" if on_gpu else "")
        + f". Load average at start {load_start}, at end {load_average()}; {minutes:.1f} min in all.",
        "",
        f"torchvision models with random weights, {SIZE}x{SIZE}, exported to ONNX (opset 17, dynamic batch) and "
        "pruned by `secateurs.pruning.prune` with its default data-free spec (signal l2_norm, target macs=0.5). "
        "PyTorch eager: float32, both models as the engine holds them (its PyTorch form of the ONNX graph), "
        "input already on the device, the device synchronised after every run. ONNX Runtime: input and output "
        "bound on the device. Each cell: original / pruned median ms, speedup, ratio = (1 - latency_after / "
        f"latency_before) / (1 - MACs_after / MACs_before) (goal >= 0.9), after {args.warmup} warm-up runs each, "
        f"the two models interleaved in blocks of {BLOCK} runs in ABBA order, the first run of each block dropped.",
        "",
        f"| model | MACs kept | params kept | batch | PyTorch eager (ms) | {ort_head} (ms) |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        p = r["pair"]
        lines.append(f"| {p.name} | {p.macs_kept:.3f} | {p.report['params_kept']:.3f} | {r['batch']} "
                     f"| {cell(r['eager'], p.macs_kept)} | {cell(r['ort'], p.macs_kept)} |")
    lines += [
        "",
        f"Recovery speed: ResNet-56 (shared CIFAR-10 weights) pruned by l2_norm to macs=0.5 (MACs kept "
        f"{macs56:.3f}), distilled from the original by the engine's `recovery.train` (precision auto, "
        f"batch {TRAIN_BATCH}, flips and crops, SGD) on the shared training images; median seconds from one "
        f"student forward pass to the next, after {args.warmup_steps} warm-up steps.",
        "",
        "| device | precision (auto) | seconds per step | images per second | steps timed |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for s in steps:
        name = torch.cuda.get_device_name(device) if s["device"] == "cuda" else f"CPU, {s['threads']} threads"
        lines.append(f"| {name} | {s['precision']} | {s['seconds_per_step']:.3f} "
                     f"| {s['batch'] / s['seconds_per_step']:.0f} | {s['steps_timed']} |")
    if len(steps) == 2:
        lines += ["", f"CUDA steps {steps[1]['seconds_per_step'] / steps[0]['seconds_per_step']:.1f}x as fast "
                  "as the CPU's."]
    lines += ["", f"Command: `{command()}`"]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", help="cuda or cpu (default: cuda; without CUDA, nothing is measured and the "
                   "section says so; cpu measures and prints only)")
    p.add_argument("--quick", action="store_true", help="one family, fewer runs and steps; section gpu-quick "
                   "(implied by SECATEURS_BENCH_QUICK=1)")
    p.add_argument("--models", help=f"torchvision families (default {','.join(FAMILIES)}; quick: "
                   f"{','.join(QUICK_FAMILIES)})")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--repeats", type=int, help="timed runs per model and batch (default 50; quick 10)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up runs per model before timing")
    p.add_argument("--steps", type=int, help="distillation steps timed per device (default 20; quick 5)")
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--no-write", action="store_true", help="print the section; leave BENCHMARKS.md alone")
    args = p.parse_args(argv)
    if args.quick:
        common.QUICK = True  # write_section reads it when it writes: the section becomes gpu-quick
    quick = common.QUICK
    models = args.models.split(",") if args.models else list(QUICK_FAMILIES if quick else FAMILIES)
    args.repeats = args.repeats or (10 if quick else 50)
    args.steps = args.steps or (5 if quick else 20)
    batches = [int(b) for b in args.batches.split(",")]
    device = torch.device(args.device or "cuda")

    if device.type == "cuda" and not torch.cuda.is_available():
        text = "\n".join(no_gpu_lines())
        print(text)
        if not args.no_write:
            write_section(SECTION, text)
        return 0

    load_start, t_begin = load_average(), time.monotonic()
    rows = []
    for name in models:
        pair = prune_pair(build(name), SIZE, name)
        for b in batches:
            row = {"pair": pair, "batch": b,
                   "eager": eager_latency(pair.original, pair.pruned, device, b, SIZE, args.repeats, args.warmup),
                   "ort": ort_latency(pair.original_onnx, pair.pruned_onnx, device, b, SIZE, args.repeats,
                                      args.warmup)}
            rows.append(row)
            print(json.dumps({"model": name, "batch": b, "macs_kept": round(pair.macs_kept, 4),
                              "eager": row["eager"], "ort": row["ort"]}, default=str), flush=True)
    original56, pruned56, macs56 = resnet56_pair()
    data = cifar("cifar10_train_subset10k.npz")
    steps = []
    for dev in ([device, torch.device("cpu")] if device.type == "cuda" else [device]):
        steps.append(step_seconds(pruned56, original56, data, dev, steps=args.steps, warmup=args.warmup_steps))
        print(json.dumps(steps[-1]), flush=True)
    text = "\n".join(measured_lines(str(device), rows, steps, macs56, args, load_start,
                                    (time.monotonic() - t_begin) / 60))
    print(text)
    if device.type == "cuda" and not args.no_write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
