"""`secateurs submit` and `secateurs jobs`: the service from a terminal or a pipeline, over HTTP only.

Exit codes: 0 succeeded (and every file asked for was saved), 2 bad input (refused before or at
submission), 3 the job failed (its `error.type` says why), 4 the job was cancelled, 5 the service is unreachable
or not ready, 6 the model is valid but uses something the engine cannot prune (refused at upload, or a job that
failed `unsupported-model`).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx
from pydantic import ValidationError
from secateurs.pruning.flags import FlagError, add_spec_flags, describe, parse_shape, spec_from_flags
from secateurs.pruning.spec import PruneSpec

from . import convert
from .config import ConfigError, config_path
from .sdk import APIError, Client, Job

BAD_INPUT, FAILED, CANCELLED, UNREACHABLE, UNSUPPORTED, INTERRUPTED = 2, 3, 4, 5, 6, 130
OUTCOME = {"succeeded": 0, "failed": FAILED, "cancelled": CANCELLED}


def _exit_code(status: str, error: dict[str, Any] | None) -> int:
    if status == "failed" and (error or {}).get("type") == "unsupported-model":
        return UNSUPPORTED
    return OUTCOME.get(status, 1)


class Refused(Exception):
    """Input refused on this machine, before anything is sent."""


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the service (default: $SECATEURS_URL, the config file, http://127.0.0.1:8000)")
    common.add_argument("--api-key", help=f"API key (default: $SECATEURS_API_KEY, then {config_path()})")
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout")

    p = sub.add_parser("submit", parents=[common], help="prune a model through the service",
                       description="Upload a model (and data), create a job; with --wait, follow it and download.")
    p.add_argument("model", nargs="?", help="the model: IN.onnx, or your module as path/to/file.py:factory or "
                   "pkg.mod:factory (exported to ONNX here first; with --input-shape and --weights W.pth)")
    p.add_argument("--arch", help="architecture name for safetensors weights (e.g. resnet50, resnet56_cifar)")
    p.add_argument("--weights", help="safetensors weights for --arch, or your state dict for a factory model")
    p.add_argument("--num-classes", type=int, help="classifier size for --arch")
    add_spec_flags(p)  # the same as `secateurs prune`; --calib and --eval are uploaded with the model
    p.add_argument("--webhook-url", help="where the service posts signed job events")
    p.add_argument("--webhook-event", action="append", dest="webhook_events",
                   help="event type to deliver (repeatable; default all)")
    p.add_argument("--wait", action="store_true", help="follow the job to its end (implied by -o and --report)")
    p.add_argument("-o", "--output", help="save the pruned ONNX here when the job succeeds")
    p.add_argument("--report", help="save the report JSON here when the job succeeds")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=_guarded(run_submit))

    jobs = sub.add_parser("jobs", help="list, show, cancel, follow and delete jobs on the service")
    actions = jobs.add_subparsers(dest="jobs_command", metavar="ACTION")
    actions.required = True
    p = actions.add_parser("list", parents=[common], help="the newest jobs first")
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    p.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    p.set_defaults(run=_guarded(run_list))
    for name, run, text in (("show", run_show, "a job's status, error and metrics"),
                            ("cancel", run_cancel, "cancel a queued or running job"),
                            ("delete", run_delete, "delete a finished job with its events and files")):
        p = actions.add_parser(name, parents=[common], help=text)
        p.add_argument("job_id", metavar="ID")
        p.set_defaults(run=_guarded(run))
    p = actions.add_parser("events", parents=[common], help="a job's events (--follow: live, to the end)")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--follow", "-f", action="store_true",
                   help="stream events until the job ends; the exit code is then the job's outcome")
    p.set_defaults(run=_guarded(run_events))

    convert.add_parsers(sub)


# -- the job spec ----------------------------------------------------------------------------------

def build_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The spec `secateurs prune` builds from the same flags (secateurs.pruning.flags), checked here."""
    try:
        spec = spec_from_flags(args)
        checked = PruneSpec.model_validate(spec)
    except FlagError as e:
        raise Refused(str(e)) from None
    except ValidationError as e:
        raise Refused(f"invalid spec: {describe(e)}") from None
    if checked.needs_data and not (args.calib or checked.calibration.dataset_id):
        what = f"recovery {checked.recovery.method!r}" if checked.signal_needs == ["weights"] \
            else f"signal {checked.signal_name!r}"
        raise Refused(f"spec.calibration.dataset_id: {what} needs calibration data: give --calib DATA.npz")
    return spec


# -- commands ----------------------------------------------------------------------------------------

def run_submit(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="secateurs-") as scratch:  # an exported model lives only as long
        return _submit(args, Path(scratch))


def _submit(args: argparse.Namespace, scratch: Path) -> int:
    spec = build_spec(args)
    for flag, path in (("--calib", args.calib), ("--eval", args.evaluation)):
        if path and not Path(path).is_file():
            raise Refused(f"{flag}: no file {path}")
    for flag, path in (("-o", args.output), ("--report", args.report)):
        if path and not Path(path).resolve().parent.is_dir():
            raise Refused(f"{flag}: the folder {Path(path).resolve().parent} does not exist")
    source = _model_source(args, scratch)
    wait = bool(args.wait or args.output or args.report)
    show = Progress(sys.stderr, enabled=not args.quiet)
    with _client(args) as client:
        client.ready()
        show.note(f"uploading {source.name}")
        model = client.models.upload(source, arch=args.arch, num_classes=args.num_classes)
        for section, path in (("calibration", args.calib), ("evaluation", args.evaluation)):
            if path:
                show.note(f"uploading {Path(path).name}")
                spec[section] = {**spec.get(section, {}), "dataset_id": client.datasets.upload(path)["id"]}
        job = client.jobs.create(model, spec, webhook_url=args.webhook_url, webhook_events=args.webhook_events)
        show.note(f"job {job.id} {job.status} (follow it: secateurs jobs events {job.id} --follow)")
        if not wait:
            print(json.dumps(job.data) if args.json else job.id)
            return 0
        try:
            for event in job.events():
                show.update(event)
        except KeyboardInterrupt:
            show.close()
            _say(f"stopped watching; job {job.id} goes on (secateurs jobs cancel {job.id} to stop it)")
            return INTERRUPTED
        show.close()
        job.refresh()
        saved = {}
        if job.status == "succeeded":
            for name, path in (("model.onnx", args.output), ("report.json", args.report)):
                if path:
                    saved[name] = str(job.download(path, name).resolve())
    if args.json:
        print(json.dumps({**job.data, "saved": saved}))
    elif job.status == "succeeded":
        print(_summary(job.data))
        for path in saved.values():
            print(f"wrote {path}")
    _outcome_line(job.data)
    return _exit_code(job.status, job.data.get("error"))


def run_list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise Refused("--limit must be at least 1")
    with _client(args) as client:
        jobs = [j.data for j in itertools.islice(client.jobs.list(status=args.status, limit=min(args.limit, 100)),
                                                 args.limit)]
    if args.json:
        print(json.dumps(jobs))
        return 0
    print(f"{'ID':<30} {'STATUS':<10} {'STAGE':<10} {'PROGRESS':>8}  CREATED")
    for j in jobs:
        print(f"{j['id']:<30} {j['status']:<10} {j.get('stage') or '-':<10} {(j.get('progress') or 0) * 100:7.0f}%  "
              f"{j.get('created_at') or '-'}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.jobs.get(args.job_id).data
    if args.json:
        print(json.dumps(job))
        return 0
    for key in ("id", "status", "stage", "progress", "model_id", "created_at", "started_at", "finished_at"):
        if job.get(key) is not None:
            print(f"{key:<12} {job[key]}")
    if job.get("error"):
        print(f"{'error':<12} {job['error']['type']}: {job['error']['message']}")
    print(f"{'spec':<12} {_spec_line(job.get('spec') or {})}")
    if job.get("metrics"):
        print(f"{'result':<12} {_summary(job)}")
    for name, url in (job.get("artifacts") or {}).items():
        print(f"{name:<12} {url}")
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.jobs.get(args.job_id).cancel().data
    if args.json:
        print(json.dumps(job))
    elif job["status"] == "running":
        print(f"{job['id']}: cancel requested; the worker stops it at its next step")
    elif job["status"] == "cancelled":
        print(f"{job['id']}: cancelled")
    else:
        print(f"{job['id']}: already {job['status']}, nothing to cancel")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    """A queued or running job is refused by the service (409, exit 2) with what to do: cancel it first."""
    with _client(args) as client:
        client.jobs.delete(args.job_id)
    print(json.dumps({"id": args.job_id, "deleted": True}) if args.json else f"{args.job_id}: deleted")
    return 0


def run_events(args: argparse.Namespace) -> int:
    last: dict[str, Any] = {}
    with _client(args) as client:
        job = Job(client, {"id": args.job_id, "status": "unknown"})
        for event in job.events() if args.follow else job.history():
            print(json.dumps(event) if args.json else _event_line(event), flush=True)
            last = event
    if not args.follow:
        return 0
    return _exit_code(last.get("type", ""), {"type": (last.get("data") or {}).get("error_type")})


# -- output ------------------------------------------------------------------------------------------

class Progress:
    """A live bar redrawn on one line of a terminal; elsewhere (CI logs, pipes) a plain line per stage
    and per tenth of progress."""

    def __init__(self, stream: IO[str], enabled: bool = True) -> None:
        self.stream, self.enabled = stream, enabled
        self.tty = enabled and stream.isatty()
        self.drawn, self.fraction, self.stage, self.started = False, 0.0, "", time.monotonic()
        self.printed = (None, -1.0)

    def update(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if event.get("progress") is not None:
            self.fraction = float(event["progress"])
        stage = str(event.get("stage") or event.get("type") or "")
        self.stage = stage
        data = event.get("data") or {}
        macs = data.get("macs_kept", data.get("macs_fraction"))
        tail = f"  MACs {float(macs) * 100:.1f}%" if isinstance(macs, (int, float)) else ""
        message = str(event.get("message") or "")
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns
            bar = "#" * int(self.fraction * 24)
            line = (f"[{bar:<24}] {self.fraction * 100:3.0f}% {time.monotonic() - self.started:5.0f}s "
                    f"{stage:<9} {message}")
            room = width - 1 - len(tail)
            line = (line[:room] if len(line) > room else line.ljust(room)) + tail
            self.stream.write("\r" + line)
            self.stream.flush()
            self.drawn = True
            return
        previous_stage, previous_fraction = self.printed
        if stage != previous_stage or self.fraction >= previous_fraction + 0.1 or event.get("type") != "progress":
            self.printed = (stage, self.fraction)
            self.stream.write(f"[{self.fraction * 100:3.0f}%] {stage}: {message}{tail}\n")
            self.stream.flush()

    def note(self, text: str) -> None:
        if self.enabled:
            self.close()
            self.stream.write(f"secateurs: {text}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


def _summary(job: dict[str, Any]) -> str:
    m = job.get("metrics") or {}
    parts = [f"{job['id']} {job['status']}"]
    for key, label in (("macs_kept", "MACs"), ("params_kept", "params")):
        if isinstance(m.get(key), (int, float)):
            parts.append(f"{label} {m[key] * 100:.1f}% kept")
    if isinstance(m.get("latency_ms_before"), (int, float)) and isinstance(m.get("latency_ms_after"), (int, float)):
        parts.append(f"latency {m['latency_ms_before']:.3f} -> {m['latency_ms_after']:.3f} ms")
    if isinstance(m.get("accuracy_after"), (int, float)):
        parts.append(f"accuracy {m.get('accuracy_before', 0) * 100:.2f}% -> {m['accuracy_after'] * 100:.2f}%")
    elif isinstance(m.get("agreement"), (int, float)):
        parts.append(f"top-1 agreement {m['agreement'] * 100:.2f}%")
    return ", ".join(parts)


def _spec_line(spec: dict[str, Any]) -> str:
    """The choices that matter at a glance; `--json` has the whole spec."""
    signal = spec.get("signal")
    parts = [f"signal {signal if isinstance(signal, str) else json.dumps(signal)}"]
    parts += [f"target {k}={v}" for k, v in (spec.get("target") or {}).items() if v is not None]
    parts.append(f"recovery {(spec.get('recovery') or {}).get('method', 'none')}")
    parts += [f"{name} {ref['dataset_id']}" for name in ("calibration", "evaluation")
              if (ref := spec.get(name) or {}).get("dataset_id")]
    return ", ".join(parts)


def _event_line(e: dict[str, Any]) -> str:
    progress = f"{e['progress'] * 100:3.0f}%" if e.get("progress") is not None else "   -"
    return f"{e['id']:>6} {e.get('created_at') or '':<32} {e['type']:<16} {e.get('stage') or '-':<10} {progress} " \
           f"{e.get('message') or ''}"


def _outcome_line(job: dict[str, Any]) -> None:
    if job["status"] == "failed":
        error = job.get("error") or {"type": "internal-error", "message": "no error given"}
        _say(f"job {job['id']} failed ({error['type']}): {error['message']}")
    elif job["status"] == "cancelled":
        _say(f"job {job['id']} was cancelled")


def _say(text: str) -> None:
    print("secateurs: " + " ".join(text.split()), file=sys.stderr, flush=True)


# -- plumbing ----------------------------------------------------------------------------------------

def _model_source(args: argparse.Namespace, scratch: Path) -> Path:
    """The file to upload: the model given, or the user's module exported to ONNX into `scratch`."""
    if args.model and convert.looks_like_factory(args.model):
        return _exported(args, scratch)
    if args.model and args.weights:
        raise Refused("give either IN.onnx or --arch with --weights, not both")
    if args.weights and not args.arch:
        raise Refused("--weights needs --arch (or a model given as file.py:factory)")
    source = args.model or args.weights
    if not source:
        raise Refused("give a model: IN.onnx, file.py:factory, or --arch NAME --weights W.safetensors")
    if not Path(source).is_file():
        raise Refused(f"no file {source}")
    return Path(source)


def _exported(args: argparse.Namespace, scratch: Path) -> Path:
    from secateurs.pruning.errors import PruningError

    if args.arch:
        raise Refused(f"--arch is for safetensors weights; {args.model} is exported to ONNX instead")
    if not args.input_shape:
        raise Refused(f"a model given as {args.model} needs --input-shape, e.g. 1,3,224,224, to export it")
    where, _, name = args.model.rpartition(":")
    path = scratch / f"{Path(where).stem.split('.')[-1]}_{name}.onnx"
    if not args.quiet:
        _say(f"exporting {args.model} to ONNX on this machine")
    try:
        convert.export_to_file(args.model, path, input_shape=parse_shape(args.input_shape),
                               weights=args.weights, command="submit")
    except (convert.NeedsTorch, PruningError, ValueError) as e:  # PruningError: InputError or a failed check
        raise Refused(str(e)) from None
    return path


def _client(args: argparse.Namespace) -> Client:
    client = Client(args.url, args.api_key)
    args.resolved_url = client.base_url  # for the error message when it cannot be reached
    return client


def _guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Every failure as one line on stderr and the exit code the contract gives it."""

    @functools.wraps(run)
    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (Refused, ConfigError) as e:
            _say(f"error: {e}")
            return BAD_INPUT
        except ValidationError as e:  # a spec the SDK refused
            _say(f"error: invalid spec: {describe(e)}")
            return BAD_INPUT
        except APIError as e:
            return _api_error(e, args)
        except httpx.TransportError as e:
            _say(f"error: cannot reach the service at {getattr(args, 'resolved_url', args.url)}: "
                 f"{type(e).__name__}: {e}")
            return UNREACHABLE
        except OSError as e:  # a file we read or write
            _say(f"error: {e}")
            return BAD_INPUT

    return guarded


def _api_error(e: APIError, args: argparse.Namespace) -> int:
    title, detail = e.problem.get("title") or "error", e.problem.get("detail") or ""
    if e.status >= 500:
        _say(f"error: the service is not ready ({e.status} {title}): {detail}")
        return UNREACHABLE
    hint = ""
    if e.status == 401:
        hint = f" (the key comes from --api-key, $SECATEURS_API_KEY or {config_path()})"
    _say(f"error: refused ({e.status} {title}): {detail}{hint}")
    return UNSUPPORTED if str(e.problem.get("type", "")).endswith("/unsupported-model") else BAD_INPUT

