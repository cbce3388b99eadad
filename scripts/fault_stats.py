"""Repeat the fault tests' faults for distributions, outside the default pytest run (each fault test runs once per
suite to keep `make test` in its budget):

    .venv/bin/python scripts/fault_stats.py --runs 10 [--only sigkill|broker|starve]

- sigkill: the embedded stack's worker SIGKILLed (its whole tree) mid-job, N times on one stack (`secateurs up` starts
  a new worker each time; lease 15 s, sweep 1 s). Survived = succeeded once, after a take-back, with one set of
  artifacts, within 15 minutes (each run prints its attempts: 2 unless a starved attempt lost its lease too).
- broker: Redis (a redis-server of the script's own on a free loopback port) killed with -9 and restarted empty
  while 3 jobs wait in it, N times (lease 4 s, sweep 1 s). Survived = all 3 redelivered and succeeded once within
  15 minutes (each run prints their attempts: 1 unless a worker starved of CPU lost the short lease).
- starve: the embedded stack's worker SIGSTOPped mid-job past its lease (15 s) until the sweeper takes the job back,
  then SIGCONTed, N times on one stack. Survived = the stopped attempt resumed the job and it succeeded as attempt 1
  with one set of artifacts and no second run.

Prints each run and then "N/N survived, median and max recovery seconds" per fault. Recovery: from the kill to the
job's end (sigkill), from the worker's start after the restart to the last lost job's end (broker), from the SIGCONT
to the job's end (starve).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: its tests/ hold the faults

import httpx  # noqa: E402

from tests.api.conftest import Stack, create_key, stop  # noqa: E402
from tests.fault.servers import RedisServer, start_worker, upload_resnet20  # noqa: E402
from tests.fault.test_broker_restart import SPEC, broker_api, lose_the_queue, ran_once  # noqa: E402
from tests.fault.test_starved_worker import starve_mid_job  # noqa: E402
from tests.fault.test_worker_killed import kill_mid_job, leased_stack  # noqa: E402


def _embedded_runs(runs: int, home: Path, fault: str, one: Callable[[Stack, httpx.Client, str], float]) -> list[float | None]:
    """`one` run N times on one embedded stack (lease 15 s, sweep 1 s) and one model."""
    stack = leased_stack(home)
    try:
        with stack.client() as c:
            model = upload_resnet20(c)
            return [_timed(lambda: one(stack, c, model), fault, i, runs) for i in range(runs)]
    finally:
        stop(stack.procs)


def _sigkill_once(stack: Stack, c: httpx.Client, model: str) -> float:
    job, seconds, _ = kill_mid_job(stack, c, model, timeout=900)
    print(f"  attempts = {job['attempts']}", flush=True)
    return seconds


def _starve_once(stack: Stack, c: httpx.Client, model: str) -> float:
    job, took, _ = starve_mid_job(stack, c, model, timeout=900)
    print(f"  stopped {took['stopped']:.1f} s, taken back after {took['taken_back']:.1f} s, attempts = "
          f"{job['attempts']}", flush=True)
    return took["finished"]


def sigkill_runs(runs: int, home: Path) -> list[float | None]:
    return _embedded_runs(runs, home, "sigkill", _sigkill_once)


def starve_runs(runs: int, home: Path) -> list[float | None]:
    return _embedded_runs(runs, home, "starve", _starve_once)


def broker_runs(runs: int, home: Path) -> list[float | None]:
    redis = RedisServer(home)
    redis.start()
    api = None
    try:
        api, url, env = broker_api(home, redis)
        key = create_key(env, "fault-stats")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            body = {"model_id": upload_resnet20(c), "spec": SPEC}

            def one() -> float:
                lost = lose_the_queue(c, redis, body)  # no worker runs between rounds
                redis.start()
                worker = start_worker(home, env)
                try:
                    seconds, jobs = ran_once(c, lost, time.monotonic(), first_attempt=False, timeout=900)
                finally:
                    stop([worker])
                print(f"  attempts = {[j['attempts'] for j in jobs]}", flush=True)
                return seconds

            return [_timed(one, "broker", i, runs) for i in range(runs)]
    finally:
        if api is not None:
            stop([api])
        redis.close()


def _timed(run: Callable[[], float], fault: str, i: int, runs: int) -> float | None:
    """One run's recovery seconds, or None when it did not survive (its failure printed)."""
    try:
        seconds = run()
    except (AssertionError, httpx.HTTPError):
        traceback.print_exc()
        print(f"{fault} run {i + 1}/{runs}: NOT survived", flush=True)
        return None
    print(f"{fault} run {i + 1}/{runs}: survived, recovered in {seconds:.1f} s", flush=True)
    return seconds


def summary(fault: str, results: list[float | None]) -> str:
    ok = [s for s in results if s is not None]
    if not ok:
        return f"{fault}: 0/{len(results)} survived"
    return (f"{fault}: {len(ok)}/{len(results)} survived; recovery median {statistics.median(ok):.1f} s, "
            f"min {min(ok):.1f} s, max {max(ok):.1f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--only", choices=["sigkill", "broker", "starve"])
    args = parser.parse_args()
    lines, lost, t0 = [], 0, time.monotonic()
    for fault, runner in (("sigkill", sigkill_runs), ("broker", broker_runs), ("starve", starve_runs)):
        if args.only in (None, fault):
            with tempfile.TemporaryDirectory(prefix=f"secateurs-{fault}-") as home:
                results = runner(args.runs, Path(home))
            lines.append(summary(fault, results))
            lost += results.count(None)
    print(*lines, f"({time.monotonic() - t0:.0f} s in all)", sep="\n")
    return 1 if lost else 0

if __name__ == "__main__":
    sys.exit(main())
