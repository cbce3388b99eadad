"""CIFAR ResNets (ResNet-56 by default, `--arch resnet20_cifar` etc.): our signals against Torch-Pruning's
own importances at the same MACs and the same recovery, top-1 on the full 10,000-image test set.

Ours: `secateurs.pruning.prune` on the shared pretrained safetensors (arch resnet56_cifar), each data-free
signal, default spec otherwise (scope global, round_to auto, layer_floor 0.1). Torch-Pruning: called
directly (`tp.pruner.BasePruner`, `tp.importance.GroupMagnitudeImportance(p=2)`, iterative_steps=1,
global and local) on the same model (`secateurs.pruning.zoo.build` + the same weights, option-A shortcut
through `CUSTOM_PRUNERS`, `linear` ignored), its pruning_ratio bisected until its MACs land at the MACs of
our counterpart, l2_norm; and, global, its other importances (`--tp-importances`): `BNScaleImportance`,
`GroupTaylorImportance` (gradients of the cross-entropy on the first 512 shared training images, the
images our own `taylor` signal scores with; that row is added beside it) and `FPGMImportance`, each
bisected to the same MACs. MACs are counted the same way for both (FlopCounterMode total / 2 at
1x3x32x32, on the PyTorch module).
Recovery (`--recoveries`, default none,bn_recalibrate; also distill): every row, ours and Torch-Pruning's,
gets each recovery, a top-1 column each, with the same budget on both sides. Ours: the engine's own
recovery stage on a copy of the pruned model (bench/recovery_grid.py's `recover_copy`: what a job with
that `recovery.method` runs); Torch-Pruning's pruned module: the same functions of
`secateurs.pruning.recovery` with the same arguments. bn_recalibrate: BatchNorm statistics re-estimated on
the first 512 of the 10,000 shared training images (the same images for both); distill: that, then
label-free distillation from the unpruned model over the 10,000 images, `--distill-epochs` (0.5) epochs,
the recipe of bench/cifar_recovery.py (SGD 0.01 cosine, T=4, flips and crops, batch 128).
Every model is evaluated the same way: exported to ONNX (ours: the file the engine returns, or the
recovered copy's export) and run in ONNX Runtime, batch 500. Extra rows explain the difference: the same
ranking without our coupling count (Torch-Pruning's ranking), round_to, per_mac, aimed at exactly
Torch-Pruning's MACs. The rows go to bench/results/<section name>.json beside the section, the plot (top-1
against MACs kept, a panel per recovery) to bench/plots/cifar_vs_torch_pruning_<arch>.png.
`--with-nni PYTHON` adds NNI's L1/L2 norm pruners (on the first convolution of every residual block) with
its ModelSpeedup at the same MACs, run by bench/nni_prune.py in PYTHON, an interpreter with NNI (`make
nni-venv`); that run writes a section of its own (-nni), as NNI's ratio search takes several minutes per
target. NNI's models come back as ONNX from that interpreter, so they get no recovery (`-` in those
columns). For ResNet-56 the section also quotes DepGraph's published figure (full fine-tuning; quoted, not
measured).
`--sweep` instead writes top-1 against MACs over a range of targets, without recovery, to a section of its
own, with a plot (bench/plots/cifar_sweep_resnet56.png).

    .venv/bin/python bench/cifar_vs_torch_pruning.py [--arch resnet56_cifar] [--targets 0.8,0.7,0.5,0.35]
        [--no-extra] [--tp-importances bn_scale,taylor,fpgm] [--recoveries none,bn_recalibrate,distill]
        [--distill-epochs 0.5] [--with-nni .nni-venv/bin/python]
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
    cifar_test,
    cifar_test_text,
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
# The recoveries a row can get, each the same for ours and Torch-Pruning's; BatchNorm re-estimation reads the
# first CALIB images of TRAIN, distillation all of them with bench/cifar_recovery.py's recipe.
RECOVERIES = ("none", "bn_recalibrate", "distill")
TRAIN = "cifar10_train_subset10k.npz"
DISTILL_LR, DISTILL_BATCH, DISTILL_T = 0.01, 128, 4.0
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
    return {"onnx": result.onnx, "result": result, "spec": spec, "macs_kept": macs(result.model, SHAPE) / base_macs,
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
    model = best["model"]
    return {**best, "onnx": to_onnx(model), "params_kept": params(model) / base_params, "channels": channels(model),
            "search_seconds": time.monotonic() - t_search}


class Recoveries:
    """The recoveries every row gets, the same budget for both tools. Ours run through the engine's recovery
    stage on a copy of the pruned model (`recover_copy`, as bench/recovery_grid.py does: the code a job with
    that `recovery.method` runs); Torch-Pruning's module through the functions that stage calls, with the
    arguments it passes them. Each recovered model is exported and evaluated like every other row."""

    def __init__(self, names: list[str], epochs: float, original: torch.nn.Module, weights: bytes, test) -> None:  # type: ignore[no-untyped-def]
        from secateurs.pruning.loading import load_model

        self.names, self.epochs, self.original, self.test = names, epochs, original, test
        recovering = any(n != "none" for n in names)
        self.train = cifar(TRAIN) if recovering else None
        self.loaded = load_model(weights, arch=ARCH) if recovering else None

    def ours(self, r: dict) -> tuple[dict[str, float], dict[str, float]]:
        """Top-1 and recovery seconds per recovery of one of our results (`ours()`'s dict). The pruning
        spec itself stays as it was (recovery none): the recovery's settings go on the copy's spec only."""
        from recovery_grid import kept_from_report, recover_copy
        from secateurs.pruning.spec import DataRef, Recovery

        result = r["result"]
        spec = r["spec"].model_copy(update={"calibration": DataRef(samples=CALIB),
                                            "recovery": Recovery(epochs=self.epochs, lr=DISTILL_LR,
                                                                 batch_size=DISTILL_BATCH, temperature=DISTILL_T)})
        top1, seconds = {}, {}
        for name in self.names:
            if name == "none":
                data, seconds[name] = result.onnx, 0.0
            else:
                data, _, seconds[name] = recover_copy(result.model, self.original, kept_from_report(result.report),
                                                      self.train, spec, name, self.loaded)
            top1[name] = accuracy_onnx(data, self.test)
        return top1, seconds

    def torch_pruning(self, r: dict) -> tuple[dict[str, float], dict[str, float]]:
        """The same for one of Torch-Pruning's results (`torch_pruning()`'s dict): what `pipeline._recover`
        does, on a copy of its module: BatchNorm re-estimated on the first CALIB images (batches of 64),
        then, for distill, `recovery.train` from the unpruned model over all of TRAIN, seed 0."""
        from secateurs.pruning import recovery

        top1, seconds = {}, {}
        for name in self.names:
            t0 = time.monotonic()
            if name == "none":
                data = r["onnx"]
            else:
                net = copy.deepcopy(r["model"])
                torch.manual_seed(0)
                recovery.bn_recalibrate(net, self.train, samples=CALIB, device="cpu")
                if name == "distill":
                    recovery.train(net, self.train, teacher=self.original, epochs=self.epochs, lr=DISTILL_LR,
                                   batch_size=DISTILL_BATCH, device="cpu", temperature=DISTILL_T)
                data = to_onnx(net)
            seconds[name] = time.monotonic() - t0 if name != "none" else 0.0
            top1[name] = accuracy_onnx(data, self.test)
        return top1, seconds

    def describe(self) -> str:
        """The section's sentence on the budget."""
        if self.names == ["none"]:
            return ("No recovery on either side: every row, ours and Torch-Pruning's, has the same budget (none), "
                    "and the scores come from the same pretrained weights.")
        steps = round(self.epochs * -(-len(self.train) // DISTILL_BATCH))
        what = {
            "none": "`none`: the pruned model as it comes",
            "bn_recalibrate": f"`bn_recalibrate`: BatchNorm statistics re-estimated on the first {CALIB} of the "
                              f"{len(self.train):,} shared training images, batches of 64, no labels, no weight "
                              "changed",
            "distill": f"`distill`: BatchNorm re-estimated on the same {CALIB} images, then label-free "
                       f"distillation from the unpruned model over the {len(self.train):,} shared training images, "
                       f"{self.epochs:g} epochs ({steps} steps of batch {DISTILL_BATCH}), SGD lr {DISTILL_LR} "
                       f"(momentum 0.9, Nesterov, weight decay 5e-4) on a cosine schedule, temperature "
                       f"{DISTILL_T:g}, random flips and 4-pixel crops, seed 0 (bench/cifar_recovery.py's recipe)",
        }
        return ("Recovery, the same budget for every row, ours and Torch-Pruning's, one top-1 column each: "
                + "; ".join(what[n] for n in self.names) + f". The same {CALIB} (and {len(self.train):,}) images "
                "for both tools. Ours: the engine's own recovery stage (`pipeline._recover`, what a job with that "
                "`recovery.method` runs) on a copy of the pruned model, exported and checked as a job's; "
                "Torch-Pruning's pruned module: the same functions of `secateurs.pruning.recovery` ("
                + ("`bn_recalibrate`, `train`" if "distill" in self.names else "`bn_recalibrate`")
                + ") with the same arguments, then exported.")


def compare(args, weights: bytes, test, original: torch.nn.Module, unpruned: float) -> tuple[list[str], list[dict]]:  # type: ignore[no-untyped-def]
    from secateurs.pruning.errors import SpecError

    base_macs, base_params = macs(original, SHAPE), params(original)
    convs = len(channels(original))
    notes: list[str] = []
    recoveries = Recoveries(args.recoveries.split(","), args.distill_epochs, original, weights, test)
    recs = recoveries.names
    rows = [{"target": "-", "method": "unpruned", "macs_kept": 1.0, "params_kept": 1.0,
             "top1": {"none": unpruned}, "recovery_seconds": {}, "time": ""}]

    def add(row: dict) -> dict:
        for key in ("onnx", "model", "result", "spec"):
            row.pop(key, None)
        rows.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                          if k != "channels"}), flush=True)
        return row

    def ours_row(target: float, label: str, spec: dict, calib=None, series: str | None = None) -> dict:  # type: ignore[no-untyped-def]
        r = ours(weights, {"target": {"macs": target}, **spec}, base_macs, base_params, calib)
        top1, seconds = recoveries.ours(r)
        return add({"target": target, "method": f"secateurs {label}", "top1": top1, "recovery_seconds": seconds,
                    "time": f"{r['seconds']:.1f} ({r['core_seconds']:.1f})", **r,
                    **({"series": series} if series else {})})

    def tp_row(target: float, r: dict, method: str, time_text: str, series: str) -> dict:
        top1, seconds = recoveries.torch_pruning(r)
        return add({"target": target, "method": method, "top1": top1, "recovery_seconds": seconds,
                    "time": time_text, **r, "series": series})

    importances = [i for i in args.tp_importances.split(",") if i]
    calib = cifar(TRAIN, CALIB) if "taylor" in importances else None
    grads, grad_seconds = gradients(original, calib) if calib is not None else (None, 0.0)
    for target in (float(t) for t in args.targets.split(",")):
        first = len(rows)
        by_signal = {s: ours_row(target, s, {"signal": s}, series=f"secateurs {s}") for s in args.signals.split(",")}
        if calib is not None:  # beside Torch-Pruning's Taylor: ours, from the same images
            ours_row(target, f"taylor ({CALIB} calibration images with labels)",
                     {"signal": "taylor", "calibration": {"samples": CALIB}}, calib, series="secateurs taylor")
        goal = by_signal[COUNTERPART]["macs_kept"] if COUNTERPART in by_signal else target
        tp_rows = {}
        for global_pruning in (True, False):
            r = torch_pruning(original, goal, global_pruning, base_macs, base_params)
            tp_rows[global_pruning] = tp_row(
                target, r, f"Torch-Pruning group-L2, global_pruning={global_pruning} (pruning_ratio {r['ratio']:.3f})",
                f"{r['seconds']:.1f} (search {r['search_seconds']:.0f})",
                f"Torch-Pruning group-L2, {'global' if global_pruning else 'local'}")
        for name in importances:
            cls, label = TP_IMPORTANCES[name]
            r = torch_pruning(original, goal, True, base_macs, base_params, cls,
                              grads if name == "taylor" else None)
            extra = f"; gradients {grad_seconds:.1f}" if name == "taylor" else ""
            tp_row(target, r, f"Torch-Pruning {label} (`{cls}`), global_pruning=True (pruning_ratio {r['ratio']:.3f})",
                   f"{r['seconds']:.1f} (search {r['search_seconds']:.0f}{extra})", f"Torch-Pruning {label}")
        if args.with_nni:
            for which in ("l1", "l2"):
                r = nni_row(args.with_nni, which, goal, test)
                if "error" in r:
                    notes.append(r["error"])
                    break
                # NNI's pruned model exists only as ONNX from its own interpreter: no recovery for it
                top1 = {"none": r.pop("accuracy")}
                tp_rows[which] = add({"target": target, **r, "top1": top1, "recovery_seconds": {},
                                      "series": f"NNI {which.upper()}"})
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
                try:
                    ours_row(target, f"{COUNTERPART}, {label}", {"signal": COUNTERPART, **spec})
                except SpecError as exc:  # e.g. round_to=16 at a deep target: the engine refuses the plan
                    notes.append(f"{COUNTERPART}, {label} at {target}: no row, the engine refused it: {exc}")
        for row in rows[first:]:
            row["differ"] = str(differ(row["channels"], tp_rows[True]["channels"]))
    if args.with_nni:
        notes.append("NNI's pruners mask the first convolution of every residual block (the block's inner "
                     "channels) at one sparse_ratio, and ModelSpeedup removes them: NNI's mask propagation does "
                     "not pass the option-A shortcut (a custom channel-select module), so the channels a residual "
                     "add ties together stay whole (with every convolution masked, the two sides of the add came "
                     "out of ModelSpeedup at different widths). Torch-Pruning and ours prune those too.")
        if any(n != "none" for n in recs):
            notes.append("NNI's rows get no recovery (`-`): its pruned model comes back from NNI's own interpreter "
                         "as ONNX only, not as a module the recovery functions could train.")
    else:
        notes.append("NNI's L1/L2 norm pruners are compared in a run of their own (`--with-nni PYTHON`, its own "
                     "section; `make bench` runs it after `make nni-venv`).")
    recovering = [n for n in recs if n != "none"]
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
            + " The scores come from the same pretrained weights on both sides.",
        ] if importances else []),
        "",
        recoveries.describe(),
        "",
        "Wall time: ours = the whole `prune` call (import, analyse, score, plan with its measured "
        "attempts, export, ONNX check, 3-repeat latency), in brackets analyse+score+plan; Torch-Pruning = "
        "building the pruner and `step()` at the final pruning_ratio, in brackets the whole ratio search; NNI "
        "(when run) = masking and ModelSpeedup at the final sparse_ratio, in brackets its search (secant steps "
        "on sparse_ratio, each a full prune and speed-up, until the MACs are within 0.005 of our l2_norm's)."
        + (f" Recovery wall time: {' / '.join(recovering)}{', in that order' if len(recovering) > 1 else ''}, each "
           "from the pruned model to the recovered model's ONNX (ours: also its ONNX check, as in a job), the evaluation not included."
           if recovering else ""),
        "",
        "| target | method | MACs kept | params kept | " + " | ".join(f"top-1, {n}" for n in recs)
        + " | channels != TP | wall time of pruning (s) |" + (" recovery wall time (s) |" if recovering else ""),
        "| ---: | --- | ---: | ---: | " + "---: | " * len(recs) + "---: | ---: |" + (" ---: |" if recovering else ""),
    ]
    for r in rows:
        top1 = " | ".join(f"{r['top1'][n] * 100:.2f}%" if n in r["top1"] else "-" for n in recs)
        spent = " / ".join(f"{r['recovery_seconds'][n]:.1f}" for n in recovering if n in r["recovery_seconds"])
        lines.append(f"| {r['target']} | {r['method']} | {r['macs_kept']:.4f} | {r['params_kept']:.3f} | {top1} "
                     f"| {r.get('differ', '')} | {r['time']} |" + (f" {spent} |" if recovering else ""))
    if ARCH == "resnet56_cifar":
        d = DEPGRAPH
        quoted = " | ".join(["-"] * (len(recs) - 1) + [f"{d['pruned']:.2f}% (full training)"])
        lines.append(f"| {1 / d['speedup']:.2f} ({d['speedup']}x) | *quoted, not measured:* DepGraph group-sparsity "
                     f"pruner + full training (Fang et al., CVPR 2023; their ResNet-56 at {d['base']}% unpruned; MACs kept "
                     f"= 1 / their {d['speedup']}x speed-up), [Torch-Pruning 1.6.0 README]({d['source']}) | {1 / d['speedup']:.4f} | - | {quoted} | - | - |"
                     + (" - |" if recovering else ""))
    # the NNI run writes a section of its own: its plot too, so it never replaces the full run's
    path = plot_path(f"cifar_vs_torch_pruning_{ARCH.removesuffix('_cifar')}" + ("_nni" if args.with_nni else ""))
    if not args.no_write:
        plot_compare(rows, recs, unpruned, path)
    lines += ["", plot_link(path, "top-1 against MACs kept, ours and Torch-Pruning, a panel per recovery")]
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


def sweep(args, weights: bytes, test, original: torch.nn.Module, unpruned: float) -> tuple[list[str], list[dict]]:  # type: ignore[no-untyped-def]
    """Top-1 against MACs kept over a range of targets: is one single point representative?"""
    base_macs, base_params = macs(original, SHAPE), params(original)
    lines = [
        f"Top-1 over a range of targets: our {COUNTERPART} (default spec; round_to=1; without the coupling count, "
        f"i.e. Torch-Pruning's ranking) against Torch-Pruning's global group-L2 bisected to the MACs of our "
        f"{COUNTERPART} (default); no recovery; {cifar_test_text()}, ONNX Runtime. Each cell: MACs kept / top-1.",
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
        plot_sweep(columns, points, unpruned, path)
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


def plot_compare(rows: list[dict], recoveries: list[str], unpruned: float, path: Path) -> None:
    """Top-1 against MACs kept, a panel per recovery, a line per signal or importance (the rows that name a
    series: not the rows that explain the difference), ours solid, the peers dashed."""
    plt = pyplot()
    series = list(dict.fromkeys(r["series"] for r in rows if "series" in r))
    fig, axes = plt.subplots(1, len(recoveries), figsize=(6.2 * len(recoveries), 5.6), sharey=True, squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for ax, rec in zip(axes[0], recoveries, strict=True):
        for i, name in enumerate(series):
            pts = sorted((r["macs_kept"], r["top1"][rec] * 100) for r in rows
                         if r.get("series") == name and rec in r["top1"])
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="osD^v<>p"[i % 8], color=colours[i % 10], lw=1.4, ms=5, label=name,
                        ls="-" if name.startswith("secateurs") else "--")
        ax.plot([1.0], [unpruned * 100], marker="*", color="black", ms=13, ls="none", label="unpruned")
        ax.set_title(f"recovery: {rec}")
        ax.set_xlabel("MACs kept (fraction of the original)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("top-1 on the CIFAR-10 test set (%)")
    shown: dict[str, object] = {}  # every panel's lines, once each (NNI's are in the `none` panel only)
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            shown.setdefault(label, handle)
    labels = list(shown)
    fig.legend(list(shown.values()), labels, loc="lower center", ncol=min(len(labels), 4), fontsize=9, frameon=False)
    depth = ARCH.removeprefix("resnet").removesuffix("_cifar")
    fig.suptitle(f"ResNet-{depth} / CIFAR-10: ours against Torch-Pruning at the same MACs and the same recovery")
    fig.tight_layout(rect=(0, 0.04 + 0.03 * -(-len(labels) // 4), 1, 1))
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
    p.add_argument("--recoveries", default=None,
                   help=f"comma-separated, of {','.join(RECOVERIES)}: each row gets each, ours and Torch-Pruning's "
                        "alike, a top-1 column each (default none,bn_recalibrate; --sweep: none only)")
    p.add_argument("--distill-epochs", type=float, default=0.5,
                   help=f"epochs of distill over the {TRAIN} images (default 0.5)")
    p.add_argument("--no-write", action="store_true", help="print the section; leave BENCHMARKS.md and the plot alone")
    args = p.parse_args()
    if args.sweep and args.recoveries not in (None, "none"):
        p.error("--sweep measures without recovery: leave out --recoveries")
    args.recoveries = args.recoveries or ("none" if args.sweep else "none,bn_recalibrate")
    recs = args.recoveries.split(",")
    if set(recs) - set(RECOVERIES) or len(set(recs)) != len(recs):
        p.error(f"--recoveries: each of {', '.join(RECOVERIES)} at most once, got {args.recoveries!r}")
    if args.distill_epochs <= 0:
        p.error("--distill-epochs must be above 0")
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
    test = cifar_test()
    original = original_model(weights)
    unpruned = accuracy_onnx(to_onnx(original), test)
    with CpuWatch() as watch:
        body, rows = (sweep if args.sweep else compare)(args, weights, test, original, unpruned)
    recovering = recs != ["none"]
    lines = [
        f"## ResNet-{depth} / CIFAR-10, {'recovery ' + ', '.join(recs) if recovering else 'no recovery'}: our "
        + ("" if "taylor" in args.tp_importances and not args.sweep else "data-free ")
        + "signals against Torch-Pruning"
        + (" and NNI" if args.with_nni and not args.sweep else "") + " at the same MACs"
        + (" and the same recovery" if recovering else "")
        + (" (sweep)" if args.sweep else ""),
        "",
        f"Machine: {machine()}. {(time.monotonic() - t_begin) / 60:.1f} min in all; other processes kept "
        f"{watch.other:.2f} cores busy on average meanwhile (wall times share the CPU with them).",
        "",
        f"Pretrained ResNet-{depth} (shared data, {unpruned * 100:.2f}% unpruned), "
        + (f"each row pruned once and then recovered each way ({', '.join(recs)}), the same budget for both tools "
           "(below)" if recovering else "no recovery of any kind (not even BatchNorm re-estimation)")
        + f"; top-1 on {cifar_test_text()}, every model run the same way (ONNX Runtime, batch "
        "500; ours: the ONNX file the engine returns, or its recovered copy's export). MACs and params kept: FlopCounterMode "
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
        {"meta": {"machine": machine(), "command": command(), "unpruned": unpruned, "arch": args.arch,
                  "recoveries": recs, "distill_epochs": args.distill_epochs if "distill" in recs else None},
         "rows": rows}, indent=1))
    write_section(name, "\n".join(lines))


if __name__ == "__main__":
    main()
