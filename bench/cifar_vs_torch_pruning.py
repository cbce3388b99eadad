"""CIFAR ResNets (ResNet-56 by default, `--arch resnet20_cifar` etc.), no recovery: our signals against
Torch-Pruning's own importances at the same MACs, top-1 on the full 10,000-image test set.

Ours: `secateurs.pruning.prune` on the shared pretrained safetensors (arch resnet56_cifar), each data-free
signal, default spec otherwise (scope global, round_to auto, layer_floor 0.1). Torch-Pruning: called
directly (`tp.pruner.BasePruner`, `tp.importance.GroupMagnitudeImportance(p=2)`, iterative_steps=1,
global and local) on the same model (`secateurs.pruning.zoo.build` + the same weights, option-A shortcut
through `CUSTOM_PRUNERS`, `linear` ignored), its pruning_ratio bisected until its MACs land at the MACs of
our counterpart, l2_norm; and, global, its other importances (`--tp-importances`): `BNScaleImportance`,
`GroupTaylorImportance` (gradients of the cross-entropy on the first 512 shared training images, the
images our own `taylor` signal scores with; that row is added beside it) and `FPGMImportance`, each
bisected to the same MACs. Recovery: none on either side, the same budget (zero) for every row. MACs are
counted the same way for both (FlopCounterMode total / 2 at 1x3x32x32, on the PyTorch module). Every
model is evaluated the same way: exported to ONNX (ours: the file the engine returns) and run in ONNX
Runtime, batch 500. Extra rows explain the difference: the same ranking without our coupling count
(Torch-Pruning's ranking), round_to, per_mac, aimed at exactly Torch-Pruning's MACs. The rows go to
bench/results/<section name>.json beside the section.
`--with-nni PYTHON` adds NNI's L1/L2 norm pruners (on the first convolution of every residual block) with
its ModelSpeedup at the same MACs, run by bench/nni_prune.py in PYTHON, an interpreter with NNI (`make
nni-venv`); that run writes a section of its own (-nni), as NNI's ratio search takes several minutes per
target. For ResNet-56 the section also quotes DepGraph's published figure (full fine-tuning; quoted, not
measured).
`--sweep` instead writes top-1 against MACs over a range of targets to a section of its own, with a plot
(bench/plots/cifar_sweep_resnet56.png).

    .venv/bin/python bench/cifar_vs_torch_pruning.py [--arch resnet56_cifar] [--targets 0.8,0.7,0.5,0.35]
        [--no-extra] [--tp-importances bn_scale,taylor,fpgm] [--with-nni .nni-venv/bin/python]
    .venv/bin/python bench/cifar_vs_torch_pruning.py --sweep 0.95,0.9,0.85,0.8,0.75,0.7,0.6
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import (
    DATA,
    QUICK,
    ROOT,
    CpuWatch,
    cifar,
    command,
    machine,
    macs,
    params,
    plot_link,
    plot_path,
    pyplot,
    write_section,
)

SHAPE = (1, 3, 32, 32)
RESULTS = ROOT / "bench" / "results"
SIGNALS = ("l2_norm", "l1_norm", "fpgm", "bn_scale", "random")
# Torch-Pruning's importances beside its group-L2 (which every run has), each with global pruning and its
# own defaults (mean over the group, mean-normalised): name -> (class in tp.importance, label).
TP_IMPORTANCES = {
    "bn_scale": ("BNScaleImportance", "BN scale"),
    "taylor": ("GroupTaylorImportance", "group Taylor"),
    "fpgm": ("FPGMImportance", "FPGM"),
}
# Calibration for the gradient criteria, ours (`taylor`) and Torch-Pruning's alike: the first CALIB shared
# training images with their labels, cross-entropy, batches of CALIB_BATCH, the model in eval mode.
CALIB, CALIB_BATCH = 512, 64
# Our counterpart of Torch-Pruning's group-L2: Torch-Pruning is matched to its MACs.
COUNTERPART = "l2_norm"
# Our l2_norm without the coupling count: channels ranked as Torch-Pruning's group-L2 ranks them.
UNCOUPLED = {"compose": {"measure": "weight", "reduce": "l2", "aggregate": "mean", "normalize": "mean",
                         "coupling": "none"}}
ARCH = "resnet56_cifar"
# The literature's figure for ResNet-56 on CIFAR-10, quoted in the section (not measured here): DepGraph's
# group-sparsity pruner with its full training schedule (Fang et al., "DepGraph: Towards Any Structural
# Pruning", CVPR 2023), as the README of Torch-Pruning 1.6.0 (the version compared here) lists it, "Ours-Group";
# speed-up there = base MACs / pruned MACs.
DEPGRAPH = {"base": 93.53, "pruned": 93.77, "speedup": 2.13,
            "source": "https://github.com/VainF/Torch-Pruning/blob/v1.6.0/README.md#our-results-on-resnet-56--cifar-10--200x"}


def accuracy_onnx(data: bytes, test) -> float:  # type: ignore[no-untyped-def]
    from secateurs.pruning import onnx_tools

    sess = onnx_tools.session(data, 2)
    correct = 0
    for s in range(0, len(test), 500):
        correct += int((onnx_tools.run(sess, test.x[s : s + 500]).argmax(1) == test.y[s : s + 500]).sum())
    return correct / len(test)


def to_onnx(model: torch.nn.Module) -> bytes:
    from secateurs.pruning import onnx_tools

    return onnx_tools.export(model.eval(), torch.zeros(SHAPE), input_name="input", output_names=["logits"],
                             dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset=17)


def channels(model: torch.nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


def differ(a: dict[str, int], b: dict[str, int]) -> int:
    """Output channels by which two plans of the same network differ, summed over the convolutions."""
    return sum(abs(a[k] - b[k]) for k in a)


def original_model(weights: bytes) -> torch.nn.Module:
    """The same network both tools get: the zoo's CifarResNet with the shared weights."""
    from safetensors.torch import load
    from secateurs.pruning import zoo

    model = zoo.build(ARCH, 10)
    missing, unexpected = model.load_state_dict(load(weights), strict=False)
    # the checkpoint has no num_batches_tracked buffers, and nothing else may be missing
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    return model.eval()


def ours(weights: bytes, options: dict, base_macs: float, base_params: int, calib=None) -> dict:  # type: ignore[no-untyped-def]
    from secateurs.pruning import PruneSpec, prune

    spec = PruneSpec.model_validate({"measure": {"repeats": 3}, **options})
    t0 = time.monotonic()
    result = prune(weights, spec, arch=ARCH, calibration=calib)
    seconds = time.monotonic() - t0
    st = result.report["stage_seconds"]
    return {"onnx": result.onnx, "macs_kept": macs(result.model, SHAPE) / base_macs,
            "channels": channels(result.model),
            "report_macs_kept": result.report["macs_kept"], "params_kept": params(result.model) / base_params,
            "seconds": seconds, "core_seconds": st.get("analyse", 0) + st.get("score", 0) + st.get("plan", 0)}


def gradients(original: torch.nn.Module, calib) -> tuple[dict[str, torch.Tensor], float]:  # type: ignore[no-untyped-def]
    """What Torch-Pruning's Taylor importance reads: each parameter's .grad, the cross-entropy's gradient
    summed over the calibration batches (as its examples do: loss.backward() on a few batches before
    step()), the model in eval mode; and the seconds it took."""
    t0 = time.monotonic()
    model = copy.deepcopy(original).eval()
    model.zero_grad(set_to_none=True)
    for s in range(0, len(calib), CALIB_BATCH):
        x, y = torch.from_numpy(calib.x[s : s + CALIB_BATCH]), torch.from_numpy(calib.y[s : s + CALIB_BATCH])
        F.cross_entropy(model(x), y).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}, \
        time.monotonic() - t0


def torch_pruning(original: torch.nn.Module, goal: float, global_pruning: bool, base_macs: float,
                  base_params: int, importance: str = "GroupMagnitudeImportance",
                  grads: dict[str, torch.Tensor] | None = None) -> dict:
    """Bisect Torch-Pruning's pruning_ratio until its MACs kept are within 0.002 of `goal` (closest found).
    `importance`: a class of tp.importance, built with its defaults (group-L2: p=2); `grads`: the .grad of
    every parameter, set on each copy before the pruner scores it (the Taylor importance reads them)."""
    import torch_pruning as tp
    from secateurs.pruning.custom_ops import CUSTOM_PRUNERS

    t_search = time.monotonic()
    lo, hi = 0.0, 0.99
    best = None
    for _ in range(24):
        ratio = (lo + hi) / 2
        model = copy.deepcopy(original)
        for name, param in model.named_parameters():
            if grads is not None and name in grads:
                param.grad = grads[name].clone()
        imp = getattr(tp.importance, importance)
        t0 = time.monotonic()
        pruner = tp.pruner.BasePruner(
            model, torch.zeros(SHAPE), importance=imp(p=2) if importance == "GroupMagnitudeImportance" else imp(),
            pruning_ratio=ratio, global_pruning=global_pruning, iterative_steps=1,
            ignored_layers=[model.linear], customized_pruners=CUSTOM_PRUNERS,
        )
        pruner.step()
        seconds = time.monotonic() - t0
        kept = macs(model, SHAPE) / base_macs
        if best is None or abs(kept - goal) < abs(best["macs_kept"] - goal):
            best = {"model": model, "macs_kept": kept, "ratio": ratio, "seconds": seconds}
        if abs(kept - goal) <= 0.002:
            break
        lo, hi = (ratio, hi) if kept > goal else (lo, ratio)
    assert best is not None
    model = best.pop("model")
    return {**best, "onnx": to_onnx(model), "params_kept": params(model) / base_params, "channels": channels(model),
            "search_seconds": time.monotonic() - t_search}


def compare(args, weights: bytes, test, original: torch.nn.Module) -> tuple[list[str], list[dict]]:  # type: ignore[no-untyped-def]
    base_macs, base_params = macs(original, SHAPE), params(original)
    convs = len(channels(original))
    notes: list[str] = []
    rows = [{"target": "-", "method": "unpruned", "macs_kept": 1.0, "params_kept": 1.0,
             "accuracy": accuracy_onnx(to_onnx(original), test), "time": ""}]

    def add(row: dict) -> dict:
        row.pop("onnx", None)
        rows.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                          if k != "channels"}), flush=True)
        return row

    def ours_row(target: float, label: str, spec: dict, calib=None) -> dict:  # type: ignore[no-untyped-def]
        r = ours(weights, {"target": {"macs": target}, **spec}, base_macs, base_params, calib)
        return add({"target": target, "method": f"secateurs {label}", "accuracy": accuracy_onnx(r["onnx"], test),
                    "time": f"{r['seconds']:.1f} ({r['core_seconds']:.1f})", **r})

    importances = [i for i in args.tp_importances.split(",") if i]
    calib = cifar("cifar10_train_subset10k.npz", CALIB) if "taylor" in importances else None
    grads, grad_seconds = gradients(original, calib) if calib is not None else (None, 0.0)
    for target in (float(t) for t in args.targets.split(",")):
        first = len(rows)
        by_signal = {s: ours_row(target, s, {"signal": s}) for s in args.signals.split(",")}
        if calib is not None:  # beside Torch-Pruning's Taylor: ours, from the same images
            ours_row(target, f"taylor ({CALIB} calibration images with labels)",
                     {"signal": "taylor", "calibration": {"samples": CALIB}}, calib)
        goal = by_signal[COUNTERPART]["macs_kept"] if COUNTERPART in by_signal else target
        tp_rows = {}
        for global_pruning in (True, False):
            r = torch_pruning(original, goal, global_pruning, base_macs, base_params)
            tp_rows[global_pruning] = add({
                "target": target, "accuracy": accuracy_onnx(r["onnx"], test),
                "method": f"Torch-Pruning group-L2, global_pruning={global_pruning} (pruning_ratio {r['ratio']:.3f})",
                "time": f"{r['seconds']:.1f} (search {r['search_seconds']:.0f})", **r})
        for name in importances:
            cls, label = TP_IMPORTANCES[name]
            r = torch_pruning(original, goal, True, base_macs, base_params, cls,
                              grads if name == "taylor" else None)
            extra = f"; gradients {grad_seconds:.1f}" if name == "taylor" else ""
            add({"target": target, "accuracy": accuracy_onnx(r["onnx"], test),
                 "method": f"Torch-Pruning {label} (`{cls}`), global_pruning=True (pruning_ratio {r['ratio']:.3f})",
                 "time": f"{r['seconds']:.1f} (search {r['search_seconds']:.0f}{extra})", **r})
        if args.with_nni:
            for which in ("l1", "l2"):
                r = nni_row(args.with_nni, which, goal, test)
                if "error" in r:
                    notes.append(r["error"])
                    break
                tp_rows[which] = add({"target": target, **r})
                whole = sum(r["channels"][k] == v for k, v in channels(original).items())
                notes.append(f"NNI {which.upper()} at {target}: {whole} of {convs} convolutions kept at full width "
                             "after ModelSpeedup.")
        if not args.no_extra:
            # Why the two differ: the same ranking without our coupling count (Torch-Pruning's ranking),
            # also without rounding and aimed at exactly Torch-Pruning's MACs (the same plan, then); our
            # ranking without rounding and with 16 everywhere; the FLOP-aware variant.
            tp_kept = tp_rows[True]["macs_kept"]
            l2 = {**UNCOUPLED["compose"], "coupling": "count"}
            for label, spec in (
                ("coupling=none (Torch-Pruning's ranking)", {"signal": UNCOUPLED}),
                ("coupling=none, round_to=1", {"signal": UNCOUPLED, "round_to": 1}),
                (f"coupling=none, round_to=1, target macs={tp_kept:.5f} (Torch-Pruning's global)",
                 {"signal": UNCOUPLED, "round_to": 1, "target": {"macs": min(tp_kept + 1e-6, 1.0)}}),
                ("round_to=1", {"round_to": 1}),
                ("round_to=16", {"round_to": 16}),
                ("per_mac=true", {"signal": {"compose": {**l2, "per_mac": True}}}),
            ):
                ours_row(target, f"{COUNTERPART}, {label}", {"signal": COUNTERPART, **spec})
        for row in rows[first:]:
            row["differ"] = str(differ(row["channels"], tp_rows[True]["channels"]))
    if args.with_nni:
        notes.append("NNI's pruners mask the first convolution of every residual block (the block's inner "
                     "channels) at one sparse_ratio, and ModelSpeedup removes them: NNI's mask propagation does "
                     "not pass the option-A shortcut (a custom channel-select module), so the channels a residual "
                     "add ties together stay whole (with every convolution masked, the two sides of the add came "
                     "out of ModelSpeedup at different widths). Torch-Pruning and ours prune those too.")
    else:
        notes.append("NNI's L1/L2 norm pruners are compared in a run of their own (`--with-nni PYTHON`, its own "
                     "section; `make bench` runs it after `make nni-venv`).")
    lines = [
        "Torch-Pruning: `BasePruner` + `GroupMagnitudeImportance(p=2)` (its defaults: mean over the group, "
        "mean-normalised), iterative_steps=1, `linear` ignored, option-A shortcut via `CUSTOM_PRUNERS`, "
        f"pruning_ratio bisected to the MACs of our {COUNTERPART} at that target. Ours: default spec (scope "
        "global, round_to auto = 16 for groups of >= 64 channels, 4 from 16, layer_floor 0.1; the magnitude "
        "signals' scores multiplied by the number of layers that lose the channel, over 2: `coupling: count`) "
        "unless the row says otherwise. `channels != TP` = output channels by which the plan differs from "
        f"Torch-Pruning's global plan at that target, summed over the {convs} convolutions (0: the same widths "
        "everywhere).",
        *([
            "",
            f"Torch-Pruning's other importances ({', '.join(f'`{TP_IMPORTANCES[i][0]}`' for i in importances)}): "
            "each with its defaults (mean over the group, mean-normalised), global pruning, the same pruner "
            f"settings and the same bisection to the MACs of our {COUNTERPART}."
            + (f" `GroupTaylorImportance` reads the parameters' gradients: the cross-entropy on the first {CALIB} "
               f"shared training images with their labels, summed over batches of {CALIB_BATCH} in eval mode, "
               "set on each copy before it is scored (their time is in the wall-time column as `gradients`); "
               f"our `taylor` row scores from the same {CALIB} images and labels (its gradient pass is inside "
               "its analyse+score+plan)." if "taylor" in importances else "")
            + " No recovery on either side: every row, ours and Torch-Pruning's, has the same budget (none), and "
            "the scores come from the same pretrained weights.",
        ] if importances else []),
        "",
        "Wall time: ours = the whole `prune` call (import, analyse, score, plan with its measured "
        "attempts, export, ONNX check, 3-repeat latency), in brackets analyse+score+plan; Torch-Pruning = "
        "building the pruner and `step()` at the final pruning_ratio, in brackets the whole ratio search; NNI "
        "(when run) = masking and ModelSpeedup at the final sparse_ratio, in brackets its search (secant steps "
        "on sparse_ratio, each a full prune and speed-up, until the MACs are within 0.005 of our l2_norm's).",
        "",
        "| target | method | MACs kept | params kept | top-1 | channels != TP | wall time of pruning (s) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['target']} | {r['method']} | {r['macs_kept']:.4f} | {r['params_kept']:.3f} "
                     f"| {r['accuracy'] * 100:.2f}% | {r.get('differ', '')} | {r['time']} |")
    if ARCH == "resnet56_cifar":
        d = DEPGRAPH
        lines.append(f"| {1 / d['speedup']:.2f} ({d['speedup']}x) | *quoted, not measured:* DepGraph group-sparsity "
                     f"pruner + full training (Fang et al., CVPR 2023; their ResNet-56 at {d['base']}% unpruned; MACs kept "
                     f"= 1 / their {d['speedup']}x speed-up), [Torch-Pruning 1.6.0 README]({d['source']}) | {1 / d['speedup']:.4f} | - | {d['pruned']:.2f}% | - | - |")
    if notes:
        lines += [""] + notes
    return lines, rows


def nni_row(python: str, which: str, goal: float, test) -> dict:  # type: ignore[no-untyped-def]
    """NNI's L1/L2 norm pruner + ModelSpeedup at `goal` MACs, in the interpreter that has NNI; the row, or
    {"error": one line} when it fails."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "nni.onnx"
        proc = subprocess.run([python, str(Path(__file__).with_name("nni_prune.py")), "--arch", ARCH,
                               "--pruner", which, "--goal", f"{goal:.6f}", "--out", str(out)],
                              capture_output=True, text=True, check=False)
        if proc.returncode:
            last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            return {"error": f"NNI ({python}): not measured because `nni_prune.py --pruner {which}` failed: {last}"}
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        acc = accuracy_onnx(out.read_bytes(), test)
    return {"method": f"NNI {r['nni']} {which.upper()}NormPruner + ModelSpeedup, every block's first conv at sparse_ratio "
                      f"{r['ratio']:.3f}", "accuracy": acc, "macs_kept": r["macs_kept"],
            "params_kept": r["params_kept"], "channels": r["channels"],
            "time": f"{r['seconds']:.0f} (search {r['search_seconds']:.0f}, {len(r['tried'])} tries)"}


def sweep(args, weights: bytes, test, original: torch.nn.Module) -> tuple[list[str], list[dict]]:  # type: ignore[no-untyped-def]
    """Top-1 against MACs kept over a range of targets: is one single point representative?"""
    base_macs, base_params = macs(original, SHAPE), params(original)
    lines = [
        f"Top-1 over a range of targets: our {COUNTERPART} (default spec; round_to=1; without the coupling count, "
        f"i.e. Torch-Pruning's ranking) against Torch-Pruning's global group-L2 bisected to the MACs of our "
        f"{COUNTERPART} (default); no recovery; full test set, ONNX Runtime. Each cell: MACs kept / top-1.",
        "",
        f"| target | secateurs {COUNTERPART} | secateurs {COUNTERPART}, round_to=1 "
        f"| secateurs {COUNTERPART}, coupling=none | Torch-Pruning global group-L2 |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    columns = [f"secateurs {COUNTERPART}", f"secateurs {COUNTERPART}, round_to=1",
               f"secateurs {COUNTERPART}, coupling=none", "Torch-Pruning global group-L2"]
    points: list[list[tuple[float, float]]] = [[] for _ in columns]
    for target in (float(t) for t in args.sweep.split(",")):
        cells = []
        for extra in ({}, {"round_to": 1}, {"signal": UNCOUPLED}):
            r = ours(weights, {"signal": COUNTERPART, "target": {"macs": target}, **extra}, base_macs,
                     base_params)
            cells.append((r["macs_kept"], accuracy_onnx(r["onnx"], test)))
        r = torch_pruning(original, cells[0][0], True, base_macs, base_params)
        cells.append((r["macs_kept"], accuracy_onnx(r["onnx"], test)))
        print(target, cells, flush=True)
        lines.append(f"| {target} | " + " | ".join(f"{k:.3f} / {a * 100:.2f}%" for k, a in cells) + " |")
        for column, cell in zip(points, cells, strict=True):
            column.append(cell)
    path = plot_path(f"cifar_sweep_{ARCH.removesuffix('_cifar')}")
    if not args.no_write:
        plot_sweep(columns, points, accuracy_onnx(to_onnx(original), test), path)
    lines += ["", plot_link(path, "top-1 against MACs kept, ours and Torch-Pruning")]
    targets = [float(t) for t in args.sweep.split(",")]
    return lines, [{"target": t, "method": c, "macs_kept": k, "accuracy": a}
                   for c, pts in zip(columns, points, strict=True) for t, (k, a) in zip(targets, pts, strict=True)]


def plot_sweep(columns: list[str], points: list[list[tuple[float, float]]], unpruned: float, path: Path) -> None:
    """Top-1 against MACs kept, one line per method, from the sweep table's cells."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    for i, (label, pts) in enumerate(zip(columns, points, strict=True)):
        xs, ys = zip(*sorted((k, a * 100) for k, a in pts), strict=True)
        ax.plot(xs, ys, marker="osD^"[i % 4], ls="--" if label.startswith("Torch") else "-", label=label, lw=1.5)
    ax.plot([1.0], [unpruned * 100], marker="*", color="black", ms=13, ls="none", label="unpruned")
    ax.set_xlabel("MACs kept (fraction of the original)")
    ax.set_ylabel("top-1 on the CIFAR-10 test set (%), no recovery")
    ax.set_title(f"ResNet-{ARCH.removeprefix('resnet').removesuffix('_cifar')} / CIFAR-10: ours against Torch-Pruning")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default=ARCH, choices=[f"resnet{d}_cifar" for d in (20, 32, 44, 56)])
    p.add_argument("--targets", default="0.8,0.7,0.5,0.35")
    p.add_argument("--signals", default=",".join(SIGNALS))
    p.add_argument("--no-extra", action="store_true", help="skip the rows that explain the difference")
    p.add_argument("--sweep", help="instead: our l2_norm and Torch-Pruning over these targets, e.g. 0.9,0.8,0.7")
    p.add_argument("--with-nni", metavar="PYTHON", help="also NNI's L1/L2 norm pruners, run in this interpreter")
    p.add_argument("--tp-importances", default=None,
                   help=f"Torch-Pruning's importances beside its group-L2, of {','.join(TP_IMPORTANCES)}; "
                        "default: all of them, none with --with-nni (its section compares the norm pruners)")
    p.add_argument("--no-write", action="store_true", help="print the section; leave BENCHMARKS.md and the plot alone")
    args = p.parse_args()
    if args.tp_importances is None:
        args.tp_importances = "" if args.with_nni else ",".join(TP_IMPORTANCES)
    unknown = set(filter(None, args.tp_importances.split(","))) - set(TP_IMPORTANCES)
    if unknown:
        p.error(f"--tp-importances: unknown {', '.join(sorted(unknown))} (known: {', '.join(TP_IMPORTANCES)})")
    globals()["ARCH"] = args.arch
    depth = args.arch.removeprefix("resnet").removesuffix("_cifar")
    torch.manual_seed(0)
    t_begin = time.monotonic()
    weights = (DATA / f"resnet{depth}_cifar10.safetensors").read_bytes()
    test = cifar("cifar10_test.npz")
    original = original_model(weights)
    unpruned = accuracy_onnx(to_onnx(original), test)
    with CpuWatch() as watch:
        body, rows = (sweep if args.sweep else compare)(args, weights, test, original)
    lines = [
        f"## ResNet-{depth} / CIFAR-10, no recovery: our "
        + ("" if "taylor" in args.tp_importances and not args.sweep else "data-free ")
        + "signals against Torch-Pruning"
        + (" and NNI" if args.with_nni and not args.sweep else "") + " at the same MACs"
        + (" (sweep)" if args.sweep else ""),
        "",
        f"Machine: {machine()}. {(time.monotonic() - t_begin) / 60:.1f} min in all; other processes kept "
        f"{watch.other:.2f} cores busy on average meanwhile (wall times share the CPU with them).",
        "",
        f"Pretrained ResNet-{depth} (shared data, {unpruned * 100:.2f}% unpruned), no recovery of any kind (not even BatchNorm "
        "re-estimation); top-1 on the full 10,000-image CIFAR-10 test set, every model run the same way (ONNX "
        "Runtime, batch 500; ours: the ONNX file the engine returns). MACs and params kept: FlopCounterMode "
        "total/2 at 1x3x32x32 and the parameter count of the PyTorch module, the same count for both tools.",
        "",
        *body,
        "",
        f"Command: `{command()}`",
    ]
    name = "cifar-vs-torch-pruning" + ("" if args.arch == "resnet56_cifar" else f"-resnet{depth}")
    name += "-nni" if args.with_nni and not args.sweep else ""
    name += "-sweep" if args.sweep else ""
    if args.no_write:
        print("\n".join(lines))
        return
    # every row's figures (and, where there is one, its plan: output channels per convolution) beside the
    # section, under the section's name
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name.replace('-', '_')}{'_quick' if QUICK else ''}.json").write_text(json.dumps(
        {"meta": {"machine": machine(), "command": command(), "unpruned": unpruned, "arch": args.arch},
         "rows": rows}, indent=1))
    write_section(name, "\n".join(lines))


if __name__ == "__main__":
    main()
