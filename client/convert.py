"""`secateurs export` and `secateurs convert-weights`: local conversion, on the user's machine, never on the
server. The service accepts ONNX and safetensors only; these turn a PyTorch module and a `.pth` state dict
into them. They need torch, so in the light client they say which extra to install.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from secateurs.pruning.flags import parse_shape

EXTRA = "convert"
#: `path/to/file.py:factory` or `package.module:factory`.
FACTORY = re.compile(r"(?P<where>[^:]+\.py|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<name>[A-Za-z_]\w*)")


class NeedsTorch(Exception):
    """Local conversion asked for in an install without torch."""


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("export", help="export your PyTorch module to ONNX, on this machine",
                       description="Build your module with its factory, load your weights, export ONNX "
                                   "(dynamic batch) and check it against the module in ONNX Runtime.")
    p.add_argument("--module", required=True, metavar="REF",
                   help="the factory that builds the model: pkg.mod:factory or path/to/file.py:factory")
    p.add_argument("--weights", help="your state dict (.pth, or .safetensors); default: the factory's own weights")
    p.add_argument("--input-shape", required=True, help="input shape with batch, e.g. 1,3,224,224")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (13 or newer; default 17)")
    p.add_argument("-o", "--output", required=True, help="where to write the ONNX file")
    p.set_defaults(run=run_export)

    p = sub.add_parser("convert-weights", help="convert a .pth state dict to safetensors, on this machine",
                       description='A plain state dict or {"state_dict": ...} in, safetensors out '
                                   "(for --arch NAME --weights W.safetensors).")
    p.add_argument("weights", help="the state dict (.pth)")
    p.add_argument("-o", "--output", required=True, help="where to write the .safetensors file")
    p.set_defaults(run=run_convert_weights)


def engine(command: str) -> ModuleType:
    """`secateurs.pruning.convert`, or one line saying which extra to install."""
    try:
        from secateurs.pruning import convert
    except ModuleNotFoundError as e:
        raise NeedsTorch(f"`secateurs {command}` converts on this machine and needs torch and onnx (missing "
                         f"module {e.name!r}): pip install 'secateurs[{EXTRA}]'") from None
    return convert


def looks_like_factory(text: str) -> bool:
    """`file.py:factory` or `pkg.mod:factory`, and no file of that name (checked without torch)."""
    return FACTORY.fullmatch(text) is not None and not Path(text).exists()


def export_to_file(ref: str, out: Path, *, input_shape: list[int], weights: str | None, opset: int = 17,
                   command: str = "export") -> None:
    data = engine(command).export_module(ref, input_shape=input_shape, weights=weights, opset=opset)
    _write(out, data)


def run_export(args: argparse.Namespace) -> int:
    return _guard(lambda: _export(args))


def run_convert_weights(args: argparse.Namespace) -> int:
    return _guard(lambda: _convert(args))


def _export(args: argparse.Namespace) -> None:
    if FACTORY.fullmatch(args.module) is None:
        raise ValueError(f"--module must look like pkg.mod:factory or path/to/file.py:factory, got {args.module!r}")
    if not 13 <= args.opset <= 21:
        raise ValueError(f"--opset must be between 13 (the oldest the service takes) and 21, got {args.opset}")
    out = Path(args.output)
    _check_folder(out)
    export_to_file(args.module, out, input_shape=parse_shape(args.input_shape), weights=args.weights,
                   opset=args.opset)
    print(f"wrote {out} (ONNX opset {args.opset}, batch dynamic, checked against the module in ONNX Runtime)")


def _convert(args: argparse.Namespace) -> None:
    out = Path(args.output)
    _check_folder(out)
    data, count = engine("convert-weights").to_safetensors(args.weights)
    _write(out, data)
    print(f"wrote {out} ({count} tensors)")


def _check_folder(out: Path) -> None:
    if not out.resolve().parent.is_dir():
        raise ValueError(f"-o: the folder {out.resolve().parent} does not exist")


def _write(out: Path, data: bytes) -> None:
    from secateurs.pruning.cli import write_atomic

    write_atomic(out, data)


def _guard(step: Callable[[], None]) -> int:
    """Bad input of any kind, and a missing extra, as one line and exit code 2; a failed check as 1."""
    from secateurs.pruning.errors import InputError, PruningError

    try:
        step()
    except (NeedsTorch, InputError, ValueError, OSError) as e:
        print(f"secateurs: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except PruningError as e:
        print(f"secateurs: failed: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    return 0
