"""ResNet-56 / CIFAR-10: every registered signal x recovery {none, bn_recalibrate, reconstruct, distill} at
macs 0.7 and 0.5; top-1 of the pruned ONNX on the full 10,000-image test set, minutes per cell, and a plot
of top-1 against MACs kept per signal (bench/plots/recovery_resnet56.png).

The shared pretrained weights (93.39% unpruned) go to `secateurs.pruning.prune` as a user's safetensors
with arch resnet56_cifar. Calibration and recovery use the 10,000 shared training images: signals, BatchNorm
re-estimation and the least-squares refit read the first `--samples` of them; distillation (no labels)
runs `--epochs` passes over all 10,000 (SGD 0.01 cosine, T=4, flips and crops, batch 128). Each
(signal, target) is scored once and every recovery applied to a copy (see bench/recovery_grid.py). Cells go
to bench/results/recovery_resnet56.json as they finish; `--resume` skips those already there; `--fresh`
discards them first (otherwise a run keeps the cells on disk it does not measure itself).

    .venv/bin/python bench/recovery_table.py [--resume] [--epochs 1] [--signals l1_norm,...] [--targets 0.7,0.5]
    .venv/bin/python bench/recovery_table.py --write-only    # the section and plot from the JSON file
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

import recovery_grid as grid
import torch
from common import (
    DATA,
    ROOT,
    cifar,
    cifar_test,
    cifar_test_text,
    command,
    load_average,
    machine,
    write_section,
)

RESULTS = ROOT / "bench" / "results" / "recovery_resnet56.json"
PLOT = ROOT / "bench" / "plots" / "recovery_resnet56.png"
ARCH = "resnet56_cifar"
# The taxonomy beyond the named presets: Theis et al.'s FLOP-aware Fisher, composed.
EXTRA = ['{"compose": {"measure": "activation_gradient", "reduce": "fisher", "aggregate": "sum", '
         '"normalize": "none", "per_mac": true}}']


def base_spec(args: argparse.Namespace) -> dict:
    return {
        "calibration": {"samples": args.samples},
        "recovery": {"epochs": args.epochs, "lr": 0.01, "batch_size": 128, "temperature": 4,
                     # float32 as the cells measured before recovery.precision existed (its auto is bf16 where
                     # the CPU has it natively): every cell of the table trained alike, on any machine
                     "precision": "fp32"},
        "signal_options": {"bandit_epochs": args.bandit_epochs},
        "measure": {"repeats": 5},
    }


def write(results: grid.Results, args: argparse.Namespace, signals: list[str]) -> None:
    rows, meta = results.rows, results.meta
    targets = [float(t) for t in args.targets.split(",")]
    unpruned = meta["unpruned"]
    grid.plot(rows, signals, list(grid.RECOVERIES), unpruned, PLOT,
         "ResNet-56 / CIFAR-10: top-1 against MACs kept, per signal and recovery")
    bandit = [r for r in rows if r["signal"] == "bandit" and r.get("signal_report", {}).get("bandit")]
    lines = [
        "## ResNet-56 / CIFAR-10: every signal x recovery at macs 0.7 and 0.5",
        "",
        f"{grid.machines(rows, meta)}; torch threads {meta['threads']}, ONNX Runtime {meta['threads']} threads for "
        f"accuracy. Runs started {meta['started']} UTC (load average {meta['load_start']}); section written "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC (load average {load_average()}). "
        f"{grid.shared_note(meta['load_start'], load_average())}",
        "",
        f"Pretrained ResNet-56 (shared weights, {unpruned * 100:.2f}% unpruned in ONNX Runtime) handed to "
        "`secateurs.pruning.prune` as safetensors with arch resnet56_cifar, default spec otherwise (scope global, "
        "round_to auto, layer_floor 0.1). Data: the 10,000 shared CIFAR-10 training images (with labels: gradient "
        f"signals and the bandit's fine-tune use them); signals, BatchNorm re-estimation and the least-squares "
        f"refit read the first {meta['samples']}. Budgets, the same for every signal: `distill` = refit-free "
        f"label-free distillation from the original, {meta['epochs']:g} epoch(s) over all 10,000 images (SGD "
        "0.01 cosine, momentum 0.9, T=4, flips and 4-pixel crops, batch 128, float32), after BatchNorm "
        "re-estimation; "
        f"`reconstruct` = least-squares refit of every layer whose inputs changed, then BatchNorm "
        f"re-estimation; `bandit` scores during a fine-tune of {meta['bandit_epochs']:g} epoch(s) over its "
        f"{meta['samples']} calibration images (batch 128).",
        "",
        "Each signal scores and prunes once per target (`prune` with recovery `none`); each recovery then runs "
        "on a copy of that pruned model through the engine's own recovery stage, and the copy is exported and "
        "checked against PyTorch in ONNX Runtime like a job's output. Top-1: the exported ONNX in ONNX "
        f"Runtime on {cifar_test_text()}. Minutes: the `prune` call (import, scoring, plan, export, "
        "verify, latency) plus that recovery, without the test-set evaluation. `lasso` asks the engine for "
        "the refit itself, so its `none` column is already refit and BatchNorm re-estimated.",
        "",
        *grid.table(rows, signals, targets, list(grid.RECOVERIES), unpruned),
        "",
        "Best per target: " + "; ".join(grid.best_cells(rows, targets)) + ".",
        "",
        f"![top-1 against MACs kept](bench/plots/{PLOT.name})",
    ]
    if bandit:
        b = bandit[0]["signal_report"]["bandit"]
        lines += ["", f"Bandit's scoring fine-tune (macs {bandit[0]['target']:g}): {b['steps']} steps, "
                      f"{b['channel_steps_executed']} channel-steps executed against {b['channel_steps_dense']} "
                      f"for a dense one ({b['executed_fraction'] * 100:.0f}%)."]
    gone = grid.missing(rows, signals, targets, list(grid.RECOVERIES))
    if gone:
        lines += ["", "Missing: " + "; ".join(gone) + ". " +
                  meta.get("missing_reason", "")]
    lines += ["", "Commands (several runs, each with the recoveries it names, filled the one results file; "
                  "rerunning any of them with --resume skips the cells done): " + "; ".join(f"`{c}`" for c in meta["commands"])]
    write_section("recovery-resnet56", "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--signals", default=None, help="comma-separated; default: every registered signal + EXTRA")
    p.add_argument("--targets", default="0.7,0.5")
    p.add_argument("--recoveries", default=",".join(grid.RECOVERIES))
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--epochs", type=float, default=1.0, help="distillation epochs over the 10k images")
    p.add_argument("--bandit-epochs", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=2)
    grid.run_arguments(p, "start the results file anew (its cells are discarded)")
    p.add_argument("--stop-at", default=None, help="HH:MM UTC: start no new (signal, target) after this")
    p.add_argument("--write-only", action="store_true")
    p.add_argument("--missing-reason", default="")
    p.add_argument("--results", default=str(RESULTS), help="the JSON file of cells")
    p.add_argument("--no-write", action="store_true", help="measure only: leave BENCHMARKS.md and the plot alone")
    args = p.parse_args()
    grid.settle_run(p, args, Path(args.results))
    torch.set_num_threads(args.threads)
    signals = [grid.parse_signal(s) for s in args.signals.split(";" if ";" in args.signals else ",")] \
        if args.signals else [*grid.registered_signals(), *(grid.parse_signal(s) for s in EXTRA)]
    labels = [grid.signal_label(s) for s in signals]
    targets = [float(t) for t in args.targets.split(",")]
    meta = {"machine": machine(("pruning", "bench")), "threads": args.threads, "samples": args.samples,
            "epochs": args.epochs, "bandit_epochs": args.bandit_epochs, "commands": [command()]}
    if args.run:
        meta["run"] = args.run
    if args.missing_reason:
        meta["missing_reason"] = args.missing_reason
    if args.write_only:
        results = grid.Results(Path(args.results), True,
                               {"missing_reason": args.missing_reason} if args.missing_reason else {})
        write(results, args, labels)
        return
    if args.fresh:  # without it, a run's saves merge the cells already on disk into the file
        Path(args.results).unlink(missing_ok=True)
    results = grid.Results(Path(args.results), args.resume, meta)
    results.meta.setdefault("started", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"))
    results.meta.setdefault("load_start", load_average())
    weights = (DATA / "resnet56_cifar10.safetensors").read_bytes()
    calib, test = cifar("cifar10_train_subset10k.npz"), cifar_test()
    if "unpruned" not in results.meta:
        from secateurs.pruning import onnx_tools
        from secateurs.pruning.loading import load_model

        loaded = load_model(weights, arch=ARCH)
        data = onnx_tools.export(loaded.module.eval(), torch.zeros(loaded.input_shape), input_name=loaded.input_name,
                                 output_names=loaded.output_names,
                                 dynamic_axes={loaded.input_name: {0: "batch"}, loaded.output_names[0]: {0: "batch"}},
                                 opset=17)
        results.meta["unpruned"] = grid.onnx_accuracy(data, test, args.threads)
        results.save()
    stop_at = None
    if args.stop_at:
        hh, mm = (int(v) for v in args.stop_at.split(":"))
        now = datetime.now(timezone.utc)
        stop_at = now.replace(hour=hh, minute=mm, second=0).timestamp()
    grid.run_grid(model=weights, arch=ARCH, calib=calib, test=test, signals=signals, targets=targets,
             recoveries=args.recoveries.split(","), base_spec=base_spec(args), results=results,
             threads=args.threads, stop_at=stop_at)
    results.meta["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    results.meta["load_end"] = load_average()
    results.save()
    if not args.no_write:
        write(results, args, labels)


if __name__ == "__main__":
    main()
