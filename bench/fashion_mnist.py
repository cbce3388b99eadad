"""A second network, trained here: a small CNN on Fashion-MNIST, pruned by every signal with each recovery
at macs 0.7 and 0.5 (bench/plots/recovery_fashion_mnist.png); then the bandit against l1_norm after the
same fine-tune, with the channel-steps the bandit's own fine-tune executed.

The network is trained from scratch on the 60,000 shared training images (no download), exported to ONNX
the ordinary way but with BatchNorm kept as nodes (do_constant_folding=False: folded, BatchNorm
re-estimation and bn_scale would have nothing to work on), and handed to the engine as a user would.
Calibration: the first `--calib` training images (labels included); evaluation: the 10,000-image test
set, on the pruned ONNX in ONNX Runtime. The trained model is kept in bench/results/fashion_net.onnx
(committed: 0.6 MB, and training it takes most of an hour on a loaded 2-core machine) so that `--resume`
(fill the missing cells) and `--fresh` (measure every cell anew) measure the same network in a later session.

    .venv/bin/python bench/fashion_mnist.py [--resume|--fresh] [--epochs 3] [--signals ...] [--skip-bandit]
    .venv/bin/python bench/fashion_mnist.py --write-only
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import time
import warnings
from datetime import datetime, timezone

import numpy as np
import recovery_grid as grid
import torch
import torch.nn.functional as F
from common import DATA, QUICK, ROOT, command, load_average, machine, plot_path, write_section
from torch import nn

# A quick run (make bench-quick) keeps its network, cells and plot apart from the full run's (-quick names,
# not committed), so it never overwrites them.
_Q = "-quick" if QUICK else ""
RESULTS = ROOT / "bench" / "results" / f"fashion_mnist{_Q}.json"
BANDIT = ROOT / "bench" / "results" / f"fashion_mnist_bandit{_Q}.json"
MODEL = ROOT / "bench" / "results" / f"fashion_net{_Q}.onnx"
PLOT = plot_path("recovery_fashion_mnist")
EXTRA = ['{"compose": {"measure": "activation_gradient", "reduce": "fisher", "aggregate": "sum", '
         '"normalize": "none", "per_mac": true}}']


class FashionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(block(1, 32), block(32, 32), nn.MaxPool2d(2), block(32, 64), block(64, 64),
                                      nn.MaxPool2d(2), block(64, 128))
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def fashion_slice(name: str, start: int, stop: int | None):  # type: ignore[no-untyped-def]
    """Images start..stop-1 of a shared file, scaled to [0, 1] and standardised with the training set's mean and std."""
    from secateurs.pruning.data import Dataset

    with np.load(DATA / name) as d:
        x = (d["x"][start:stop].astype(np.float32)[:, None] / 255.0 - 0.2860) / 0.3530
        return Dataset(np.ascontiguousarray(x), d["y"][start:stop].astype(np.int64))


def fashion(name: str, n: int | None = None):  # type: ignore[no-untyped-def]
    return fashion_slice(name, 0, n)


def train(train_set, epochs: int) -> nn.Module:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = FashionNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * (len(train_set) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=steps)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(train_set), generator=gen)
        for s in range(0, len(train_set) - 127, 128):
            idx = order[s : s + 128].numpy()
            loss = F.cross_entropy(model(torch.from_numpy(train_set.x[idx])), torch.from_numpy(train_set.y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def to_onnx(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), buf, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"], do_constant_folding=False,
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    return buf.getvalue()


# What the results file says of the network itself (kept by --fresh, which discards only the cells).
TRAINED = ("train_minutes", "train_epochs", "train_images", "parameters", "model_sha256")


def _trained_meta() -> dict:  # type: ignore[type-arg]
    try:
        saved = json.loads(RESULTS.read_text())["meta"]
    except (OSError, ValueError, KeyError):
        return {}
    return {k: saved[k] for k in TRAINED if k in saved}


def _measured_on() -> str | None:
    """The sha256 of the network the results file's cells were measured on, if there is such a file."""
    try:
        return json.loads(RESULTS.read_text())["meta"].get("model_sha256")
    except (OSError, ValueError, KeyError):
        return None


def network(args: argparse.Namespace, meta: dict) -> bytes:  # type: ignore[type-arg]
    """The trained network: reused from MODEL when resuming or measuring afresh (same bytes as the results
    file names), trained otherwise."""
    if (args.resume or args.fresh) and MODEL.exists() and meta.get("model_sha256"):
        data = MODEL.read_bytes()
        if hashlib.sha256(data).hexdigest() == meta["model_sha256"]:
            return data
    train_set = fashion("fashion_mnist_train.npz", args.train_images)
    t0 = time.monotonic()
    model = train(train_set, args.epochs)
    meta["train_minutes"] = (time.monotonic() - t0) / 60
    meta["train_epochs"] = args.epochs
    meta["train_images"] = len(train_set)
    meta["parameters"] = sum(p.numel() for p in model.parameters())
    data = to_onnx(model)
    MODEL.parent.mkdir(parents=True, exist_ok=True)
    MODEL.write_bytes(data)
    meta["model_sha256"] = hashlib.sha256(data).hexdigest()
    return data


# ------------------------------------------------------------------------------ bandit against l1_norm


def bandit_claim(model: bytes, args: argparse.Namespace, test, results: grid.Results) -> None:  # type: ignore[no-untyped-def]
    """At each target: bandit (its scoring is a fine-tune executing a CUCB-chosen subset of channels)
    and l1_norm, each followed by the same supervised fine-tune; and l1_norm given a dense fine-tune as
    long as the bandit's plus that one, so neither has more training epochs. Repeated on `--bandit-slices`
    disjoint slices of the training images (repeats differ in their data, not only their seed)."""
    from secateurs.pruning import PruneSpec, prune

    n, ft = args.bandit_calib, args.bandit_finetune
    for part in range(args.bandit_slices):
        calib = fashion_slice("fashion_mnist_train.npz", part * n, (part + 1) * n)
        for target in (float(t) for t in args.targets.split(",")):
            for signal, epochs, variant in (
                ("bandit", ft, f"bandit ({args.bandit_epochs:g} ep. sparse) + fine-tune {ft:g} ep."),
                ("l1_norm", ft, f"l1_norm + fine-tune {ft:g} ep."),
                ("l1_norm", ft + args.bandit_epochs, f"l1_norm + fine-tune {ft + args.bandit_epochs:g} ep."),
            ):
                label = f"{variant} #{part}"
                if results.done(label, target, "finetune") is not None:
                    continue
                spec = PruneSpec.model_validate({
                    "signal": signal, "target": {"macs": target}, "calibration": {"samples": len(calib)},
                    "recovery": {"method": "finetune", "epochs": epochs, "lr": 0.01, "batch_size": 64,
                                 "precision": "fp32"},  # as measured before recovery.precision existed
                    "signal_options": {"bandit_epochs": args.bandit_epochs}, "measure": {"repeats": 5},
                })
                t0 = time.monotonic()
                r = prune(model, spec, calibration=calib)
                seconds = time.monotonic() - t0
                results.add({"signal": label, "variant": variant, "slice": part, "base_signal": signal,
                             "target": target, "recovery": "finetune", "finetune_epochs": epochs,
                             "macs_kept": r.report["macs_kept"],
                             "accuracy": grid.onnx_accuracy(r.onnx, test, args.threads), "minutes": seconds / 60,
                             "bandit": r.report.get("bandit"), "recovery_info": r.report.get("recovery")})


def bandit_lines(results: grid.Results, args: argparse.Namespace) -> list[str]:
    rows = [r for r in results.rows if "slice" in r]  # cells of one calibration slice each
    if not rows:
        return []
    m = results.meta
    parts = sorted({r["slice"] for r in rows})
    n = m["bandit_calib"]
    lines = [
        "",
        "### Bandit against l1_norm after the same fine-tune",
        "",
        f"Calibration: {len(parts)} disjoint slices of {n} training images with labels (images "
        + ", ".join(f"{p * n}-{(p + 1) * n - 1}" for p in parts) + "), each a repeat of the whole comparison. "
        f"`bandit` scores during a fine-tune of {m['bandit_epochs']:g} epoch(s) over the slice (cross-entropy, "
        "SGD 0.01 momentum 0.9, batch 64) in which every step executes, in each dependency group, only the "
        "channels with the highest upper confidence bound (the rest zeroed at their consumers' inputs), then "
        "prunes the lowest-scored. Every model then gets the same supervised fine-tune (recovery `finetune`: "
        f"{m['bandit_finetune']:g} epoch(s) over the same images, SGD 0.01 cosine, batch 64, float32, after BatchNorm "
        "re-estimation); the last row gives l1_norm a dense fine-tune as many epochs long as the bandit's two "
        "together. Top-1 on the 10,000 test images, pruned ONNX in ONNX Runtime; mean over the slices, then each.",
        "",
        "| target | model | MACs kept | top-1 mean | top-1 per slice | channel-steps executed / dense | minutes |",
        "| ---: | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    groups: dict[tuple[float, str], list[dict]] = {}  # type: ignore[type-arg]
    for r in rows:
        groups.setdefault((r["target"], r["variant"]), []).append(r)
    for (t, variant), rs in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        rs = sorted(rs, key=lambda r: r["slice"])
        b = rs[0].get("bandit")
        steps = (f"{b['channel_steps_executed']} / {b['channel_steps_dense']} ({b['executed_fraction'] * 100:.0f}%)"
                 if b else "-")
        macs = sorted({f"{r['macs_kept']:.3f}" for r in rs})
        mean = sum(r["accuracy"] for r in rs) / len(rs)
        each = " / ".join(f"{r['accuracy'] * 100:.2f}" for r in rs)
        lines.append(f"| {t:g} | {variant} | {', '.join(macs)} | {mean * 100:.2f}% | {each} | {steps} | "
                     f"{sum(r['minutes'] for r in rs) / len(rs):.1f} |")
    lines.append("")
    for t in sorted({r["target"] for r in rows}, reverse=True):
        band = {r["slice"]: r for r in rows if r["target"] == t and r["base_signal"] == "bandit"}
        same = {r["slice"]: r for r in rows if r["target"] == t and r["base_signal"] == "l1_norm"
                and r["finetune_epochs"] == m["bandit_finetune"]}
        both = sorted(set(band) & set(same))
        if not both:
            continue
        bm = sum(band[p]["accuracy"] for p in both) / len(both)
        sm = sum(same[p]["accuracy"] for p in both) / len(both)
        wins = sum(band[p]["accuracy"] >= same[p]["accuracy"] for p in both)
        verdict = "at least as accurate as" if bm >= sm else "**less accurate** than"
        frac = [band[p]["bandit"]["executed_fraction"] for p in both if band[p].get("bandit")]
        text = (f"At macs {t:g}: bandit {bm * 100:.2f}% on average is {verdict} l1_norm {sm * 100:.2f}% after the "
                f"same fine-tune ({wins} of {len(both)} slices at least as accurate)")
        if frac:
            text += f"; its own fine-tune executed {sum(frac) / len(frac) * 100:.0f}% of a dense one's channel-steps"
        lines.append(text + ".")
    return lines


# ------------------------------------------------------------------------------------------ the section


def write(results: grid.Results, bandit: grid.Results, args: argparse.Namespace, signals: list[str]) -> None:
    rows, m = results.rows, results.meta
    targets = [float(t) for t in args.targets.split(",")]
    grid.plot(rows, signals, list(grid.RECOVERIES), m["unpruned"], PLOT,
         "Fashion-MNIST network (trained here): top-1 against MACs kept, per signal and recovery")
    lines = [
        "## Fashion-MNIST, a network trained here: every signal x recovery at macs "
        + " and ".join(f"{t:g}" for t in targets),
        "",
        f"{grid.machines(rows, m)}; torch threads {m['threads']}. Runs started {m['started']} UTC (load average "
        f"{m['load_start']}); section written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC (load average "
        f"{load_average()}). {grid.shared_note(m['load_start'], load_average())}",
        "",
        f"FashionNet (5 conv 3x3 + BatchNorm + ReLU blocks of 32, 32, 64, 64, 128 channels, two max-pools, global "
        f"average pool, linear; {m['parameters']} parameters) trained {m['train_epochs']} epochs on "
        f"{'the ' if m.get('train_images', 60000) == 60000 else 'the first '}{m.get('train_images', 60000):,} "
        f"training images (SGD, one-cycle to 0.1, batch 128) in {m['train_minutes']:.1f} min: "
        f"{m['unpruned'] * 100:.2f}% on the 10,000 test images (ONNX Runtime). Exported to ONNX with BatchNorm "
        "kept as nodes and handed to `secateurs.pruning.prune` as ONNX, default spec otherwise. Calibration and "
        f"recovery: the first {m['calib']} training images (with labels: gradient signals and the bandit's "
        f"fine-tune use them). Budgets, the same for every signal: `distill` = label-free distillation from the "
        f"original, {m['distill_epochs']:g} epochs over those images (SGD 0.01 cosine, T=4, batch 64, float32), after "
        "BatchNorm re-estimation; `reconstruct` = least-squares refit of every layer whose inputs changed, then "
        f"BatchNorm re-estimation; `bandit` scores during a fine-tune of {m['bandit_epochs_grid']:g} epoch(s) "
        "over them.",
        "",
        "Each signal scores and prunes once per target (`prune` with recovery `none`); each recovery runs on a "
        "copy of that pruned model through the engine's own recovery stage, and the copy is exported and "
        "checked like a job's output. Top-1: the exported ONNX in ONNX Runtime on the 10,000 test images. "
        "Minutes: the `prune` call plus that recovery, without the test-set evaluation. `lasso` asks the "
        "engine for the refit itself, so its `none` column is already refit and BatchNorm re-estimated.",
        "",
        *grid.table(rows, signals, targets, list(grid.RECOVERIES), m["unpruned"]),
        "",
        "Best per target: " + "; ".join(grid.best_cells(rows, targets)) + ".",
        "",
        f"![top-1 against MACs kept](bench/plots/{PLOT.name})",
    ]
    gone = grid.missing(rows, signals, targets, list(grid.RECOVERIES))
    if gone:
        lines += ["", "Missing: " + "; ".join(gone) + ". " + args.missing_reason]
    lines += bandit_lines(bandit, args)
    lines += ["", "Commands (the runs that filled the results files; rerunning one with --resume skips the cells "
                  "done): " + "; ".join(f"`{c}`" for c in m.get("commands", []))]
    write_section("fashion-mnist", "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=3, help="training epochs of the network")
    p.add_argument("--train-images", type=int, default=None, help="train on the first N images (default: all 60,000)")
    p.add_argument("--signals", default=None, help="comma-separated; default: every registered signal + EXTRA")
    p.add_argument("--targets", default="0.7,0.5")
    p.add_argument("--recoveries", default=",".join(grid.RECOVERIES))
    p.add_argument("--calib", type=int, default=2000)
    p.add_argument("--distill-epochs", type=float, default=2.0)
    p.add_argument("--bandit-epochs-grid", type=float, default=1.0, help="the bandit's fine-tune in the grid")
    p.add_argument("--bandit-calib", type=int, default=10000, help="training images for the bandit claim")
    p.add_argument("--bandit-epochs", type=float, default=1.0, help="the bandit's fine-tune in the claim")
    p.add_argument("--bandit-finetune", type=float, default=1.0, help="the fine-tune after pruning in the claim")
    p.add_argument("--bandit-slices", type=int, default=3,
                   help="repeats of the claim, each on its own slice of --bandit-calib training images")
    p.add_argument("--skip-grid", action="store_true")
    p.add_argument("--skip-bandit", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    grid.run_arguments(p, "measure every cell anew (the results files' cells are discarded) on the kept "
                          "network, training one only when there is none")
    p.add_argument("--write-only", action="store_true")
    p.add_argument("--missing-reason", default="", help="why cells are missing, said under the table")
    args = p.parse_args()
    grid.settle_run(p, args, RESULTS)
    torch.set_num_threads(args.threads)
    signals = [grid.parse_signal(s) for s in args.signals.split(";" if ";" in args.signals else ",")] \
        if args.signals else [*grid.registered_signals(), *(grid.parse_signal(s) for s in EXTRA)]
    labels = [grid.signal_label(s) for s in signals]
    if args.write_only:
        write(grid.Results(RESULTS, True, {}), grid.Results(BANDIT, True, {}), args, labels)
        return
    meta = {"machine": machine(("pruning", "bench")), "threads": args.threads, "calib": args.calib,
            "distill_epochs": args.distill_epochs, "bandit_epochs_grid": args.bandit_epochs_grid,
            "commands": [command()]}
    if args.run:
        meta["run"] = args.run
    if args.fresh:
        # Results merges the cells on disk into every save: they go first. The network's facts stay on disk
        # (with the run, if any), so an attempt cut from here on still finds the network to reuse.
        trained = _trained_meta()
        meta |= trained
        BANDIT.unlink(missing_ok=True)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        tmp = RESULTS.with_suffix(".fresh.tmp")
        tmp.write_text(json.dumps({"meta": {**trained, **({"run": args.run} if args.run else {})},
                                   "rows": []}, indent=1))
        tmp.replace(RESULTS)
    results = grid.Results(RESULTS, args.resume, meta)
    started, load = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), load_average()
    results.meta.setdefault("started", started)
    results.meta.setdefault("load_start", load)
    model = network(args, results.meta)
    if _measured_on() not in (None, results.meta["model_sha256"]):
        # The cells on disk were measured on another network (its file is gone or it was retrained):
        # Results merges the rows on disk into every save, so they go before anything is added.
        for path in (RESULTS, BANDIT):
            path.unlink(missing_ok=True)
        trained = {k: results.meta[k] for k in TRAINED if k in results.meta}
        results = grid.Results(RESULTS, False, {**meta, **trained, "started": started, "load_start": load})
    test = fashion("fashion_mnist_test.npz")
    if "unpruned" not in results.meta or not args.resume:
        results.meta["unpruned"] = grid.onnx_accuracy(model, test, args.threads)
    results.save()
    if not args.skip_grid:
        calib = fashion("fashion_mnist_train.npz", args.calib)
        base = {"calibration": {"samples": args.calib},
                "recovery": {"epochs": args.distill_epochs, "lr": 0.01, "batch_size": 64, "temperature": 4,
                             "precision": "fp32"},  # as measured before recovery.precision existed
                "signal_options": {"bandit_epochs": args.bandit_epochs_grid}, "measure": {"repeats": 5}}
        grid.run_grid(model=model, arch=None, calib=calib, test=test, signals=signals,
                 targets=[float(t) for t in args.targets.split(",")], recoveries=args.recoveries.split(","),
                 base_spec=base, results=results, threads=args.threads)
    bandit = grid.Results(BANDIT, args.resume, {"bandit_calib": args.bandit_calib, "bandit_epochs": args.bandit_epochs,
                                           "bandit_finetune": args.bandit_finetune,
                                           "model_sha256": results.meta["model_sha256"]})
    if bandit.saved_meta.get("model_sha256", results.meta["model_sha256"]) != results.meta["model_sha256"]:
        bandit = grid.Results(BANDIT, False, bandit.meta)
    if not args.skip_bandit:
        bandit_claim(model, args, test, bandit)
        bandit.save()
    else:
        bandit = grid.Results(BANDIT, True, {})  # as measured by the run that did it
    results.meta["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    results.meta["load_end"] = load_average()
    results.save()
    write(results, bandit, args, labels)


if __name__ == "__main__":
    main()
