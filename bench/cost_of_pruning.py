"""What does pruning cost? Engine wall time and peak memory per stage against Torch-Pruning called directly.

For torchvision ResNet-50 and MobileNetV2 (random weights, 224x224), each run in a fresh process:
- ours: `secateurs.pruning.prune` on the model's safetensors + architecture, signal l2_norm, macs=0.5, the
  default spec otherwise (so the job's export, ONNX Runtime check and latency measurement are in it);
  seconds per stage from the report, peak RSS growth per stage sampled every 5 ms from /proc/self/status.
- Torch-Pruning: `BasePruner` with group-L2 importance, global pruning, the classifier kept, at the ratio
  that lands at the same MACs (found beforehand, untimed): dependency graph, importance and one step.
  Also timed: the bisection over that ratio a Torch-Pruning user runs to land at a MACs target.

    overhead = (our analyse + score + plan) / (Torch-Pruning's graph + importance + step)   goal <= 1.1

Runs alternate ours / Torch-Pruning, `--repeats` times each; medians.

    .venv/bin/python bench/cost_of_pruning.py [--models resnet50,mobilenet_v2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import threading
import time

from common import command, load_average, machine, write_section

CORE = ("analyse", "score", "plan")
SHAPE = (1, 3, 224, 224)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakPerStage:
    """Samples the process's RSS every 5 ms and keeps the highest seen in each stage, above a baseline."""

    def __init__(self) -> None:
        self.base = rss_mib()
        self.stage = "start"
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            growth = rss_mib() - self.base
            self.peak[self.stage] = max(self.peak.get(self.stage, 0.0), growth)
            time.sleep(0.005)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return self.peak


def build(name: str):  # type: ignore[no-untyped-def]
    import torch
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, num_classes=1000).eval()


def tp_prune(model, ratio: float):  # type: ignore[no-untyped-def]
    import torch
    import torch_pruning as tp
    from secateurs.pruning.custom_ops import CUSTOM_PRUNERS

    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    pruner = tp.pruner.BasePruner(model, torch.zeros(SHAPE), importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=ratio, global_pruning=True, ignored_layers=[head],
                                  customized_pruners=CUSTOM_PRUNERS)
    pruner.step()
    return model


def macs_of(model) -> float:  # type: ignore[no-untyped-def]
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as c:
        model(torch.zeros(SHAPE))
    return c.get_total_flops() / 2


def child_ours(name: str) -> dict:
    from safetensors.torch import save
    from secateurs.pruning import PruneSpec, prune

    weights = save(build(name).state_dict())
    spec = PruneSpec.model_validate({"signal": "l2_norm", "target": {"macs": 0.5}})
    peak = PeakPerStage()

    def progress(stage: str, fraction: float, message: str, metrics: dict) -> None:
        peak.stage = stage

    t0 = time.perf_counter()
    report = prune(weights, spec, arch=name, num_classes=1000, progress=progress).report
    total = time.perf_counter() - t0
    peaks = peak.stop()
    return {"seconds": report["stage_seconds"], "total": total, "peak_mib": peaks, "macs_kept": report["macs_kept"]}


def child_tp(name: str, ratio: float) -> dict:
    model = build(name)
    base = macs_of(model)
    peak = PeakPerStage()
    peak.stage = "graph+step"
    t0 = time.perf_counter()
    tp_prune(model, ratio)
    core = time.perf_counter() - t0
    peaks = peak.stop()
    return {"core": core, "peak_mib": peaks, "macs_kept": macs_of(model) / base}


def child_tp_search(name: str, goal: float = 0.5) -> dict:
    """The bisection a Torch-Pruning user runs to land at a MACs target: copy, prune, count, repeat."""
    original = build(name)
    base = macs_of(original)
    t0 = time.perf_counter()
    lo, hi, best, tries = 0.0, 0.95, None, 0
    for _ in range(14):
        ratio = (lo + hi) / 2
        tries += 1
        kept = macs_of(tp_prune(copy.deepcopy(original), ratio)) / base
        if kept <= goal:
            best, hi = (ratio, kept), ratio
            if kept >= goal - 0.01:
                break
        else:
            lo = ratio
    assert best is not None
    return {"ratio": best[0], "macs_kept": best[1], "seconds": time.perf_counter() - t0, "tries": tries}


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"child {args} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median(values: list[float]) -> float:
    return statistics.median(values)


def measure(name: str, repeats: int) -> dict:
    search = run_child("tp-search", name)
    ours, tps = [], []
    for _ in range(repeats):
        ours.append(run_child("ours", name))
        tps.append(run_child("tp", name, str(search["ratio"])))
        print(json.dumps({"model": name, "ours": ours[-1], "tp": tps[-1]}), flush=True)
    stages = list(ours[0]["seconds"])
    seconds = {s: median([o["seconds"].get(s, 0.0) for o in ours]) for s in stages}
    # a stage shorter than the 5 ms sampling period may have no sample: it shows as "-", not as 0
    peaks = {s: median(v) if (v := [o["peak_mib"][s] for o in ours if s in o["peak_mib"]]) else None for s in stages}
    core = sum(seconds[s] for s in CORE if s in seconds)
    tp_core = median([t["core"] for t in tps])
    return {
        "model": name, "stages": stages, "seconds": seconds, "peaks": peaks, "core": core,
        "total": median([o["total"] for o in ours]), "macs_kept": ours[0]["macs_kept"],
        "tp_core": tp_core, "tp_peak": median([t["peak_mib"].get("graph+step", 0.0) for t in tps]),
        "tp_macs_kept": tps[0]["macs_kept"], "tp_search": search, "overhead": core / tp_core,
    }


def write(rows: list[dict], repeats: int, load_start: str) -> None:
    lines = [
        "## Cost of pruning: engine time and memory per stage against Torch-Pruning called directly",
        "",
        f"Machine: {machine()}. Load average at start {load_start}, at end {load_average()}. Each run in a fresh "
        f"process, ours and Torch-Pruning alternating, {repeats} runs each, medians; torch's default threads.",
        "",
        "torchvision models with random weights, 224x224. Ours: `prune()` on safetensors + architecture, "
        "signal l2_norm, macs=0.5, default spec (a global threshold searched until the measured MACs fit, "
        "channel counts rounded, then the ONNX export, the ONNX Runtime check and the interleaved latency "
        "measurement every job reports). Torch-Pruning: `BasePruner`, group-L2 importance, global pruning, "
        "classifier kept, at the ratio that lands at the same MACs (found beforehand by bisection, untimed): "
        "dependency graph, importance, one step. Peak memory = highest RSS growth over the process's RSS "
        "before the call, sampled every 5 ms.",
        "",
        "overhead = (our analyse + score + plan) / (Torch-Pruning's graph + importance + step); goal <= 1.1.",
        "",
        "| model | stage | ours (s) | ours peak RSS growth (MiB) |",
        "| --- | --- | ---: | ---: |",
    ]
    for r in rows:
        for s in r["stages"]:
            peak = "-" if r["peaks"][s] is None else f"{r['peaks'][s]:.0f}"
            lines.append(f"| {r['model']} | {s} | {r['seconds'][s]:.3f} | {peak} |")
        top = max(v for v in r["peaks"].values() if v is not None)
        lines.append(f"| {r['model']} | **whole job** | **{r['total']:.2f}** | **{top:.0f}** |")
    lines += [
        "",
        "| model | MACs kept (ours / TP) | ours: analyse + score + plan (s) | TP: graph + importance + step (s) "
        "| **overhead** | TP peak RSS growth (MiB) | TP bisection to the same MACs (s, tries) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['macs_kept']:.3f} / {r['tp_macs_kept']:.3f} | {r['core']:.2f} | {r['tp_core']:.2f} "
            f"| **{r['overhead']:.2f}x** | {r['tp_peak']:.0f} | {r['tp_search']['seconds']:.1f} "
            f"({r['tp_search']['tries']}) |")
    lines += ["", f"Command: `{command()}`"]
    write_section("cost-of-pruning", "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="resnet50,mobilenet_v2")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, name, *rest = args.child
        if kind == "ours":
            result = child_ours(name)
        elif kind == "tp":
            result = child_tp(name, float(rest[0]))
        else:
            result = child_tp_search(name)
        print(json.dumps(result), flush=True)
        return
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    load_start = load_average()
    rows = [measure(name, args.repeats) for name in args.models.split(",")]
    for r in rows:
        print(f"{r['model']}: ours core {r['core']:.2f} s, TP {r['tp_core']:.2f} s, overhead {r['overhead']:.2f}x, "
              f"whole job {r['total']:.2f} s")
    if not args.no_write:
        write(rows, args.repeats, load_start)


if __name__ == "__main__":
    main()
