"""Fixes for our dependencies' disagreements, each applied only where the bug is present."""

from __future__ import annotations


def onnx2torch_opset_lookup() -> None:
    """onnx2torch's converted `Shape`, `Gather`, `Squeeze`, ... ask `torch.onnx.symbolic_helper.GLOBALS` for the
    opset being exported, and fall back to the `_export_onnx_opset_version` that torch 2.x removed. Since torch
    moved the TorchScript exporter to `torch.onnx._internal.torchscript_exporter`, the public `symbolic_helper`
    is a shim that re-exports neither, so every graph that keeps a `Shape` op (segmenters, detectors) failed at
    re-export with an AttributeError (torch 2.14, onnx2torch 1.5.15). Point the shim at the exporter's GLOBALS."""
    from torch.onnx import symbolic_helper

    if hasattr(symbolic_helper, "GLOBALS") or hasattr(symbolic_helper, "_export_onnx_opset_version"):
        return
    try:
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:  # another layout: nothing we know how to mend
        return
    symbolic_helper.GLOBALS = GLOBALS  # type: ignore[attr-defined]
