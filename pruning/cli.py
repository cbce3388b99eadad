"""`secateurs prune`: the engine from a terminal, no server involved."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import FidelityError, InputError, PruningError, UnsupportedModelError
from .flags import FlagError, add_spec_flags, describe, spec_from_flags
from .spec import PruneSpec


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("prune", help="prune a model locally (no server)", description=__doc__)
    p.add_argument("model", nargs="?", help="the model: IN.onnx (or use --arch with --weights)")
    p.add_argument("-o", "--output", required=True, help="where to write the pruned ONNX")
    p.add_argument("--arch", help="architecture name for safetensors weights (e.g. resnet50, resnet56_cifar)")
    p.add_argument("--weights", help="safetensors weights for --arch")
    p.add_argument("--num-classes", type=int, help="classifier size for --arch (guessed from the weights)")
    add_spec_flags(p)
    p.add_argument("--report", help="write the report JSON here")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.set_defaults(run=run)


def build_spec(args: argparse.Namespace) -> PruneSpec:
    try:
        return PruneSpec.model_validate(spec_from_flags(args))
    except FlagError as e:
        raise InputError(str(e)) from None
    except ValidationError as e:
        raise InputError(f"invalid spec: {describe(e)}") from None


def run(args: argparse.Namespace) -> int:
    from .data import load_npz
    from .loading import read_file
    from .pipeline import prune

    spec = build_spec(args)
    if args.model and args.weights:
        raise InputError("give either IN.onnx or --arch with --weights, not both")
    source = args.model or args.weights
    if not source:
        raise InputError("give a model: IN.onnx, or --arch NAME --weights W.safetensors")
    if args.weights and not args.arch:
        raise InputError("--weights needs --arch")
    out = Path(args.output)
    if not out.parent.exists():
        raise InputError(f"the output folder {out.parent} does not exist")
    data = read_file(source)
    calib = load_npz(read_file(args.calib)) if args.calib else None
    evaluation = load_npz(read_file(args.evaluation)) if args.evaluation else None

    def progress(stage: str, fraction: float, message: str, metrics: dict[str, Any]) -> None:
        if not args.quiet:
            print(f"[{fraction * 100:3.0f}%] {stage}: {message}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        if not os.environ.get("SECATEURS_DEBUG"):  # our dependencies' warnings are not the user's to read
            warnings.simplefilter("ignore")
        try:
            result = prune(
                data, spec, arch=args.arch, num_classes=args.num_classes,
                calibration=calib, evaluation=evaluation, progress=progress,
            )
        except FidelityError as e:  # the model is not written; the report is, to show what was lost
            if args.report:
                write_atomic(Path(args.report), json.dumps(e.report, indent=2).encode())
            raise
    write_atomic(out, result.onnx)
    if args.report:
        write_atomic(Path(args.report), json.dumps(result.report, indent=2).encode())
    print(summary(result.report, out))
    f = result.report.get("fidelity", {})
    if not f.get("measured"):
        print(f"secateurs: fidelity not measured: {f.get('reason', 'no data')}", file=sys.stderr)
    return 0


def summary(r: dict[str, Any], out: Path) -> str:
    lines = [
        f"MACs     {_si(r['macs_before'])} -> {_si(r['macs_after'])}  ({r['macs_kept'] * 100:.1f}% kept)",
        f"params   {_si(r['params_before'])} -> {_si(r['params_after'])}  ({r['params_kept'] * 100:.1f}% kept)",
        f"latency  {r['latency_ms_before']:.3f} -> {r['latency_ms_after']:.3f} ms  "
        f"(ONNX Runtime, batch {r['latency_batch']}, {r['latency_threads']} thread(s))",
        f"verified max |ONNX - PyTorch| = {r['max_abs_diff']:.2e}",
    ]
    f = r.get("fidelity", {})
    for o in f.get("outputs", []):
        line = f"fidelity {o['output']}: {o['metric']} {o['value']:.4f} against the original ({o['kind']}, " \
               f"{o['samples']} {f['data']} samples)"
        if "accuracy_after" in o:
            line += f", accuracy {o['accuracy_before'] * 100:.2f}% -> {o['accuracy_after'] * 100:.2f}%"
        lines.append(line)
    if f.get("max_drop") is not None and "held" in f:
        lines.append(f"fidelity budget {f['max_drop']:g} points: {'held' if f['held'] else 'missed'}")
    if f and not f.get("measured"):
        lines.append("fidelity not measured")
    search = r.get("search")
    if search and "chosen_macs_fraction" in search:
        tried = ", ".join(f"{p['macs_fraction']:g}{'' if p['held'] else ' (over)'}" for p in search["points"])
        lines.append(f"budget search chose macs {search['chosen_macs_fraction']:g} of {len(search['points'])} "
                     f"tried ({tried}) in {search['seconds']:.0f} s")
    lines.append(f"wrote {out}")
    return "\n".join(lines)


def _si(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def write_atomic(path: Path, data: bytes) -> None:
    """Write next to the destination and rename: a failure never leaves a half-written file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# Most specific first: the word the line starts with, and the exit code (SPEC.md).
_ERROR_KINDS: tuple[tuple[type[PruningError], str, int], ...] = (
    (FidelityError, "fidelity budget missed", 3),
    (UnsupportedModelError, "unsupported", 6),
    (InputError, "error", 2),
    (PruningError, "failed", 1),
)


def handle_errors(exc: BaseException) -> int | None:
    """One line and an exit code for the engine's own errors; None for anything else. A valid model that uses
    something the engine cannot prune (6) is told apart from a bad input (2)."""
    for kind, word, code in _ERROR_KINDS:
        if isinstance(exc, kind):
            print(f"secateurs: {word}: {exc}", file=sys.stderr)
            return code
    return None
