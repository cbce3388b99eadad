"""Jobs per hour through one CPU worker: a data-free ResNet-18 job, end to end through the service.

The embedded stack (`secateurs up`: API, SQLite, local storage and one solo worker process) starts on a free
port in a fresh temporary SECATEURS_HOME, with an API key of its own. torchvision ResNet-18 (random weights,
224x224, exported with torch.onnx.export, opset 17, dynamic batch) is uploaded once through the SDK
(`secateurs.client.Client`); then `--jobs` jobs (signal l2_norm, target macs 0.5, the default spec
otherwise: its export, ONNX Runtime check and latency measurement included) are submitted one after the
other and waited for. Throughput = jobs / (last job's finished_at - first job's created_at), server clocks;
the client's own wall time from the first submit to the last success is given too. Per job: queue wait
(started_at - created_at), run time (finished_at - started_at) and the engine's seconds per stage from each
job's report.json, medians over the jobs.

    .venv/bin/python bench/jobs_per_hour.py [--jobs 10] [--no-write]

Timing shares the CPU with whatever else runs: run it under the machine's timing lock at a high priority.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from common import command, load_average, machine, write_section
from latency_vs_macs import SIZE, export
from service_load import Watch, embedded

SPEC = {"signal": "l2_norm", "target": {"macs": 0.5}}
CAP = 256 * 1024 * 1024  # the stack's upload cap: far above ResNet-18's 45 MB


def seconds_between(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def run(n: int, root: Path) -> dict:
    from secateurs.client import Client

    model_path = root / "resnet18.onnx"
    model_path.write_bytes(export("resnet18"))
    with embedded(root, CAP) as stack, Client(stack.url, api_key=stack.key) as client:
        model = client.models.upload(model_path)
        with Watch(lambda: []) as watch:  # our processes: this one and the stack it started
            t0 = time.monotonic()
            jobs = [client.jobs.create(model, SPEC) for _ in range(n)]
            submitted = time.monotonic() - t0
            for job in jobs:
                job.wait(timeout=1800, poll=0.25)
                if job.status != "succeeded":
                    raise SystemExit(f"job {job.id} {job.status}: {job.data.get('error')}")
            client_seconds = time.monotonic() - t0
        reports = [job.report() for job in jobs]
        data = [job.data for job in jobs]
        commands = stack.commands
    span = seconds_between(data[0]["created_at"], data[-1]["finished_at"])
    stages = list(dict.fromkeys(s for r in reports for s in r["stage_seconds"]))
    per_job = [{"queue": seconds_between(d["created_at"], d["started_at"]),
                "run": seconds_between(d["started_at"], d["finished_at"]),
                "engine": sum(r["stage_seconds"].values()), **r["stage_seconds"]} for d, r in zip(data, reports,
                                                                                                  strict=True)]
    return {"jobs": n, "span": span, "client_seconds": client_seconds, "submit_seconds": submitted,
            "per_hour": n / span * 3600, "client_per_hour": n / client_seconds * 3600, "stages": stages,
            "per_job": per_job, "other": watch.other, "macs_kept": [r["macs_kept"] for r in reports],
            "model_bytes": model_path.stat().st_size, "commands": commands}


def render(r: dict, load: tuple[str, str], minutes: float) -> str:
    def med(key: str) -> float:
        return statistics.median(j.get(key, 0.0) for j in r["per_job"])

    def spread(key: str) -> str:
        values = [j.get(key, 0.0) for j in r["per_job"]]
        return f"{min(values):.2f}-{max(values):.2f}"

    run_s = med("run")
    lines = [
        "## Jobs per hour through one CPU worker: data-free ResNet-18",
        "",
        f"Machine: {machine(('pruning', 'worker', 'api', 'db'))}. Load average at start {load[0]}, at end "
        f"{load[1]}; other processes kept {r['other']:.2f} cores busy on average while the jobs ran; this run at "
        f"nice {os.getpriority(os.PRIO_PROCESS, 0)}. {minutes:.1f} min in all.",
        "",
        f"Stack: `{'`; `'.join(r['commands'])}` in a fresh temporary SECATEURS_HOME (SQLite, local storage, one solo "
        f"worker process). Model: torchvision ResNet-18, random weights, {SIZE}x{SIZE}, exported with "
        f"`torch.onnx.export` (opset 17, dynamic batch; {r['model_bytes'] / 1e6:.1f} MB), uploaded once through the "
        f"SDK. Jobs: {r['jobs']} submitted back to back through `secateurs.client.Client` with spec "
        f"`{json.dumps(SPEC)}` (default otherwise: the job's export, ONNX Runtime check and latency measurement "
        "included), each waited for. Throughput over server clocks: first job's created_at to last job's "
        "finished_at.",
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| **jobs per hour** (server clocks, {r['jobs']} jobs in {r['span']:.1f} s) | **{r['per_hour']:.0f}** |",
        f"| jobs per hour, client's wall time (first submit to last success seen, 0.25 s polls) "
        f"| {r['client_per_hour']:.0f} ({r['client_seconds']:.1f} s) |",
        f"| submitting all {r['jobs']} jobs (client) | {r['submit_seconds']:.2f} s |",
        f"| MACs kept | {min(r['macs_kept']):.3f}-{max(r['macs_kept']):.3f} |",
        "",
        f"Per job, median over the {r['jobs']} jobs (min-max); queue wait grows down the queue, as every job was "
        "submitted at once:",
        "",
        "| per job | median (s) | min-max (s) |",
        "| --- | ---: | ---: |",
        f"| queue wait (started_at - created_at) | {med('queue'):.2f} | {spread('queue')} |",
        f"| run (finished_at - started_at) | **{run_s:.2f}** | {spread('run')} |",
    ]
    for s in r["stages"]:
        lines.append(f"| engine stage `{s}` (report.json stage_seconds) | {med(s):.2f} | {spread(s)} |")
    lines += [
        f"| engine, all stages | {med('engine'):.2f} | {spread('engine')} |",
        f"| worker outside the engine (run - engine: model fetch, artifacts, database) "
        f"| {statistics.median(j['run'] - j['engine'] for j in r['per_job']):.2f} | |",
        "",
        f"Command: `{command()}`",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=10)
    p.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    args = p.parse_args()
    t_begin, load_start = time.monotonic(), load_average()
    root = Path(tempfile.mkdtemp(prefix="secateurs-jobs-"))
    try:
        result = run(args.jobs, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({k: v for k, v in result.items() if k != "per_job"}), flush=True)
    section = render(result, (load_start, load_average()), (time.monotonic() - t_begin) / 60)
    print(section)
    if not args.no_write:
        write_section("jobs-per-hour", section)


if __name__ == "__main__":
    main()
