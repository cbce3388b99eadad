"""Local conversion, on the user's own machine: their PyTorch module to ONNX, their `.pth` state dict to
safetensors. The service never receives a pickle; these turn what a user has into what it accepts.

Both load the user's own files with `torch.load(weights_only=True)`, which reads tensors and plain
containers only and refuses any pickled code or object. The service itself never calls either.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from . import onnx_tools
from .errors import InputError


def load_factory(ref: str) -> Callable[[], Any]:
    """The callable `ref` names, importing the user's own module (their code, run on their machine)."""
    where, _, name = ref.rpartition(":")
    if not where or not name.isidentifier():
        raise InputError(f"the model must look like pkg.mod:factory or path/to/file.py:factory, got {ref!r}")
    from_file = where.endswith(".py")
    if from_file and not Path(where).is_file():
        raise InputError(f"no file {where}")
    # its own imports resolve as `python file.py` (the file's folder) or `python -m` (the current folder) has them
    folder = str(Path(where).resolve().parent if from_file else Path.cwd())
    sys.path.insert(0, folder)
    try:
        module = _import_file(Path(where)) if from_file else importlib.import_module(where)
    except ModuleNotFoundError as e:
        if e.name and not from_file and (where == e.name or where.startswith(e.name + ".")):
            raise InputError(f"cannot import {where}: no module named {e.name!r} (run from the folder "
                             "that holds it, or install it)") from None
        raise InputError(f"importing {where} raised ModuleNotFoundError: {_one_line(e)}") from None
    except Exception as e:
        raise InputError(f"importing {where} raised {type(e).__name__}: {_one_line(e)}") from None
    finally:
        sys.path.remove(folder)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise InputError(f"{where} has no callable {name!r}")
    return factory  # type: ignore[no-any-return]


def _import_file(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_secateurs_user_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and the like look their module up there
    spec.loader.exec_module(module)
    return module


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from `.safetensors`, or from a `.pth` holding a plain state dict or {"state_dict": ...}.

    The `.pth` is the user's own file on their own machine; `weights_only=True` still refuses anything
    in it that is not tensors and plain containers (a whole pickled model, TorchScript, an optimizer's
    custom objects)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no file {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as e:
            raise InputError(f"{path}: not readable safetensors: {_one_line(e)}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{path}: {_unreadable(e)}; save model.state_dict() with torch.save and give that") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise InputError(f"{path}: holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors, "
                         'or {"state_dict": ...})')
    strays = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if strays:
        raise InputError(f"{path}: not a state dict: {', '.join(strays[:3])} {'is' if len(strays) == 1 else 'are'} "
                         'not tensors (give a plain state dict or {"state_dict": ...})')
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DistributedDataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def to_safetensors(source: str | Path) -> tuple[bytes, int]:
    """A `.pth` state dict as safetensors bytes, and the number of tensors."""
    from safetensors.torch import save

    state = load_state_dict(source)
    # safetensors refuses tensors that share memory (tied weights): each is written on its own
    return save({k: v.detach().clone().contiguous() for k, v in state.items()}), len(state)


def export_module(ref: str, *, input_shape: list[int], weights: str | Path | None = None,
                  opset: int = 17) -> bytes:
    """The user's module as ONNX: built by the factory `ref`, their weights loaded strictly, exported with a
    dynamic batch axis, checked by onnx.checker and against the module itself in ONNX Runtime."""
    if len(input_shape) < 2 or any(d < 1 for d in input_shape):
        raise InputError(f"--input-shape must include the batch and be positive, e.g. 1,3,224,224, got {input_shape}")
    try:
        model = load_factory(ref)()
    except InputError:
        raise
    except Exception as e:  # the user's own code failed: say where, in one line
        raise InputError(f"{ref}() raised {type(e).__name__}: {_one_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"{ref} returned a {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        missing, unexpected = _load_strict(model, load_state_dict(weights))
        if missing or unexpected:
            raise InputError(f"{weights} does not fit {ref}: missing {_few(missing)}, unexpected {_few(unexpected)}")
    model = model.float().eval()
    example = torch.randn(*input_shape)
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as e:
        raise InputError(f"{ref} does not run on an input of shape {input_shape}: {_one_line(e)}") from None
    if not isinstance(out, torch.Tensor):
        raise InputError(f"{ref} returns a {type(out).__name__}; one output tensor is expected (a classifier's logits)")
    data = onnx_tools.export(model, example, input_name="input", output_names=["output"],
                             dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset=opset)
    probe = np.random.default_rng(0).standard_normal([2, *input_shape[1:]]).astype(np.float32)
    onnx_tools.verify(data, model, probe, [["batch", *out.shape[1:]]])
    return data


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {list(state[k].shape)} (model has {list(own[k].shape)})" for k in own
             if k in state and own[k].shape != state[k].shape]
    if wrong:
        raise InputError(f"the weights do not fit the model: {_few(wrong)}")
    if not missing and not unexpected:
        model.load_state_dict(state, strict=True)
    return missing, unexpected


def _unreadable(e: Exception) -> str:
    if "TorchScript" in str(e):
        return "a TorchScript archive, not a state dict"
    if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e):  # a class, not a tensor
        return ("holds pickled objects other than tensors (a whole model, custom classes), which "
                "torch.load(weights_only=True) refuses to run")
    return f"not a file torch.save wrote ({type(e).__name__}: {_one_line(e)[:120]})"


def _few(names: list[str]) -> str:
    if not names:
        return "none"
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _one_line(e: Exception) -> str:
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split())  # torch's messages carry terminal colours
    return text[:300] + ("..." if len(text) > 300 else "")

