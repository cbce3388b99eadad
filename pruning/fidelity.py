"""Fidelity: the pruned model against the ORIGINAL, output by output, in the terms of what each output is.

An output's kind is read from its shape and the op that produces it (a trailing Softmax, Sigmoid or LogSoftmax
says the tensor holds probabilities or log-probabilities):
- `classes` [N, C]: top-1 agreement (the headline), KL divergence of the class distributions, and real accuracy
  when labels are given;
- `map` [N, 1, H, W] (a probability or logit map: text regions, saliency): IoU of the thresholded maps, and PSNR;
- `segmentation` [N, C, H, W], C >= 2: mean IoU of the argmax maps over the classes the original finds, and PSNR;
- `sequence` [T, N, C] or [N, T, C] (CTC recognizers): exact match of the greedy CTC decodes (the headline) and
  per-step agreement;
- anything else (`values`: detection heads before NMS, embeddings, regressions): cosine similarity.

Each headline metric is 1.0 for the original against itself; its drop, in points, is 100 x (1 - value), the unit
of the spec's `fidelity.max_drop`. Measured on data no signal or recovery step saw: the evaluation set, or a
held-out part of the calibration data (`split`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from .data import Dataset

HELD_OUT_FRACTION = 0.2
MIN_HELD_OUT = 4
MIN_TO_SPLIT = 10  # fewer calibration samples than this are all used for calibration; fidelity is then not measured


@dataclass
class OutputKind:
    name: str
    kind: str  # classes | map | segmentation | sequence | values
    activation: str | None  # softmax | sigmoid | log_softmax | None: what the output already is
    batch_axis: int = 0

    @property
    def metric(self) -> str:
        return {"classes": "top1_agreement", "map": "iou", "segmentation": "miou", "sequence": "exact_match",
                "values": "cosine"}[self.kind]


def split(calibration: Dataset) -> tuple[Dataset, Dataset | None]:
    """(what signals and recovery may see, what fidelity is measured on): a seeded fifth of the samples (at least
    MIN_HELD_OUT) is held out, or nothing when there are fewer than MIN_TO_SPLIT."""
    n = len(calibration)
    if n < MIN_TO_SPLIT:
        return calibration, None
    held = max(MIN_HELD_OUT, int(round(n * HELD_OUT_FRACTION)))
    order = np.random.default_rng(0).permutation(n)
    keep, out = np.sort(order[held:]), np.sort(order[:held])

    def take(idx: np.ndarray) -> Dataset:
        return Dataset(calibration.x[idx], None if calibration.y is None else calibration.y[idx])

    return take(keep), take(out)


def _producers(proto: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {t: n for n in proto.graph.node for t in n.output}


def _activation(proto: onnx.ModelProto, name: str) -> str | None:
    by_output = _producers(proto)
    node = by_output.get(name)
    seen = 0
    while node is not None and node.op_type in ("Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
                                                "Flatten") and seen < 8:
        node = by_output.get(node.input[0])
        seen += 1
    if node is None:
        return None
    return {"Softmax": "softmax", "Sigmoid": "sigmoid", "LogSoftmax": "log_softmax"}.get(node.op_type)


def infer_kinds(proto: onnx.ModelProto, shapes: list[tuple[int, ...]], batch_axes: list[int]) -> list[OutputKind]:
    """Each output's kind from its shape at the probe (batch on `batch_axes[i]`) and its producing op."""
    kinds = []
    for out, shape, b in zip(proto.graph.output, shapes, batch_axes, strict=True):
        act = _activation(proto, out.name)
        rank = len(shape)
        if rank == 2 and b == 0 and shape[1] >= 2:
            kind = "classes"
        elif rank == 4 and b == 0:
            kind = "map" if shape[1] == 1 else "segmentation"
        elif rank == 3 and act in ("softmax", "log_softmax") and b in (0, 1):
            kind = "sequence"
        else:
            kind = "values"
        kinds.append(OutputKind(out.name, kind, act, b))
    return kinds


def _probs(x: np.ndarray, activation: str | None, axis: int) -> np.ndarray:
    x = x.astype(np.float64)
    if activation == "softmax":
        return np.clip(x, 0.0, 1.0)
    if activation == "log_softmax":
        return np.exp(x)
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _map_probs(x: np.ndarray, activation: str | None) -> np.ndarray:
    x = x.astype(np.float64)
    return x if activation == "sigmoid" else 1.0 / (1.0 + np.exp(-x))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of `b` against `a`, with the range of `a` as the peak."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    peak = float(a.max() - a.min()) or 1.0
    return float("inf") if mse == 0 else 10.0 * np.log10(peak * peak / mse)


def _ctc_decode(steps: np.ndarray) -> tuple[int, ...]:
    """Greedy CTC: the argmax at each step, repeats collapsed, blanks (class 0) dropped."""
    out, prev = [], -1
    for s in steps.tolist():
        if s != prev and s != 0:
            out.append(s)
        prev = s
    return tuple(out)


def compare(kind: OutputKind, before: np.ndarray, after: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    """The kind's metrics of `after` against `before` (all samples of one output, batch on kind.batch_axis)."""
    n = before.shape[kind.batch_axis]
    result: dict[str, Any] = {"output": kind.name, "kind": kind.kind, "metric": kind.metric, "samples": int(n)}
    if kind.kind == "classes":
        top0, top1 = before.argmax(1), after.argmax(1)
        p, q = _probs(before, kind.activation, 1), _probs(after, kind.activation, 1)
        kl = np.sum(p * (np.log(np.clip(p, 1e-12, None)) - np.log(np.clip(q, 1e-12, None))), axis=1)
        result.update(value=float((top0 == top1).mean()), kl=float(kl.mean()))
        if labels is not None and len(labels) == n:
            result.update(accuracy_before=float((top0 == labels).mean()), accuracy_after=float((top1 == labels).mean()))
    elif kind.kind == "map":
        p, q = _map_probs(before, kind.activation), _map_probs(after, kind.activation)
        a, b = p > 0.5, q > 0.5
        union = int(np.logical_or(a, b).sum())
        result.update(value=1.0 if union == 0 else float(np.logical_and(a, b).sum() / union), psnr=_psnr(p, q),
                      positive_fraction=float(a.mean()))
    elif kind.kind == "segmentation":
        a, b = before.argmax(1), after.argmax(1)
        ious = []
        for c in np.unique(a):
            union = np.logical_or(a == c, b == c).sum()
            ious.append(np.logical_and(a == c, b == c).sum() / union)
        result.update(value=float(np.mean(ious)), pixel_agreement=float((a == b).mean()), psnr=_psnr(before, after))
    elif kind.kind == "sequence":
        # to [N, T, C]
        a = np.moveaxis(before, kind.batch_axis, 0).argmax(-1)
        b = np.moveaxis(after, kind.batch_axis, 0).argmax(-1)
        if kind.batch_axis == 1:  # [T, N, C] -> argmax gives [N, T] after the move
            pass
        exact = [_ctc_decode(x) == _ctc_decode(y) for x, y in zip(a, b, strict=True)]
        result.update(value=float(np.mean(exact)), step_agreement=float((a == b).mean()))
    else:
        fa = np.moveaxis(before, kind.batch_axis, 0).reshape(n, -1).astype(np.float64)
        fb = np.moveaxis(after, kind.batch_axis, 0).reshape(n, -1).astype(np.float64)
        norms = np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1)
        cos = np.where(norms > 0, np.sum(fa * fb, axis=1) / np.maximum(norms, 1e-300), 1.0)
        result.update(value=float(cos.mean()), max_abs_diff=float(np.max(np.abs(fa - fb))) if fa.size else 0.0)
    result["drop_points"] = round(100.0 * (1.0 - result["value"]), 4)
    return result
