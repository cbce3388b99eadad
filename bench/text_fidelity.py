"""OCR models pruned to 60% of their MACs: does the pruned model still find and read what the original does?

The two models of bench/text_models.py (trained here from random init on synthetic text images; trained first
when the cache has none), a DBNet-style text detector (a Sigmoid text map) and a CRNN-style recognizer (CTC
log-probabilities), are each pruned by the engine exactly as a user would call it, through the Python API:

    prune(onnx_bytes, PruneSpec.model_validate({"signal": ..., "target": {"macs": 0.6}, "recovery": {...},
          "calibration": {"samples": 64}}), calibration=load_npz(calib), evaluation=load_npz(eval))

with 64 calibration images and 256 held-out evaluation images, for every signal x recovery asked for, and once
through the command line (`secateurs prune ... --recover distill`, its defaults). Each cell's row gives MACs
before and the fraction kept, ONNX Runtime latency before and after (the report's: batch 1, 1 thread), the
engine's own fidelity figure against the ORIGINAL on the 256 evaluation images (the report's `fidelity`: IoU of
the thresholded maps for the detector, exact match of the greedy CTC decodes for the recognizer), the pruned
model's score against the ground truth beside the original's, and the wall time. The issue's goals: the detector
at 60% MACs keeps IoU >= 0.9 against the original, the recognizer >= 95% exact-match decodes.

Raw results go to bench/results/text_fidelity.json (text_fidelity-quick.json in a quick run), the table to the
`text-fidelity` section of BENCHMARKS.md. A quick run (--quick or SECATEURS_BENCH_QUICK=1) measures l2_norm
without recovery, taylor with a short distillation (40 epochs, at most a minute) and the CLI on the recognizer
only (its distillation capped at a minute by a --spec file): about 2 minutes on an idle machine once the models
are in the cache (training them first takes about 10 minutes on 2 cores).

    .venv/bin/python bench/text_fidelity.py [--quick] [--only dbnet|crnn] [--signals l1_norm,l2_norm,taylor]
        [--recoveries none,reconstruct,distill,reconstruct+distill] [--distill-epochs 300] [--distill-minutes 10]
        [--target 0.6] [--threads 2] [--resume] [--write-only]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import common
import numpy as np
import text_models
from common import ROOT, CpuWatch, command, load_average, machine, write_section

SIGNALS = ("l1_norm", "l2_norm", "taylor")
RECOVERIES = ("none", "reconstruct", "distill", "reconstruct+distill")
# The goal per model: the fidelity metric's value against the original at macs 0.6.
GOALS = {"dbnet": ("iou", 0.9), "crnn": ("exact_match", 0.95)}
TITLES = {"dbnet": "DBNet-style detector", "crnn": "CRNN-style recognizer"}


def results_path() -> Path:
    return ROOT / "bench" / "results" / f"text_fidelity{'-quick' if common.QUICK else ''}.json"


def recovery_spec(name: str, epochs: float, minutes: float) -> dict[str, Any]:
    """The spec's `recovery` for a recovery label: distillation from the original over the 64 calibration
    images (batch 32: `epochs` passes of 2 steps each), cut at `minutes`."""
    if name in ("none", "reconstruct", "bn_recalibrate"):
        return {"method": name}
    distill = {"method": "distill", "epochs": epochs, "batch_size": 32, "max_minutes": minutes}
    if name == "distill":
        return distill
    if name == "reconstruct+distill":
        return {**distill, "reconstruct_first": True}
    raise ValueError(f"unknown recovery {name!r}")


def job_spec(signal: str, recovery: str, args: argparse.Namespace) -> dict[str, Any]:
    """The spec of an API cell, as JSON: what `PruneSpec.model_validate` gets."""
    return {"signal": signal, "target": {"macs": args.target},
            "recovery": recovery_spec(recovery, args.distill_epochs, args.distill_minutes),
            "calibration": {"samples": text_models.CALIB}}


def truth_score(name: str, out: np.ndarray, truth: np.ndarray) -> float:
    """The model's score against the ground truth: IoU of the map (detector), exact match (recognizer)."""
    return text_models.iou(out, truth) if name == "dbnet" else text_models.exact_match(out, truth)


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """What a row needs from the engine's report (the whole report would carry per-layer tables)."""
    keep = ("signal", "macs_before", "macs_after", "macs_kept", "params_before", "params_after", "params_kept",
            "latency_ms_before", "latency_ms_after", "latency_batch", "latency_threads", "speedup",
            "max_abs_diff", "target_met", "recovery", "stage_seconds", "fidelity")
    return {k: report[k] for k in keep if k in report}


def run_api(name: str, model: bytes, signal: str, recovery: str, args: argparse.Namespace,
            truth: np.ndarray) -> dict[str, Any]:
    """One cell through the Python API."""
    from secateurs.pruning import PruneSpec, prune
    from secateurs.pruning.data import load_npz

    paths = text_models.files(name, args.models)
    calib = load_npz(paths["calib"].read_bytes())
    evaluation = load_npz(paths["eval"].read_bytes())
    spec = job_spec(signal, recovery, args)
    cell: dict[str, Any] = {"model": name, "path": "api", "signal": signal, "recovery": recovery, "spec": spec}
    t0 = time.monotonic()
    try:
        result = prune(model, PruneSpec.model_validate(spec), calibration=calib, evaluation=evaluation)
    except Exception as e:  # noqa: BLE001 - a failing cell is a finding: recorded and shown, the grid goes on
        cell.update(seconds=time.monotonic() - t0, error=f"{type(e).__name__}: {str(e)[:400]}",
                    traceback=traceback.format_exc()[-2000:])
        return cell
    cell["seconds"] = time.monotonic() - t0
    cell["report"] = _summary(result.report)
    cell["truth_after"] = truth_score(name, text_models.run_onnx(result.onnx, evaluation.x, args.threads), truth)
    return cell


def run_cli(name: str, args: argparse.Namespace, truth: np.ndarray, spec: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """One cell through `secateurs prune`, as the README shows it (the engine's defaults: l2_norm, distillation
    as long as the engine makes it), with `spec` as its --spec file when given (a quick run caps the training)."""
    paths = text_models.files(name, args.models)
    exe = Path(sys.executable).parent / "secateurs"
    with tempfile.TemporaryDirectory() as tmp:
        out, report = Path(tmp) / "pruned.onnx", Path(tmp) / "report.json"
        argv = [str(exe), "prune", str(paths["onnx"]), "-o", str(out), "--target", f"macs={args.target:g}",
                "--calib", str(paths["calib"]), "--eval", str(paths["eval"]), "--recover", "distill",
                "--report", str(report)]
        if spec is not None:
            (Path(tmp) / "spec.json").write_text(json.dumps(spec))
            argv += ["--spec", str(Path(tmp) / "spec.json")]
        cell: dict[str, Any] = {"model": name, "path": "cli", "signal": "l2_norm", "recovery": "distill (CLI)",
                                "spec": spec,
                                "argv": ["secateurs", *[Path(a).name if a.startswith(tmp) or
                                                        a.startswith(str(args.models)) else a
                                                        for a in argv[1:]]]}
        t0 = time.monotonic()
        # its threads as this process's (on a shared 2-core machine, more threads than free cores make every
        # OpenMP step wait on a descheduled one)
        proc = subprocess.run(argv, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        cell.update(seconds=time.monotonic() - t0, exit=proc.returncode, stdout=proc.stdout[-2000:])
        if proc.returncode != 0 or not out.exists():
            cell["error"] = f"exit {proc.returncode}: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:400]
            return cell
        cell["report"] = _summary(json.loads(report.read_text()))
        x = np.load(paths["eval"])["x"]
        cell["truth_after"] = truth_score(name, text_models.run_onnx(out.read_bytes(), x, args.threads), truth)
    return cell


def key(cell: dict[str, Any]) -> tuple[str, str, str, str]:
    return cell["model"], cell["path"], cell["signal"], cell["recovery"]


# ------------------------------------------------------------------------------------------- the section


def _fid(cell: dict[str, Any]) -> dict[str, Any] | None:
    f = cell.get("report", {}).get("fidelity", {})
    return f["outputs"][0] if f.get("measured") and f.get("outputs") else None


def row(cell: dict[str, Any], meta: dict[str, Any]) -> str:
    name = cell["model"]
    label = f"{cell['signal']} | {cell['recovery']}"
    if "error" in cell:
        msg = cell["error"].replace("|", "\\|").replace("\n", " ")[:220]
        return f"| {TITLES[name]} | {label} | - | - | failed: {msg} | - | {cell['seconds']:.0f} |"
    r, fid = cell["report"], _fid(cell)
    metric, goal = GOALS[name]
    if fid is None:
        value = "not measured"
    else:
        mark = "**yes**" if fid["value"] >= goal else "no"
        extra = (f", PSNR {fid['psnr']:.1f} dB" if fid.get("psnr") is not None else
                 f", per-step agreement {fid['step_agreement']:.3f}" if "step_agreement" in fid else "")
        value = f"{fid['metric']} {fid['value']:.3f}{extra} (goal met: {mark})"
    rec = r.get("recovery") or {}
    if rec.get("steps") is not None:
        lr = f", lr {rec['lr']:g}" if isinstance(rec.get("lr"), (int, float)) else ""
        cap = ((cell.get("spec") or {}).get("recovery") or {}).get("max_minutes")
        cut = ", cut by max_minutes" if cap and rec.get("seconds", 0) >= 0.97 * 60 * cap else ""
        label += f" ({rec['steps']:.0f} steps{lr}, {rec.get('seconds', 0):.0f} s{cut})"
    truth = f"{meta[metric]:.3f} -> {cell['truth_after']:.3f}"
    return (f"| {TITLES[name]} | {label} | {r['macs_before'] / 1e6:.1f} M -> {r['macs_kept']:.3f} | "
            f"{r['latency_ms_before']:.3f} -> {r['latency_ms_after']:.3f} | {value} | {truth} | "
            f"{cell['seconds']:.0f} |")


def verdicts(cells: list[dict[str, Any]], target: float) -> list[str]:
    lines = []
    for name, (metric, goal) in GOALS.items():
        measured = [(c, f) for c in cells if c["model"] == name and (f := _fid(c)) is not None]
        if not measured:
            continue
        best, fid = max(measured, key=lambda cf: cf[1]["value"])
        met = [c for c, f in measured if f["value"] >= goal]
        lines.append(
            f"- {TITLES[name]}: goal {metric} >= {goal:g} against the original at macs {target:g} -- **{'met' if met else 'not met'}** ({len(met)} of {len(measured)} settings); best "
            f"{fid['value']:.3f} with {best['signal']} + {best['recovery']}.")
    return lines


def write(data: dict[str, Any]) -> None:
    cells, metas = data["cells"], data["models"]
    target = data["target"]
    validation = {c["report"]["recovery"]["validation_samples"] for c in cells
                  if "validation_samples" in (c.get("report", {}).get("recovery") or {})}
    held_out = (f"; the engine holds {', '.join(str(v) for v in sorted(validation))} of the 64 images out to "
                "validate on and keeps the best state it sees there" if validation else "")
    busy = [c["other_cores_busy"] for c in cells if "other_cores_busy" in c]
    lines = [
        f"## OCR models pruned to {target:g} of their MACs: fidelity against the original",
        "",
        "Two models trained here from random init on synthetic text images (`bench/text_models.py`: digits and "
        "capitals rendered with Pillow's built-in font on noisy backgrounds with distractor shapes), scored on 256 "
        "held-out images in ONNX Runtime:",
        "",
        "| model | input -> output | MMACs | parameters | trained | against the ground truth |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for name, m in metas.items():
        metric = GOALS[name][0]
        shapes = " -> ".join(" x ".join(["N", *(str(d) for d in s[1:])]) for s in (m["input_shape"],
                                                                                    [0, *m["output_shape"]]))
        note = f", other processes kept {m['other_cores_busy']:.1f} cores busy" if "other_cores_busy" in m else ""
        lines.append(f"| {TITLES[name]} | {shapes} | {m['macs'] / 1e6:.1f} | {m['parameters']:,} | "
                     f"{m['train_seconds']:.0f} s ({m['steps']} steps of {m['batch']} images, {m['threads']} "
                     f"torch threads{note}) | {metric} {m[metric]:.3f} |")
    lines += [
        "",
        f"Each pruned by `secateurs.pruning.prune` to macs {target:g} with 64 calibration images "
        f"(`calibration.samples` 64) and evaluated against the ORIGINAL on 256 other images (the report's "
        "`fidelity`: IoU of the maps thresholded at 0.5, pixels pooled; exact match of the greedy CTC decodes). "
        f"Distillation: `recovery.epochs` {data['distill_epochs']:g} at batch 32, cut at `max_minutes` "
        f"{data['distill_minutes']:g}, the engine's defaults for the rest (its learning rate: given beside the "
        f"steps it ran){held_out}. The CLI row is `secateurs prune MODEL.onnx -o OUT.onnx --target macs={target:g} "
        "--calib calib.npz --eval eval.npz --recover distill --report r.json`, the engine's defaults for the rest "
        "(l2_norm, distillation as long as the engine makes it by default)"
        + ("; a quick run adds a `--spec` file capping `recovery.max_minutes` at 1"
           if any(c.get("spec") for c in cells if c["path"] == "cli") else "")
        + ". Latency: the report's, ONNX Runtime, "
        "batch 1, 1 thread. \"Against the ground truth\": the original's score -> the pruned model's. "
        f"Torch on {data.get('threads', '?')} threads, `OMP_WAIT_POLICY={data.get('omp_wait_policy')}` (set by "
        "text_models.py unless given: spinning threads slow every step several times over when another process "
        "holds a core).",
        "",
        "| model | signal | recovery | MACs before -> kept | latency ms before -> after | fidelity against the "
        "original | against the ground truth | wall s |",
        "| --- | --- | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    order = {s: i for i, s in enumerate(SIGNALS)}
    rec_order = {r: i for i, r in enumerate((*RECOVERIES, "distill (CLI)"))}
    for cell in sorted(cells, key=lambda c: (list(GOALS).index(c["model"]), c["path"] == "cli",
                                             order.get(c["signal"], 9), rec_order.get(c["recovery"], 9))):
        lines.append(row(cell, metas[cell["model"]]))
    lines += ["", *verdicts(cells, target), "",
              f"Machine: {data['machine']}; load average {data['load_average']} at the start"
              + (f", other processes kept {sum(busy) / len(busy):.1f} cores busy on average during the cells "
                 f"(at most {max(busy):.1f}: latency and wall times shared the CPU)" if busy and max(busy) > 0.2
                 else "") + ". "
              f"{data['wall_minutes']:.1f} minutes in all.", "",
              f"`{data['command']}`; raw results in `{results_path().relative_to(ROOT).as_posix()}`."]
    write_section("text-fidelity", "\n".join(lines))


# ------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the small form (as SECATEURS_BENCH_QUICK=1)")
    parser.add_argument("--only", choices=sorted(GOALS), help="one model only")
    parser.add_argument("--signals", help=f"comma-separated (default {','.join(SIGNALS)})")
    parser.add_argument("--recoveries", help=f"comma-separated, of {', '.join(RECOVERIES)} (default all)")
    parser.add_argument("--target", type=float, default=0.6, help="fraction of the MACs kept")
    parser.add_argument("--distill-epochs", type=float, default=300.0,
                        help="recovery.epochs of distill: passes over the 64 calibration images at batch 32")
    parser.add_argument("--distill-minutes", type=float, default=10.0,
                        help="recovery.max_minutes of distill: a safety net, not reached on an idle machine (a cut run "
                        "would make the figures depend on how busy the machine was)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads (the engine's "
                        "latency figures use 1 thread whatever this is)")
    parser.add_argument("--models", type=Path, default=text_models.CACHE, help="text_models.py's cache directory")
    parser.add_argument("--no-cli", action="store_true", help="skip the command-line cell")
    parser.add_argument("--resume", action="store_true", help="keep the cells already in the results file "
                        "(measured on the same model files with the same spec) and measure only the missing ones")
    parser.add_argument("--write-only", action="store_true", help="rewrite the section from the results file")
    args = parser.parse_args()
    if args.quick:
        common.QUICK = True  # write_section and results_path read it when called
        os.environ["SECATEURS_BENCH_QUICK"] = "1"
    if args.write_only:
        write(json.loads(results_path().read_text()))
        return

    import torch

    torch.set_num_threads(args.threads)
    names = [args.only] if args.only else list(GOALS)
    cli_spec = None
    if common.QUICK:
        cli_spec = {"recovery": {"max_minutes": 1.0}}
        grid = [("l2_norm", "none"), ("taylor", "distill")]
        if args.distill_epochs == parser.get_default("distill_epochs"):
            args.distill_epochs = 40.0
        args.distill_minutes = min(args.distill_minutes, 1.0)
    else:
        signals = args.signals.split(",") if args.signals else list(SIGNALS)
        recoveries = args.recoveries.split(",") if args.recoveries else list(RECOVERIES)
        grid = [(s, r) for s in signals for r in recoveries]

    t0 = time.monotonic()
    data: dict[str, Any] = {"machine": machine(), "load_average": load_average(), "command": command(),
                            "threads": args.threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                            "target": args.target, "distill_epochs": args.distill_epochs,
                            "distill_minutes": args.distill_minutes, "models": {}, "cells": []}
    previous: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    if args.resume and results_path().exists():
        old = json.loads(results_path().read_text())
        previous = {key(c): c for c in old["cells"] if "error" not in c}
    for name in names:
        meta = text_models.ensure(name, args.models, args.threads)
        model = text_models.files(name, args.models)["onnx"].read_bytes()
        meta["sha256"] = hashlib.sha256(model).hexdigest()
        data["models"][name] = meta
        truth = np.load(text_models.files(name, args.models)["truth"])["y"]
        todo: list[tuple[str, str, str]] = [("api", s, r) for s, r in grid]
        if not args.no_cli and (not common.QUICK or name == "crnn"):
            todo.append(("cli", "l2_norm", "distill (CLI)"))
        for path, signal, recovery in todo:
            done = previous.get((name, path, signal, recovery))
            if (done is not None and done.get("model_sha256") == meta["sha256"]
                    and done.get("spec") == (cli_spec if path == "cli" else job_spec(signal, recovery, args))):
                data["cells"].append(done)
                continue
            print(f"{name}: {signal} + {recovery} ({path})", flush=True)
            with CpuWatch() as watch:
                cell = (run_api(name, model, signal, recovery, args, truth) if path == "api"
                        else run_cli(name, args, truth, cli_spec))
            cell["model_sha256"], cell["other_cores_busy"] = meta["sha256"], round(watch.other, 2)
            data["cells"].append(cell)
            fid = _fid(cell)
            print("   " + (cell["error"] if "error" in cell else
                           f"macs kept {cell['report']['macs_kept']:.3f}, {fid['metric']} {fid['value']:.4f} "
                           f"against the original" if fid else "fidelity not measured")
                  + f" ({cell['seconds']:.0f} s)", flush=True)
            data["wall_minutes"] = (time.monotonic() - t0) / 60
            results_path().parent.mkdir(parents=True, exist_ok=True)
            results_path().write_text(json.dumps(data, indent=1) + "\n")
    data["wall_minutes"] = (time.monotonic() - t0) / 60
    results_path().write_text(json.dumps(data, indent=1) + "\n")
    write(data)
    print("\n".join(verdicts(data["cells"], data["target"])))


if __name__ == "__main__":
    main()
