"""`secateurs prune`: the engine from a terminal, no server involved."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import InputError, PruningError
from .spec import PruneSpec, Target


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("prune", help="prune a model locally (no server)", description=__doc__)
    p.add_argument("model", nargs="?", help="the model: IN.onnx (or use --arch with --weights)")
    p.add_argument("-o", "--output", required=True, help="where to write the pruned ONNX")
    p.add_argument("--arch", help="architecture name for safetensors weights (e.g. resnet50, resnet56_cifar)")
    p.add_argument("--weights", help="safetensors weights for --arch")
    p.add_argument("--num-classes", type=int, help="classifier size for --arch (guessed from the weights)")
    p.add_argument("--signal", help="pruning signal (see the catalogue: l2_norm, l1_norm, fpgm, bn_scale, random)")
    p.add_argument("--target", help="budget kept, e.g. macs=0.5, params=0.6, channels=0.7")
    p.add_argument("--scope", choices=["global", "local"])
    p.add_argument("--round-to", type=int, help="keep channel counts at multiples of this")
    p.add_argument("--protect", action="append", help="regex of layer names never pruned (repeatable)")
    p.add_argument("--steps", type=int, help="prune in this many rounds")
    p.add_argument("--input-shape", help="input shape with batch, e.g. 1,3,224,224")
    p.add_argument("--calib", help="calibration data .npz (x, optional y)")
    p.add_argument("--eval", dest="evaluation", help="evaluation data .npz (x, y)")
    p.add_argument("--recover", help="recovery method")
    p.add_argument("--spec", help="job spec JSON file; flags override its fields")
    p.add_argument("--report", help="write the report JSON here")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.set_defaults(run=run)


def build_spec(args: argparse.Namespace) -> PruneSpec:
    base: dict[str, Any] = {}
    if args.spec:
        try:
            base = json.loads(Path(args.spec).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"cannot read spec {args.spec}: {e}") from None
        if not isinstance(base, dict):
            raise InputError(f"spec {args.spec} must hold a JSON object")
    if args.signal:
        base["signal"] = args.signal
    if args.target:
        try:
            base["target"] = Target.parse_cli(args.target).model_dump(exclude_none=True)
        except (ValueError, ValidationError) as e:
            raise InputError(f"--target: {_first_error(e)}") from None
    for key in ("scope", "round_to", "protect"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    if args.steps is not None:
        base["schedule"] = {**base.get("schedule", {}), "steps": args.steps}
    if args.recover:
        base["recovery"] = {**base.get("recovery", {}), "method": args.recover}
    if args.input_shape:
        try:
            base["input_shape"] = [int(v) for v in args.input_shape.replace("x", ",").split(",")]
        except ValueError:
            raise InputError(f"--input-shape must look like 1,3,224,224, got {args.input_shape!r}") from None
    try:
        return PruneSpec.model_validate(base)
    except ValidationError as e:
        raise InputError(f"invalid spec: {_first_error(e)}") from None


def _first_error(e: Exception) -> str:
    if isinstance(e, ValidationError):
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        return f"{where}: {err['msg']}"
    return str(e)


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

    result = prune(
        data, spec, arch=args.arch, num_classes=args.num_classes,
        calibration=calib, evaluation=evaluation, progress=progress,
    )
    _write_atomic(out, result.onnx)
    if args.report:
        _write_atomic(Path(args.report), json.dumps(result.report, indent=2).encode())
    print(summary(result.report, out))
    return 0


def summary(r: dict[str, Any], out: Path) -> str:
    lines = [
        f"MACs     {_si(r['macs_before'])} -> {_si(r['macs_after'])}  ({r['macs_kept'] * 100:.1f}% kept)",
        f"params   {_si(r['params_before'])} -> {_si(r['params_after'])}  ({r['params_kept'] * 100:.1f}% kept)",
        f"latency  {r['latency_ms_before']:.3f} -> {r['latency_ms_after']:.3f} ms  "
        f"(ONNX Runtime, batch {r['latency_batch']}, {r['latency_threads']} thread(s))",
        f"verified max |ONNX - PyTorch| = {r['max_abs_diff']:.2e}",
    ]
    if "agreement" in r:
        line = f"top-1 agreement with the original {r['agreement'] * 100:.2f}%"
        if "accuracy_after" in r:
            line += f", accuracy {r['accuracy_before'] * 100:.2f}% -> {r['accuracy_after'] * 100:.2f}%"
        lines.append(line)
    lines.append(f"wrote {out}")
    return "\n".join(lines)


def _si(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def _write_atomic(path: Path, data: bytes) -> None:
    """Write next to the destination and rename: a failure never leaves a half-written file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def handle_errors(exc: BaseException) -> int | None:
    """One line and an exit code for the engine's own errors; None for anything else."""
    if isinstance(exc, InputError):
        print(f"secateurs: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, PruningError):
        print(f"secateurs: failed: {exc}", file=sys.stderr)
        return 1
    return None
