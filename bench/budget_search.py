"""The budget search on ResNet-56 / CIFAR-10: `--max-drop 1` and no target, label-free (issue: fidelity).

One job as a user submits it: the pretrained ResNet-56 from the shared safetensors, calibration images from the
shared 10k training subset (no labels), `fidelity.max_drop` 1 (at most one point of top-1 agreement with the
original) and no size target. The engine tries MACs fractions, each pruned and distilled within
`--probe-minutes`, measured on a fifth of the calibration images held apart for the search, and checks the model
it chooses once more on a held-out fifth no probe saw. This script then scores the original and the chosen model
on the CIFAR-10 test set, with its labels, which the job never sees.

    .venv/bin/python bench/budget_search.py [--calib 2000] [--probe-minutes 3] [--search-minutes 30] [--render]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import (
    DATA,
    QUICK,
    cifar,
    cifar_test,
    cifar_test_text,
    command,
    load_average,
    machine,
    write_section,
)

RESULTS = Path(__file__).resolve().parent / "results"
RESULTS_FILE = RESULTS / f"budget_search{'-quick' if QUICK else ''}.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calib", type=int, default=400 if QUICK else 2000, help="calibration images (no labels)")
    p.add_argument("--max-drop", type=float, default=1.0)
    p.add_argument("--probe-minutes", type=float, default=0.5 if QUICK else 3.0,
                   help="recovery.max_minutes of each probe's distillation")
    p.add_argument("--search-minutes", type=float, default=5.0 if QUICK else 30.0)
    p.add_argument("--probes", type=int, default=3 if QUICK else 6)
    p.add_argument("--signal", default="l2_norm")
    p.add_argument("--render", action="store_true", help="write the section again from the results file, run nothing")
    args = p.parse_args()
    if args.render:
        render(json.loads(RESULTS_FILE.read_text()))
        return
    where = machine()  # before the run: the code it imports is the code it measures

    import onnxruntime as ort
    from secateurs.pruning import PruneSpec, prune
    from secateurs.pruning.data import Dataset
    from secateurs.pruning.errors import FidelityError

    weights = (DATA / "resnet56_cifar10.safetensors").read_bytes()
    train = cifar("cifar10_train_subset10k.npz", args.calib)
    calib = Dataset(train.x, None)  # label-free: the job never sees a label
    test = cifar_test()
    spec = PruneSpec.model_validate({
        "signal": args.signal,
        "fidelity": {"max_drop": args.max_drop, "search_minutes": args.search_minutes, "search_probes": args.probes},
        "recovery": {"method": "distill", "max_minutes": args.probe_minutes},
        "calibration": {"samples": args.calib},
        "measure": {"repeats": 10},
    })
    def progress(stage: str, fraction: float, message: str, metrics: dict) -> None:  # type: ignore[type-arg]
        if stage == "search":
            print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    load = load_average()
    t0 = time.monotonic()
    failed = None
    try:
        result = prune(weights, spec, arch="resnet56_cifar", num_classes=10, calibration=calib, progress=progress)
        report, model, before_onnx = result.report, result.onnx, result.original
    except FidelityError as e:
        report, model, failed, before_onnx = e.report, None, str(e), None
    seconds = time.monotonic() - t0

    def predictions(data: bytes) -> np.ndarray:
        """The model's class for every test image, in ONNX Runtime."""
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return np.concatenate([sess.run(None, {name: test.x[start : start + 500]})[0].argmax(1)
                               for start in range(0, len(test), 500)])

    if before_onnx is None:  # a failed job hands back no model: the original is exported here to score it
        import torch
        from secateurs.pruning import onnx_tools
        from secateurs.pruning.loading import load_model

        original = load_model(weights, arch="resnet56_cifar", num_classes=10)
        before_onnx = onnx_tools.export(original.module.eval(), torch.zeros(original.input_shape),
                                        input_name=original.input_name, output_names=original.output_names,
                                        dynamic_axes={original.input_name: {0: "batch"}}, opset=17)
    before = predictions(before_onnx)
    acc_before = float((before == test.y).mean())
    acc_after = agree = None
    if model is not None:
        after = predictions(model)
        acc_after, agree = float((after == test.y).mean()), float((after == before).mean())

    row = {"calib": args.calib, "max_drop": args.max_drop, "probe_minutes": args.probe_minutes,
           "search_minutes": args.search_minutes, "probes": args.probes, "signal": args.signal,
           "seconds": round(seconds, 1), "search": report.get("search", {}), "fidelity": report.get("fidelity"),
           "macs_kept": report.get("macs_kept"), "latency_ms_before": report.get("latency_ms_before"),
           "latency_ms_after": report.get("latency_ms_after"), "accuracy_before": acc_before,
           "accuracy_after": acc_after, "test_agreement": agree, "failed": failed, "machine": where, "load": load,
           "test_text": cifar_test_text(), "command": command()}
    RESULTS.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(row, indent=1, default=float))
    render(row)


def render(row: dict) -> None:  # type: ignore[type-arg]
    """The section from a run's results (`--render` writes it again from the results file)."""
    search = row["search"]
    lines = [
        f"## Budget search: ResNet-56 / CIFAR-10, `--max-drop {row['max_drop']:g}` and no target, label-free", "",
        f"One job: {row['signal']}, distillation of at most {row['probe_minutes']:g} minutes in each probe, "
        f"{row['calib']:,} unlabelled training images (a fifth held out for the final check, a fifth of the rest for "
        f"the probes), `fidelity.search_minutes` {row['search_minutes']:g}, at most {row['probes']} probes. The "
        f"test-set figures are this script's, on {row['test_text']}, which the job never saw.", "",
        "| probe | MACs asked | MACs kept | top-1 agreement drop on the probe images (points) | verdict | seconds |",
        "| ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for i, pt in enumerate(search.get("points", []), 1):
        verdict = "within" if pt["held"] else ("cannot be reached" if "reason" in pt else "over")
        lines.append(f"| {i} | {pt['macs_fraction']:.4f} | {pt.get('macs_kept', float('nan')):.4f} | "
                     f"{pt.get('drop_points', float('nan')):.2f} | {verdict} | {pt['seconds']:.0f} |")
    lines.append("")
    if row["failed"]:
        lines.append(f"The job failed: {row['failed']}")
    else:
        f = row["fidelity"]
        (o,) = f["outputs"]
        before, after, agree = row["accuracy_before"], row["accuracy_after"], row["test_agreement"]
        lines += [
            f"Chosen: macs {search['chosen_macs_fraction']:g} (kept {row['macs_kept']:.3f}), latency "
            f"{row['latency_ms_before']:.3f} -> {row['latency_ms_after']:.3f} ms (ONNX Runtime, batch 1). "
            f"Final check on {f['samples']} {f['data']} images: top-1 agreement {o['value']:.4f} "
            f"(drop {o['drop_points']:.2f} points, budget {'held' if f['held'] else 'missed'}).",
            "",
            f"On the test set: accuracy {before * 100:.2f}% -> {after * 100:.2f}% "
            f"({(after - before) * 100:+.2f} points), top-1 agreement with the original {agree * 100:.2f}% "
            f"(a drop of {(1 - agree) * 100:.2f} points).",
            "",
            "The job's data are training images, which the original has learnt: it agrees with itself and its pruned "
            "copy more readily there than on images neither has seen, so a budget held on held-out calibration images "
            "can be missed on the test set. Send evaluation data from outside the training set (`--eval`) for a "
            "check that carries over.",
        ]
    lines += ["", f"The search stopped on: {search.get('stopped')}; {search.get('seconds', 0) / 60:.1f} minutes of "
              f"search, {row['seconds'] / 60:.1f} minutes for the whole job.", "",
              f"Machine: {row['machine']}; load average {row['load']} at the start.", "",
              f"`{row['command']}`; raw results in `bench/results/{RESULTS_FILE.name}`."]
    write_section("budget-search", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
