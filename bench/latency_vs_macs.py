"""Does pruning MACs buy latency? ONNX Runtime CPU latency saving over MACs saving at macs=0.5.

For each model (random weights, exported the ordinary way) and each `round_to`, the engine prunes with
l2_norm to macs=0.5; both files are then timed here in ONNX Runtime, interleaved, at the given batch
sizes and thread counts. Ratio = (1 - latency_after/latency_before) / (1 - macs_after/macs_before):
1.0 means every MAC removed saved its share of time. Goal: >= 0.9 for ResNet-50 and MobileNetV2.

    .venv/bin/python bench/latency_vs_macs.py [--models resnet50,mobilenet_v2] [--quick]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import warnings

import numpy as np
from common import command, machine, write_section


def export(name: str, size: int) -> bytes:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, size, size),), buf, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return buf.getvalue()


def timed(before: bytes, after: bytes, shape: list[int], threads: int, repeats: int) -> tuple[float, float]:
    from secateurs.pruning.onnx_tools import run, session

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    sessions = [session(before, threads), session(after, threads)]
    for s in sessions:
        for _ in range(5):
            run(s, x)
    times: list[list[float]] = [[], []]
    for _ in range(repeats):
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            run(s, x)
            times[i].append((time.perf_counter() - t0) * 1000)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    from secateurs.pruning import PruneSpec, prune

    p = argparse.ArgumentParser()
    p.add_argument("--models", default="resnet50,mobilenet_v2")
    p.add_argument("--rounds", default="auto,1,8,16")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--quick", action="store_true", help="batch 1 only, fewer repeats")
    args = p.parse_args()
    if args.quick:
        args.batches, args.repeats = "1", 15
    rows = []
    for name in args.models.split(","):
        original = export(name, args.size)
        for rnd in args.rounds.split(","):
            spec = PruneSpec.model_validate({"signal": "l2_norm", "target": {"macs": 0.5},
                                             "round_to": None if rnd == "auto" else int(rnd), "measure": {"repeats": 5}})
            t0 = time.monotonic()
            result = prune(original, spec)
            seconds = time.monotonic() - t0
            macs_kept = result.report["macs_kept"]
            for batch in (int(b) for b in args.batches.split(",")):
                for threads in (int(t) for t in args.threads.split(",")):
                    reps = max(5, args.repeats // (4 if batch > 1 else 1))
                    lb, la = timed(original, result.onnx, [batch, 3, args.size, args.size], threads, reps)
                    ratio = (1 - la / lb) / (1 - macs_kept)
                    rows.append((name, rnd, batch, threads, macs_kept, lb, la, ratio, seconds))
                    print(f"{name} round_to={rnd} batch={batch} threads={threads}: macs {macs_kept:.3f} "
                          f"latency {lb:.2f} -> {la:.2f} ms, ratio {ratio:.2f}", flush=True)
    lines = [
        "## Latency saving over MACs saving (ONNX Runtime, CPU)",
        "",
        f"Machine: {machine()}. Random weights, {args.size}x{args.size}, signal l2_norm, target macs=0.5; "
        "median latency of interleaved runs.",
        "",
        "| model | round_to | batch | threads | MACs kept | latency before (ms) | after (ms) | ratio | prune (s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, rnd, batch, threads, kept, lb, la, ratio, secs in rows:
        lines.append(f"| {name} | {rnd} | {batch} | {threads} | {kept:.3f} | {lb:.2f} | {la:.2f} | {ratio:.2f} | {secs:.1f} |")
    lines += ["", "Ratio = (1 - latency_after / latency_before) / (1 - MACs_after / MACs_before); goal >= 0.9.",
              "", f"Command: `{command()}`"]
    write_section("latency" + ("-quick" if args.quick else ""), "\n".join(lines))


if __name__ == "__main__":
    main()
