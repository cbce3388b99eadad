"""Every benchmark, one after the other: `make bench` (full) and `make bench-quick` (a small subset of each).

Each script rewrites its own section of BENCHMARKS.md. A quick run sets SECATEURS_BENCH_QUICK=1, so the
scripts write sections and plots of their own (NAME-quick) and never overwrite the full run's figures.
At the end this writes a section at the top of BENCHMARKS.md with the run's wall time per script.

Scripts that cannot run small without overwriting their full results run in the quick set with
`--no-write` (measured, printed, nothing written); the note beside them in the section says so.

    .venv/bin/python bench/run_all.py quick|full [--nni-python .nni-venv/bin/python] [--only SCRIPT,...]

The times are the machine's: run it under the machine's timing lock, e.g.
`flock /tmp/secateurs-timing.lock nice -n -10 make bench-quick`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent

GPU_NOTE = "measures on CUDA only: on a machine without a GPU its section says that nothing was measured"
# (script, arguments, a note for the section's table); the full set runs each script with its defaults.
QUICK = [
    ("latency_vs_macs.py", ["--rounds", "auto", "--threads", "1,2", "--batches", "1,32", "--repeats", "20",
                            "--seconds", "1", "--no-extra"], ""),
    ("cifar_vs_torch_pruning.py", ["--targets", "0.5", "--signals", "l2_norm,fpgm", "--tp-importances", "fpgm",
                                   "--no-extra"], ""),
    ("cifar_vs_torch_pruning.py", ["--sweep", "0.8,0.5"], ""),
    ("cost_of_pruning.py", ["--models", "mobilenet_v2", "--repeats", "1"], ""),
    ("latency_target.py", ["--models", "mobilenet_v2", "--repeats", "20"], ""),
    ("jobs_per_hour.py", ["--jobs", "3"], ""),
    ("service_load.py", ["--stack", "embedded", "--seconds", "3", "--queue-jobs", "3", "--upload-mib", "64",
                         "--workers-sweep", ""], ""),
    ("cifar_recovery.py", ["--minutes", "0.5", "--signal", "l1_norm", "--side-by-side"], ""),
    ("recovery_table.py", ["--signals", "l1_norm", "--targets", "0.5", "--recoveries", "none,bn_recalibrate",
                           "--samples", "256",
                           "--results", "{tmp}/recovery_quick.json", "--no-write"],
     "measured and printed only (`--no-write`): the script writes one fixed plot"),
    # a network trained on a sixth of the images for one epoch; its network, cells and plot are -quick files
    ("fashion_mnist.py", ["--train-images", "10000", "--epochs", "1", "--signals", "l1_norm,bandit", "--targets", "0.5",
                          "--recoveries", "none,bn_recalibrate,distill", "--calib", "1000", "--distill-epochs", "1",
                          "--bandit-calib", "2000", "--bandit-slices", "1", "--missing-reason",
                          "The quick run leaves out reconstruct (the full run measures it)."], ""),
    ("gpu.py", ["--quick"], GPU_NOTE),
]
FULL = [
    ("latency_vs_macs.py", [], ""),
    ("cifar_vs_torch_pruning.py", [], ""),
    ("cifar_vs_torch_pruning.py", ["--arch", "resnet20_cifar"], ""),
    # NNI's pruners, in a section of their own (--with-nni <interpreter> added when one is given)
    ("cifar_vs_torch_pruning.py", ["--targets", "0.7,0.5", "--signals", "l2_norm,l1_norm", "--no-extra"], "NNI"),
    ("cifar_vs_torch_pruning.py", ["--sweep", "0.95,0.9,0.85,0.8,0.75,0.7,0.6,0.5"], ""),
    ("cost_of_pruning.py", [], ""),
    ("latency_target.py", [], ""),
    ("jobs_per_hour.py", [], ""),
    ("service_load.py", [], ""),
    ("cifar_recovery.py", [], ""),
    ("recovery_table.py", [], ""),
    ("fashion_mnist.py", [], ""),
    ("gpu.py", [], GPU_NOTE),
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["quick", "full"])
    p.add_argument("--nni-python", help="an interpreter with NNI for cifar_vs_torch_pruning.py --with-nni")
    p.add_argument("--only", help="comma-separated script names: run just these")
    args = p.parse_args()
    quick = args.mode == "quick"
    if quick:
        os.environ["SECATEURS_BENCH_QUICK"] = "1"  # before common is imported: its sections and plots are -quick
    sys.path.insert(0, str(BENCH))
    import common

    plan = QUICK if quick else FULL
    if args.only:
        plan = [step for step in plan if step[0] in args.only.split(",")]
    load_start, t_begin = common.load_average(), time.monotonic()
    done = []
    with tempfile.TemporaryDirectory(prefix="secateurs-bench-") as tmp:
        for script, argv, note in plan:
            argv = [a.replace("{tmp}", tmp) for a in argv]
            if note == "NNI":
                if not args.nni_python:
                    continue
                argv, note = [*argv, "--with-nni", args.nni_python], ""
            cmd = [sys.executable, str(BENCH / script), *argv]
            print(f"== {' '.join(cmd)}", flush=True)
            t0 = time.monotonic()
            code = subprocess.run(cmd, env=os.environ, check=False).returncode
            done.append((script, argv, note, code, time.monotonic() - t0))
    total = time.monotonic() - t_begin
    quoted = [" ".join([s, *(f"'{a}'" if not a or " " in a else a for a in argv)]) for s, argv, *_ in done]
    lines = [
        f"## Wall time of `make bench{'-quick' if quick else ''}`: {total / 60:.1f} minutes",
        "",
        f"`make bench{'-quick' if quick else ''}` ran every script below one after the other in "
        f"**{total / 60:.1f} minutes** of wall time on: {common.machine(('pruning', 'bench'))}. Load average at "
        f"start {load_start}, at end {common.load_average()}; run at nice {os.getpriority(os.PRIO_PROCESS, 0)}.",
        "",
        "| script and arguments | exit code | minutes | note |",
        "| --- | ---: | ---: | --- |",
        *(f"| `{q}` | {code} | {sec / 60:.1f} | {note} |" for q, (_, _, note, code, sec) in zip(quoted, done,
                                                                                              strict=True)),
    ]
    if quick:
        lines += ["", "The quick run's sections and plots are the ones marked *quick run*; the others come from "
                  "full runs (`make bench`)."]
    lines += ["", f"Command: `{common.command()}`"]
    common.write_section("run", "\n".join(lines), top=True)
    failed = [s for s, _, _, code, _ in done if code]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
