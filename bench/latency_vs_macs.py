"""Does pruning MACs buy latency? ONNX Runtime CPU latency saving over MACs saving at macs=0.5.

For torchvision ResNet-50 and MobileNetV2 (random weights, 224x224, exported with torch.onnx.export,
opset 17, dynamic batch) the engine prunes with l2_norm to macs=0.5 for each `round_to`: auto, 1, 8, 16,
and 4 (the fewest channels ONNX Runtime's NCHWc kernels accept); and 16 with the groups narrower than 128
channels kept whole (a candidate rule that spares narrow layers). The original and each pruned file are
then timed here in ONNX Runtime (CPU provider, batch 1 and 32, 1 and 2 threads): warm-up, then blocks of
runs interleaved in ABBA order, medians. The engine's own report figures (its interleaved measurement,
batch 1, 1 thread, 50 repeats) are listed too. A bar chart of latency saving beside MACs saving per model,
round_to, batch and threads goes to bench/plots/latency_vs_macs.png.

    ratio = (1 - latency_after / latency_before) / (1 - MACs_after / MACs_before)     goal: >= 0.9

Where the time goes is read from ONNX Runtime's profiler (SessionOptions.enable_profiling): per kernel,
median over the profiled runs, each convolution mapped back to its ONNX node for its useful MACs and its
channel counts (aligned or not to ONNX Runtime's NCHWc block: 16 channels on AVX-512, 8 on AVX2).

    .venv/bin/python bench/latency_vs_macs.py [--models resnet50,mobilenet_v2] [--rounds auto,1,4,8,16]
        [--threads 1,2] [--batches 1,32] [--repeats 100] [--no-extra] [--no-write]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from common import (
    CpuWatch,
    command,
    cpu_isa,
    load_average,
    machine,
    plot_link,
    plot_path,
    pyplot,
    write_section,
)

SIZE = 224
# A measurement is contended when the other processes' load plus our threads exceeds the cores by more
# than this; it is then taken once more and the quieter attempt kept (its load is in the table).
SLACK = 0.25
# Runs are interleaved in blocks, not one by one: ONNX Runtime's idle intra-op workers spin (its default,
# kept here), and a session timed right after the other one shares the cores with the other's spinning
# worker (ResNet-50 at 2 threads on 2 cores: 42 ms alone, 67 ms interleaved run by run).
BLOCK = 10
# A rounding rule that spares narrow groups (whose channels a 16-channel step would halve): round_to=16,
# with the groups under 128 channels kept whole, named by the layers whose output channels they are.
NARROW_KEPT = {
    "mobilenet_v2": [r"^features/features/[01]/", r"^features/features/2/conv/conv/[01]/",
                     r"^features/features/([2-9]|1[0-3])/conv/conv/2/Conv$"],
    "resnet50": [r"^conv1/Conv$", r"^layer1/layer1/\d+/conv[12]/Conv$"],
}
# Ops ONNX Runtime fuses into the convolution before them (activation, residual add): the fused kernel is
# named after the last tensor of the chain.
FUSABLE = {"Relu", "Clip", "Add", "Sum", "Sigmoid", "HardSigmoid", "LeakyRelu", "Tanh"}


def block_size() -> int:
    """Channels per NCHWc block of ONNX Runtime's CPU convolutions (MLAS): 16 with AVX-512, else 8."""
    return 16 if cpu_isa() == "AVX-512" else 8


def build(name: str):  # type: ignore[no-untyped-def]
    """A torchvision classifier with random weights (seeded), built from code: nothing is downloaded."""
    import torch
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


def export_model(model, size: int = SIZE) -> bytes:  # type: ignore[no-untyped-def]
    """The model as a user sends it: ONNX, opset 17, dynamic batch."""
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(1, 3, size, size),), buf, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return buf.getvalue()


def export(name: str) -> bytes:
    return export_model(build(name))


def session(data: bytes, threads: int, profile_dir: str | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if profile_dir is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(profile_dir, "ort")
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def contended(other: float, threads: int) -> bool:
    return other + threads > (os.cpu_count() or 1) + SLACK


def quietest(measure, *args, threads: int = 1, tries: int = 2):  # type: ignore[no-untyped-def]
    """Run `measure(*args)`, again if other processes took cores our threads needed; return the quieter
    (result, other load)."""
    best = None
    for _ in range(tries):
        with CpuWatch() as watch:
            result = measure(*args)
        if best is None or watch.other < best[1]:
            best = (result, watch.other)
        if not contended(watch.other, threads):
            break
    return best


def runs_for(repeats: int, batch: int) -> int:
    """Timed runs asked of a batch: `repeats` images' worth, at least one block's (a batch of 32 takes ~32x
    as long as one image)."""
    return max(-(-repeats // batch), BLOCK - 1)


def interleaved(before: bytes, after: bytes, threads: int, repeats: int, seconds: float,
                batch: int = 1) -> tuple[list[float], int]:
    """Median ms of both models, interleaved in blocks of BLOCK runs in ABBA order so that drift hits both
    alike; the first run of each block is dropped (it may meet the other session's spinning workers). At
    least `repeats` timed runs each and, for fast models, more: until `seconds` have been spent."""
    x = np.random.default_rng(0).standard_normal([batch, 3, SIZE, SIZE]).astype(np.float32)
    sessions = [session(before, threads), session(after, threads)]
    feeds = [{s.get_inputs()[0].name: x} for s in sessions]
    for s, f in zip(sessions, feeds, strict=True):
        for _ in range(10 if batch == 1 else 3):
            s.run(None, f)
    times: list[list[float]] = [[], []]
    t_start = time.perf_counter()
    k = 0
    while len(times[0]) < repeats or (time.perf_counter() - t_start < seconds and len(times[0]) < 20 * repeats):
        for i in ((0, 1) if k % 2 == 0 else (1, 0)):
            for j in range(BLOCK):
                t0 = time.perf_counter()
                sessions[i].run(None, feeds[i])
                if j:
                    times[i].append((time.perf_counter() - t0) * 1000)
        k += 1
    return [statistics.median(t) for t in times], len(times[0])


# ------------------------------------------------------------------------------------ profiling


@dataclass
class ConvNode:
    name: str
    cin: int
    cout: int
    group: int
    kernel: tuple[int, ...]
    macs: int

    @property
    def kind(self) -> str:
        if self.group > 1 and self.group == self.cin:
            return "depthwise"
        if all(k == 1 for k in self.kernel):
            return "1x1"
        return "kxk"


def conv_nodes(data: bytes) -> dict[str, list[ConvNode]]:
    """Every Conv of an (unoptimised) ONNX graph with its useful MACs at 1x3x224x224, keyed by its node
    name and by every tensor of the chain ONNX Runtime may fuse into it (activation, residual add)."""
    proto = onnx.load_model_from_string(data)
    inits = {i.name: list(i.dims) for i in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    del probe.graph.output[:]
    probe.graph.output.extend([onnx.ValueInfoProto(name=n.output[0]) for n in convs])
    x = np.zeros([1, 3, SIZE, SIZE], dtype=np.float32)
    sess = session(probe.SerializeToString(), 1)
    outs = dict(zip([n.output[0] for n in convs], sess.run(None, {sess.get_inputs()[0].name: x}), strict=True))
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in proto.graph.node:
        for i in n.input:
            consumers[i].append(n)
    keyed: dict[str, list[ConvNode]] = defaultdict(list)
    for n in convs:
        w = inits[n.input[1]]
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        out = outs[n.output[0]]
        c = ConvNode(n.name, w[1] * group, w[0], group, tuple(w[2:]), int(np.prod(out.shape)) * int(np.prod(w[1:])))
        keyed[n.name].append(c)
        t = n.output[0]
        keyed[t].append(c)
        while len(consumers[t]) == 1 and consumers[t][0].op_type in FUSABLE:
            t = consumers[t][0].output[0]
            keyed[t].append(c)
    return keyed


def profile(data: bytes, threads: int, runs: int) -> list[dict]:
    """Kernel events of ONNX Runtime's profiler: per node, the median duration over `runs` runs."""
    x = np.random.default_rng(0).standard_normal([1, 3, SIZE, SIZE]).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(data, threads, tmp)
        feed = {sess.get_inputs()[0].name: x}
        for _ in range(runs + 5):
            sess.run(None, feed)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    by_node: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_node[e["name"][: -len("_kernel_time")]].append(e)
    return [{"node": name, "op": evs[0]["args"]["op_name"], "us": statistics.median(e["dur"] for e in evs[5:] or evs),
             "inputs": evs[0]["args"].get("input_type_shape", [])} for name, evs in by_node.items()]


def _shape(entry: dict) -> list[int]:
    return next(iter(entry.values())) if entry else []


def breakdown(data: bytes, threads: int = 1, runs: int = 30) -> dict:
    """Where the time goes: per class of kernel, milliseconds and useful GMAC/s."""
    block = block_size()
    keyed = conv_nodes(data)
    events, other = quietest(profile, data, threads, runs, threads=threads)
    classes: dict[str, dict[str, float]] = defaultdict(lambda: {"ms": 0.0, "macs": 0.0, "n": 0, "padded": 0.0})
    total = 0.0
    convs = []
    for ev in events:
        ms = ev["us"] / 1000
        total += ms
        op = ev["op"]
        if op in ("Conv", "FusedConv"):
            nchwc = ev["node"].endswith("_nchwc")
            key = ev["node"][: -len("_nchwc")] if nchwc else ev["node"]
            cands = keyed.get(key, [])
            w = _shape(ev["inputs"][1]) if len(ev["inputs"]) > 1 else []
            if len(cands) > 1 and w:  # a residual add fused into one of two convs: match the kernel
                cands = sorted(cands, key=lambda c: (c.kernel != tuple(w[2:]), abs(c.cin // c.group - w[1])))
            if not cands:
                classes["conv (unmatched)"]["ms"] += ms
                continue
            c = cands[0]
            aligned = c.cout % block == 0 and (c.cin % block == 0 or c.cin <= 4)
            label = f"{c.kind} conv, " + ("NCHWc" if nchwc else "NCHW") + (
                f", channels x{block}" if aligned else f", channels not x{block}")
            padded = int(np.prod(w[:2])) / (c.cout * c.cin // c.group) if nchwc and w else 1.0
            convs.append({"kind": c.kind, "cin": c.cin, "cout": c.cout, "ms": ms, "macs": c.macs,
                          "nchwc": nchwc, "aligned": aligned, "padded": padded})
        elif op in ("ReorderInput", "ReorderOutput"):
            label = "NCHWc<->NCHW reorders"
        else:
            label = "other ops"
        cl = classes[label]
        cl["ms"] += ms
        cl["n"] += 1
        if op in ("Conv", "FusedConv"):
            cl["macs"] += convs[-1]["macs"]
            cl["padded"] += convs[-1]["macs"] * convs[-1]["padded"]
    return {"total_ms": total, "classes": dict(classes), "convs": convs, "other": other}


# ------------------------------------------------------------------------------------ the benchmark


def prune_variant(original: bytes, options: dict) -> tuple[bytes, dict, float]:
    from secateurs.pruning import PruneSpec, prune

    spec = PruneSpec.model_validate({"signal": "l2_norm", "target": {"macs": 0.5},
                                     "measure": {"batch": 1, "threads": 1, "repeats": 50}, **options})
    t0 = time.monotonic()
    result = prune(original, spec)
    return result.onnx, result.report, time.monotonic() - t0


def ratio(before: float, after: float, macs_kept: float) -> float:
    return (1 - after / before) / (1 - macs_kept)


def fmt_breakdown(name: str, variants: list[tuple[str, dict]]) -> list[str]:
    labels = sorted({lab for _, b in variants for lab in b["classes"]})
    lines = [
        f"Where the time goes, {name}, batch 1, 1 thread (ONNX Runtime profiler, kernel ms, median per node; "
        "GMAC/s counts useful MACs only; `pad` = MACs the NCHWc kernel computes over useful MACs):",
        "",
        "| kernels | " + " | ".join(v for v, _ in variants) + " |",
        "| --- | " + " | ".join("---:" for _ in variants) + " |",
    ]
    for lab in labels:
        cells = []
        for _, b in variants:
            c = b["classes"].get(lab)
            if c is None or c["n"] == 0:
                cells.append("-")
                continue
            cell = f"{c['ms']:.2f} ms ({int(c['n'])})"
            if c["macs"]:
                cell += f", {c['macs'] / c['ms'] / 1e6:.1f} GMAC/s"
                if c["padded"] > c["macs"] * 1.001:
                    cell += f", pad {c['padded'] / c['macs']:.2f}"
            cells.append(cell)
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    lines.append("| **all kernels** | " + " | ".join(f"**{b['total_ms']:.2f} ms**" for _, b in variants) + " |")
    lines.append("| other load (cores) | " + " | ".join(f"{b['other']:.2f}" for _, b in variants) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="resnet50,mobilenet_v2")
    p.add_argument("--rounds", default="auto,1,4,8,16")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--batches", default="1,32", help="batch sizes timed (the profile is at batch 1)")
    p.add_argument("--repeats", type=int, default=100, help="timed runs per model at least (more for fast models)")
    p.add_argument("--no-extra", action="store_true", help="skip the round_to=16 + narrow groups kept variant")
    p.add_argument("--seconds", type=float, default=6.0, help="and at least this long per measurement")
    p.add_argument("--no-write", action="store_true", help="print the section; leave BENCHMARKS.md and the plot alone")
    args = p.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    load_start = load_average()
    t_begin = time.monotonic()
    rows = []
    breakdowns: dict[str, list[tuple[str, dict]]] = {}
    for name in args.models.split(","):
        original = export(name)
        breakdowns[name] = [("original", breakdown(original))]
        variants = [(r, {"round_to": None if r == "auto" else int(r)}) for r in args.rounds.split(",")]
        if name in NARROW_KEPT and not args.no_extra:
            variants.append(("16, groups < 128 kept", {"round_to": 16, "protect": NARROW_KEPT[name]}))
        for label, options in variants:
            pruned, rep, seconds = prune_variant(original, options)
            kept = rep["macs_after"] / rep["macs_before"]
            bd = breakdown(pruned)
            breakdowns[name].append((label, bd))
            for b in batches:
                for th in threads:
                    ((lb, la), n), other = quietest(interleaved, original, pruned, th, runs_for(args.repeats, b),
                                                    args.seconds, b, threads=th)
                    row = {"other": other, "model": name, "variant": label, "batch": b, "threads": th,
                           "macs_kept": kept, "params_kept": rep["params_kept"], "before": lb, "after": la,
                           "runs": n, "ratio": ratio(lb, la, kept), "prune_s": seconds}
                    if th == rep["latency_threads"] and b == rep.get("latency_batch", 1):
                        row["report"] = (rep["latency_ms_before"], rep["latency_ms_after"],
                                         ratio(rep["latency_ms_before"], rep["latency_ms_after"], kept))
                    rows.append(row)
                    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}),
                          flush=True)
    block = block_size()
    lines = [
        "## Latency saving over MACs saving (ONNX Runtime, CPU)",
        "",
        f"Machine: {machine()}; ONNX Runtime NCHWc block: {block} channels. Load average at start "
        f"{load_start}, at end {load_average()}; {(time.monotonic() - t_begin) / 60:.1f} min in all.",
        "",
        f"torchvision models with random weights, {SIZE}x{SIZE}, exported with `torch.onnx.export` (opset 17, "
        "dynamic batch); pruned by `secateurs.pruning.prune` with signal l2_norm, target macs=0.5. Latency: "
        f"ONNX Runtime CPU provider (default session options), batch {' and '.join(map(str, batches))}, original "
        f"and pruned file interleaved in blocks of {BLOCK} runs in ABBA order after 10 warm-up runs (3 at batch > 1), "
        "first run of each block dropped (the idle session's spinning workers would otherwise share the "
        f"cores), median of `runs` runs each (at least {args.repeats} images' worth and {args.seconds:g} s, "
        f"and never fewer than {BLOCK - 1} runs). `report` = the engine's own figures (interleaved, batch 1, 1 "
        "thread, 50 repeats).",
        "",
        "ratio = (1 - latency_after / latency_before) / (1 - MACs_after / MACs_before); goal >= 0.9.",
        "",
        "`other load` = cores kept busy by other processes during the measurement; when it plus our threads "
        f"exceeds the {os.cpu_count()} cores by more than {SLACK}, the measurement is taken again, the quieter "
        "kept, and a row still contended is marked *contended*: its latencies shared the CPU.",
        "",
        "| model | round_to | MACs kept | params kept | batch | threads | before (ms) | after (ms) | runs "
        "| other load | ratio | report before / after (ms) | report ratio | prune (s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        rb = f"{r['report'][0]:.2f} / {r['report'][1]:.2f}" if "report" in r else ""
        rr = f"{r['report'][2]:.2f}" if "report" in r else ""
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['macs_kept']:.3f} | {r['params_kept']:.3f} | {r['batch']} "
            f"| {r['threads']} "
            f"| {r['before']:.2f} | {r['after']:.2f} | {r['runs']} | {r['other']:.2f}"
            f"{' *contended*' if contended(r['other'], r['threads']) else ''} | **{r['ratio']:.2f}** | {rb} | {rr} "
            f"| {r['prune_s']:.1f} |")
    spread = []
    for name in breakdowns:
        for bs in batches:
            for th in threads:
                b = [r["before"] for r in rows if r["model"] == name and r["threads"] == th and r["batch"] == bs]
                spread.append(f"{name} at batch {bs}, {th} thread{'s' if th > 1 else ''} {min(b):.2f}-{max(b):.2f} ms")
    lines += ["", "The same original measured once per row (a check of the measurement's stability): "
              + "; ".join(spread) + "."]
    path = plot_path("latency_vs_macs")
    lines += ["", "Latency saving (bars, from the table's before/after) beside the MACs saving (black line) and the "
              "goal, 0.9 of it (dotted), per model, round_to, batch and threads:", "",
              plot_link(path, "latency saving against MACs saving")]
    for name, variants in breakdowns.items():
        lines += [""] + fmt_breakdown(name, variants)
    lines += ["", f"Command: `{command()}`"]
    if args.no_write:
        print("\n".join(lines))
        return
    plot(rows, path)
    write_section("latency", "\n".join(lines))


def plot(rows: list[dict], path) -> None:  # type: ignore[no-untyped-def]
    """Latency saving per row as bars, one panel per model, a group of bars per round_to (one bar per batch
    and thread count), the MACs saving and 0.9 of it drawn across each group."""
    plt = pyplot()
    models = list(dict.fromkeys(r["model"] for r in rows))
    settings = list(dict.fromkeys((r["batch"], r["threads"]) for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(max(6.5 * len(models), 9), 5), squeeze=False, sharey=True)
    width = 0.8 / len(settings)
    colors = plt.get_cmap("tab10")
    for ax, model in zip(axes[0], models, strict=True):
        variants = list(dict.fromkeys(r["variant"] for r in rows if r["model"] == model))
        for i, variant in enumerate(variants):
            mine = [r for r in rows if r["model"] == model and r["variant"] == variant]
            saving = (1 - mine[0]["macs_kept"]) * 100
            ax.hlines(saving, i - 0.45, i + 0.45, color="black", lw=1.5, label="MACs saving" if i == 0 else None)
            ax.hlines(0.9 * saving, i - 0.45, i + 0.45, color="black", lw=1, ls=":",
                      label="goal: 0.9 x MACs saving" if i == 0 else None)
            for j, (b, th) in enumerate(settings):
                r = next((r for r in mine if r["batch"] == b and r["threads"] == th), None)
                if r is None:
                    continue
                ax.bar(i - 0.4 + width * (j + 0.5), (1 - r["after"] / r["before"]) * 100, width * 0.92,
                       color=colors(j), label=f"batch {b}, {th} thread{'s' if th > 1 else ''}" if i == 0 else None)
        ax.set_xticks(range(len(variants)), [f"round_to\n{v}" for v in variants], fontsize=8)
        ax.set_title(model)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("saving over the original (%), ONNX Runtime CPU")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle("Latency saving against MACs saving at macs=0.5 (l2_norm)")
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
