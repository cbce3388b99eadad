"""The job spec from command-line flags, shared by `secateurs prune` (the engine) and `secateurs submit` (the
service), so that the same flags always make the same spec. Pure data: argparse, json and pydantic only, so the
light client imports it without torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .spec import Target


class FlagError(ValueError):
    """A flag or the --spec file cannot make a spec; the message names the flag."""


def add_spec_flags(p: argparse.ArgumentParser) -> None:
    """The flags that set fields of the job spec, and the data files the spec refers to."""
    p.add_argument("--signal", help="pruning signal (`GET /v1/signals` and the README list them)")
    p.add_argument("--target", help="budget kept, e.g. macs=0.5, params=0.6, channels=0.7, latency_ms=5")
    p.add_argument("--scope", choices=["global", "local"])
    p.add_argument("--round-to", type=int, help="keep channel counts at multiples of this")
    p.add_argument("--protect", action="append", help="regex of layer names never pruned (repeatable)")
    p.add_argument("--steps", type=int, help="prune in this many rounds")
    p.add_argument("--input-shape", help="input shape with batch, e.g. 1,3,224,224")
    p.add_argument("--calib", help="calibration data .npz (x, optional y)")
    p.add_argument("--eval", dest="evaluation", help="evaluation data .npz (x, y)")
    p.add_argument("--recover", help="recovery method: none, bn_recalibrate, reconstruct, distill, finetune")
    p.add_argument("--max-drop", type=float, help="most fidelity against the original may drop, in points of its "
                   "metric (e.g. 1 = one point of top-1 agreement); past it the job fails")
    p.add_argument("--spec", help="job spec JSON file; flags override its fields")


def spec_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    """--spec's object with each flag overriding its field (nested fields merged), not yet validated."""
    spec: dict[str, Any] = {}
    if args.spec:
        try:
            spec = json.loads(Path(args.spec).read_text())
        except (OSError, ValueError) as e:
            raise FlagError(f"cannot read spec {args.spec}: {e}") from None
        if not isinstance(spec, dict):
            raise FlagError(f"spec {args.spec} must hold a JSON object")
    if args.signal:
        spec["signal"] = args.signal
    if args.target:
        try:
            spec["target"] = Target.parse_cli(args.target).model_dump(exclude_none=True)
        except ValueError as e:  # pydantic's ValidationError is a ValueError too
            raise FlagError(f"--target: {describe(e)}") from None
    spec.update({k: getattr(args, k) for k in ("scope", "round_to", "protect") if getattr(args, k) is not None})
    for section, key, value in (("schedule", "steps", args.steps), ("recovery", "method", args.recover or None),
                                ("fidelity", "max_drop", getattr(args, "max_drop", None))):
        if value is not None:
            spec[section] = {**spec.get(section, {}), key: value}
    if args.input_shape:
        spec["input_shape"] = parse_shape(args.input_shape)
    return spec


def parse_shape(text: str) -> list[int]:
    """`1,3,224,224` or `1x3x224x224`."""
    try:
        return [int(v) for v in text.replace("x", ",").split(",")]
    except ValueError:
        raise FlagError(f"--input-shape must look like 1,3,224,224, got {text!r}") from None


def describe(e: Exception) -> str:
    """The first problem of a validation error, with the field it is in."""
    if isinstance(e, ValidationError):
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        return f"{where}: {err['msg']}"
    return str(e)
