"""Every benchmark, one after the other: `make bench` (full) and `make bench-quick` (a small subset of each).

Each script rewrites its own section of BENCHMARKS.md. A quick run sets SECATEURS_BENCH_QUICK=1, so the
scripts write sections and plots of their own (NAME-quick) and never overwrite the full run's figures.
This writes a section at the top of BENCHMARKS.md with the run's wall time per script (a full run after
each script, so an interrupted one says how far it got).

A full run takes hours on 2 cores. It records its progress in bench/results/run_full.json; after an
interruption `make bench-continue` (`full --continue`) runs only the scripts not yet run to success, and
the scripts that keep cells (recovery_table, fashion_mnist) fill in just the cells missing.

Scripts that cannot run small without overwriting their full results run in the quick set with
`--no-write` (measured, printed, nothing written); the note beside them in the section says so.

    .venv/bin/python bench/run_all.py quick|full [--continue] [--nni-python .nni-venv/bin/python] [--only SCRIPT,...]

The times are the machine's: run it under the machine's timing lock, e.g.
`flock /tmp/secateurs-timing.lock nice -n -10 make bench-quick`.
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
import uuid
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent

GPU_NOTE = "measures on CUDA only: on a machine without a GPU its section says that nothing was measured"
# (script, arguments, a note for the section's table); the full set runs each script with its defaults.
QUICK = [
    # batch 8, not the full run's 32: a batch of 32 through ResNet-50 took 2.95 s on 1 thread (1.42 s on 2) on
    # a machine where the quick run took 16 minutes, and each side runs 13 of them (3 warm-up, 10 in the block)
    ("latency_vs_macs.py", ["--rounds", "auto", "--threads", "1,2", "--batches", "1,8", "--repeats", "20",
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
    ("coverage.py", ["--only", "ResNet-18,ResNet-18, opset 11,YOLOv8n,DBNet-style,CRNN + LSTM,ViT-Tiny",
                     "--repeats", "10"], ""),
    ("budget_search.py", [], ""),
    # trains its two OCR models first when ~/.cache has none (about 10 minutes on 2 cores)
    ("text_fidelity.py", ["--quick"], ""),
    ("gpu.py", ["--quick"], GPU_NOTE),
]
# ResNet-56 recovery within 30 minutes: the recipe that met the goal (unnormalised group L2 + BN
# re-estimation + distillation with mixup, the engine's precision) against the peer recipe
BEST_RECOVERY = ['--minutes', '30', '--epochs', '200', '--mixup', '--signal',
                 '{"compose": {"measure": "weight", "reduce": "l2", "aggregate": "mean", "normalize": "none", '
                 '"coupling": "count"}}']
# Timed figures first; then the scripts that resume at the cell (an interrupted run loses one cell there);
# the hour-long recovery race last.
FULL = [
    ("latency_vs_macs.py", [], ""),
    ("cifar_vs_torch_pruning.py", [], ""),
    ("cifar_vs_torch_pruning.py", ["--arch", "resnet20_cifar"], ""),
    # NNI's pruners, in a section of their own (--with-nni <interpreter> added when one is given)
    ("cifar_vs_torch_pruning.py", ["--targets", "0.7,0.5", "--signals", "l2_norm,l1_norm", "--no-extra"], "NNI"),
    ("cifar_vs_torch_pruning.py", ["--sweep", "0.95,0.9,0.85,0.8,0.75,0.7,0.6,0.5"], ""),
    ("cost_of_pruning.py", [], ""),
    ("latency_target.py", [], ""),
    ("coverage.py", [], ""),
    ("jobs_per_hour.py", [], ""),
    ("service_load.py", [], ""),
    # the committed table's budget (512 calibration images, half an epoch of distillation per cell)
    ("recovery_table.py", ["--samples", "512", "--epochs", "0.5"], ""),
    ("fashion_mnist.py", [], ""),
    ("budget_search.py", [], ""),
    ("text_fidelity.py", [], ""),
    ("cifar_recovery.py", BEST_RECOVERY, ""),
    ("gpu.py", [], GPU_NOTE),
]
# Scripts that keep their cells in a results file. Given the run's id (--run) each decides for itself:
# a file of this run is filled in, any other started anew, wherever an earlier attempt was cut.
CELLS = ("recovery_table.py", "fashion_mnist.py")
# A full run's progress, committed beside the results: `make bench-continue` (--continue) takes an
# interrupted run up at its first unfinished script, in this session or a later one.
STATE = BENCH / "results" / "run_full.json"
NO_NNI = "<an interpreter with NNI: --nni-python>"


def step_key(script: str, argv: list[str]) -> str:
    return " ".join([script, *argv])


def shown(script: str, argv: list[str]) -> str:
    return " ".join([script, *(f"'{a}'" if not a or " " in a else a for a in argv)])


def load_state(path: Path, cont: bool) -> dict:  # type: ignore[type-arg]
    """The run to add to: the unfinished one on disk with `cont`, else a new one. A finished run, or none,
    cannot be continued: that is said, not silently replaced by a new run."""
    name = os.path.relpath(path, BENCH.parent)
    if not cont:
        try:
            old = json.loads(path.read_text())
            if isinstance(old, dict) and old.get("started") and not old.get("finished"):
                print(f"== a new run replaces the unfinished one started {old['started']} "
                      "(`make bench-continue` would have taken it up)", flush=True)
        except (OSError, ValueError):
            pass
        started = _now()
        return {"started": started, "id": f"{started} {uuid.uuid4().hex[:8]}", "finished": None, "steps": [],
                "current": None}
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"nothing to continue: {name} does not exist (`make bench` starts a run)") from None
    except ValueError as e:
        raise SystemExit(f"cannot continue: {name} is not a run's state ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("steps"), list) or "started" not in state:
        raise SystemExit(f"cannot continue: {name} is not a run's state (no started and steps)")
    if state.get("finished"):
        raise SystemExit(f"nothing to continue: the run started {state['started']} finished {state['finished']} "
                         "(`make bench` starts a new one)")
    return state


def save_state(path: Path | None, state: dict) -> None:  # type: ignore[type-arg]
    if path is None:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(path)  # never half-written: an interrupted save leaves the previous state


def arguments(script: str, argv: list[str], state: dict) -> list[str]:  # type: ignore[type-arg]
    """A cell-keeping script is told the run its cells belong to."""
    return [*argv, "--run", state.get("id") or state["started"]] if script in CELLS else argv


def ran(state: dict, key: str) -> bool:  # type: ignore[type-arg]
    return any(s["key"] == key and s["code"] == 0 for s in state["steps"])


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")


def full_section(state: dict, plan: list[tuple[str, list[str], str]], machine: str) -> str:  # type: ignore[type-arg]
    steps = {s["key"]: s for s in state["steps"]}
    rows, total, left = [], 0.0, []
    current, running = state.get("current"), None
    for script, argv, note in plan:
        key = step_key(script, argv)
        if key == current:
            running = shown(script, argv)
        s = steps.get(key)
        if s is None:
            if key != current:
                left.append(shown(script, argv))
            continue
        total += s["seconds"]
        rows.append(f"| `{shown(script, s['argv'])}` | {s['code']} | {s['seconds'] / 60:.1f} | {s['ended']} | "
                    f"{_machine_id(s['machine'])} | {s.get('code_at', '?')} | {note} |")
    machines = sorted({s["machine"] for s in state["steps"]} | {machine})
    sittings = len({s["sitting"] for s in state["steps"]})
    done = state.get("finished")
    head = (f"## Wall time of `make bench`: {total / 60:.1f} minutes" if done else
            f"## `make bench` in progress: {len(rows)} of {len(plan)} scripts run, "
            f"{total / 60:.1f} minutes so far")
    lines = [
        head, "",
        f"Run started {state['started']} UTC" + (f", finished {done} UTC" if done else "") +
        f"; {sittings} sitting(s) (`make bench`, then `make bench-continue` after each interruption, which "
        "takes the run up at its first unfinished script). Each script's minutes are its own wall time; the "
        "ones that keep cells (" + ", ".join(CELLS) + ") resume at the cell when continued, so their minutes "
        "count only the sitting that finished them. Machines, by the id in the table: " +
        "; ".join(f"{_machine_id(m)}: {m}" for m in machines) + ".", "",
        "| script and arguments | exit code | minutes | ended (UTC) | machine | secateurs at | note |",
        "| --- | ---: | ---: | --- | --- | --- | --- |",
        *rows,
    ]
    if running:
        lines += ["", f"Running when this was written: `{running}`, started {state.get('current_started', '?')} "
                      "UTC (if the run was cut there, `make bench-continue` takes it up at that script)."]
    if left:
        lines += ["", "Not run yet: " + "; ".join(f"`{c}`" for c in left) + "."]
    return "\n".join(lines)


def _machine_id(machine: str) -> str:
    return "m-" + hashlib.sha256(machine.encode()).hexdigest()[:6]


def run_full(args: argparse.Namespace, common) -> None:  # type: ignore[no-untyped-def]
    state = load_state(STATE, args.cont)
    # a new run of some scripts only (--only) leaves a longer run's record alone
    path = STATE if args.cont or not args.only else None
    # the machine apart from the code measured: the run's commits change as its results are committed
    machine = common.machine(("pruning", "bench")).partition("; secateurs at ")[0]
    # the whole list, whatever runs now: a run is finished when every script of it ran to success
    plan = [(s, [*a, "--with-nni", args.nni_python or NO_NNI] if n == "NNI" else a, "" if n == "NNI" else n)
            for s, a, n in FULL]
    only = args.only.split(",") if args.only else None
    state.setdefault("sittings", []).append(_now())
    sitting = f"{len(state['sittings'])}: {state['sittings'][-1]}"  # unique within the run

    def record() -> None:
        if all(ran(state, step_key(s, a)) for s, a, _ in plan):
            state["finished"] = state.get("finished") or _now()
        save_state(path, state)
        if path is not None:
            common.write_section("run", full_section(state, plan, machine), top=True)

    save_state(path, state)
    failed = []
    for script, argv, _ in plan:
        key = step_key(script, argv)
        if only is not None and script not in only:
            continue
        if ran(state, key):
            print(f"== done in this run already: {key}", flush=True)
            continue
        if NO_NNI in argv:
            print(f"== left out (no --nni-python given): {key}", flush=True)
            continue
        full_argv = arguments(script, argv, state)
        state["current"], state["current_started"] = key, _now()
        record()
        cmd = [sys.executable, str(BENCH / script), *full_argv]
        print(f"== {' '.join(cmd)}", flush=True)
        t0, code_at = time.monotonic(), common.revision(("pruning", "bench"))
        code = subprocess.run(cmd, env=os.environ, check=False).returncode
        state["steps"] = [s for s in state["steps"] if s["key"] != key] + [{
            "key": key, "argv": full_argv, "code": code, "seconds": time.monotonic() - t0, "ended": _now(),
            "machine": machine, "code_at": code_at, "sitting": sitting,
            "load_end": common.load_average()}]
        state["current"] = None
        if code:
            failed.append(script)
        record()
    record()
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


def run_quick(args: argparse.Namespace, common) -> None:  # type: ignore[no-untyped-def]
    plan = QUICK
    if args.only:
        plan = [step for step in plan if step[0] in args.only.split(",")]
    load_start, t_begin = common.load_average(), time.monotonic()
    done = []
    with tempfile.TemporaryDirectory(prefix="secateurs-bench-") as tmp:
        for script, argv, note in plan:
            argv = [a.replace("{tmp}", tmp) for a in argv]
            cmd = [sys.executable, str(BENCH / script), *argv]
            print(f"== {' '.join(cmd)}", flush=True)
            t0 = time.monotonic()
            code = subprocess.run(cmd, env=os.environ, check=False).returncode
            done.append((script, argv, note, code, time.monotonic() - t0))
    total = time.monotonic() - t_begin
    lines = [
        f"## Wall time of `make bench-quick`: {total / 60:.1f} minutes",
        "",
        f"`make bench-quick` ran every script below one after the other in **{total / 60:.1f} minutes** of wall "
        f"time on: {common.machine(('pruning', 'bench'))}. Load average at start {load_start}, at end "
        f"{common.load_average()}; run at nice {os.getpriority(os.PRIO_PROCESS, 0)}.",
        "",
        "| script and arguments | exit code | minutes | note |",
        "| --- | ---: | ---: | --- |",
        *(f"| `{shown(s, argv)}` | {code} | {sec / 60:.1f} | {note} |" for s, argv, note, code, sec in done),
        "",
        "The quick run's sections and plots are the ones marked *quick run*; the others come from full runs "
        "(`make bench`).",
        "", f"Command: `{common.command()}`",
    ]
    common.write_section("run", "\n".join(lines), top=True)
    failed = [s for s, _, _, code, _ in done if code]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["quick", "full"])
    p.add_argument("--nni-python", help="an interpreter with NNI for cifar_vs_torch_pruning.py --with-nni")
    p.add_argument("--only", help="comma-separated script names: run just these")
    p.add_argument("--continue", dest="cont", action="store_true",
                   help="full: take the unfinished run in bench/results/run_full.json up at its first script "
                        "not yet run to success")
    args = p.parse_args()
    if args.cont and args.mode != "full":
        p.error("--continue is for a full run")
    if args.mode == "quick":
        os.environ["SECATEURS_BENCH_QUICK"] = "1"  # before common is imported: its sections and plots are -quick
    sys.path.insert(0, str(BENCH))
    import common

    (run_quick if args.mode == "quick" else run_full)(args, common)


if __name__ == "__main__":
    main()
