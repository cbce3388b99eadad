"""Fidelity: the pruned model against the ORIGINAL, output by output, in the terms of what each output is.

An output's kind is read from its shape and the op that produces it (a trailing Softmax, Sigmoid or LogSoftmax
says the tensor holds probabilities or log-probabilities):
- `classes` [N, C]: top-1 agreement (the headline), KL divergence of the class distributions, and real accuracy
  when labels are given;
- `map` [N, 1, H, W] (a probability or logit map: text regions, saliency): IoU of the thresholded maps, and PSNR;
- `segmentation` [N, C, H, W], C >= 2: mean IoU of the argmax maps over the classes the original finds, and PSNR;
- `sequence` [T, N, C] or [N, T, C] (CTC recognizers): exact match of the greedy CTC decodes (the headline) and
  per-step agreement;
- `detection` [N, 4 + C (+ extra), anchors], a YOLO-style head before NMS (boxes as cx, cy, w, h, then sigmoid
  class scores, recognised by the concatenation that makes it): mAP@0.5 of the pruned model's boxes after NMS
  against the original's boxes after NMS;
- anything else (`values`: detection heads before NMS, embeddings, regressions): cosine similarity. An [N, D]
  output that is L2-normalised is an embedding, not class scores.

Each headline metric is 1.0 for the original against itself; its drop, in points, is 100 x (1 - value), the unit
of the spec's `fidelity.max_drop`. Measured on data no signal or recovery step saw: the evaluation set, or a
held-out part of the calibration data (`split`).
"""

from __future__ import annotations

from collections.abc import Callable
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
    kind: str  # classes | map | segmentation | sequence | detection | values
    activation: str | None  # softmax | sigmoid | log_softmax | None: what the output already is
    batch_axis: int = 0
    classes: tuple[int, int] | None = None  # detection: the rows holding class scores

    @property
    def metric(self) -> str:
        return {"classes": "top1_agreement", "map": "iou", "segmentation": "miou", "sequence": "exact_match",
                "detection": "map50", "values": "cosine"}[self.kind]


def split(calibration: Dataset, most: int | None = None) -> tuple[Dataset, Dataset | None]:
    """(what signals and recovery may see, what fidelity is measured on): a seeded fifth of the samples (at least
    MIN_HELD_OUT, at most `most`) is held out, or nothing when there are fewer than MIN_TO_SPLIT."""
    n = len(calibration)
    if n < MIN_TO_SPLIT:
        return calibration, None
    held = max(MIN_HELD_OUT, int(round(n * HELD_OUT_FRACTION)))
    if most is not None:
        held = max(MIN_HELD_OUT, min(held, most))
    order = np.random.default_rng(0).permutation(n)
    keep, out = np.sort(order[held:]), np.sort(order[:held])
    return calibration.take(keep), calibration.take(out)


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


# What makes an [N, D] output an embedding rather than class scores: it is L2-normalised, by LpNormalization or as
# F.normalize exports it, a Div by a clipped, expanded ReduceL2 (or a Sqrt of a sum of squares). A pooled output is
# not enough: SqueezeNet's class scores are a global average pool of a 1x1 conv.
_NORM_PATH = ("Clip", "Max", "Expand", "Add", "Unsqueeze", "Reshape", "Identity")
_NORMS = ("ReduceL2", "LpNormalization", "Sqrt")


def _embedding(proto: onnx.ModelProto, name: str, activation: str | None) -> bool:
    """Whether an [N, D] output is an embedding (judged by cosine), not class scores, by the op that makes it
    (shape-only ops passed over)."""
    if activation is not None:
        return False
    by_output = _producers(proto)
    node = by_output.get(name)
    for _ in range(8):
        if node is None or node.op_type not in ("Identity", "Reshape", "Flatten", "Squeeze", "Transpose"):
            break
        node = by_output.get(node.input[0])
    if node is None:
        return False
    if node.op_type == "LpNormalization":
        return True
    if node.op_type != "Div" or len(node.input) < 2:
        return False
    divisor = by_output.get(node.input[1])
    for _ in range(8):  # (a + b) / 2 divides by a constant: class scores still
        if divisor is None or divisor.op_type not in _NORM_PATH:
            break
        divisor = by_output.get(divisor.input[0])
    return divisor is not None and divisor.op_type in _NORMS


Shapes = Callable[[list[str]], list[tuple[int, ...]]]  # tensor names -> their shapes on the data


def _detection_rows(proto: onnx.ModelProto, name: str, rows: int, shapes_of: Shapes | None) -> tuple[int, int] | None:
    """The class-score rows of a YOLO-style head: its output is a concatenation along axis 1 of the boxes (4 rows),
    the sigmoid class scores and possibly more (mask coefficients, keypoints). None when it is not one."""
    by_output = _producers(proto)
    node = by_output.get(name)
    if node is None or node.op_type != "Concat" or next((a.i for a in node.attribute if a.name == "axis"), 0) != 1:
        return None
    if not any(_activation(proto, t) == "sigmoid" for t in node.input):
        return None
    if shapes_of is None:
        return None
    try:
        sizes = [s[1] if len(s) == 3 else 0 for s in shapes_of(list(node.input))]
    except Exception:
        return None
    if not all(sizes) or sum(sizes) != rows or sizes[0] != 4:
        return None
    start = 0
    for t, size in zip(node.input, sizes, strict=True):
        if _activation(proto, t) == "sigmoid" and start >= 4:
            return start, start + size
        start += size
    return None


def infer_kinds(proto: onnx.ModelProto, shapes: list[tuple[int, ...]], batch_axes: list[int],
                shapes_of: Shapes | None = None) -> list[OutputKind]:
    """Each output's kind from its shape at the probe (batch on `batch_axes[i]`) and its producing op;
    `shapes_of` gives intermediate tensors' shapes (a detection head's parts)."""
    kinds = []
    for out, shape, b in zip(proto.graph.output, shapes, batch_axes, strict=True):
        act = _activation(proto, out.name)
        rank = len(shape)
        rows = _detection_rows(proto, out.name, shape[1], shapes_of) if rank == 3 and b == 0 else None
        if rows is not None:
            kinds.append(OutputKind(out.name, "detection", None, b, rows))
            continue
        if rank == 2 and b == 0 and shape[1] >= 2 and not _embedding(proto, out.name, act):
            kind = "classes"
        elif rank == 4 and b == 0 and (shape[1] >= 2 or act == "sigmoid"):
            # one channel is a probability map only behind a sigmoid (a depth or image output is not)
            kind = "map" if shape[1] == 1 else "segmentation"
        elif rank == 3 and act in ("softmax", "log_softmax") and b in (0, 1):
            kind = "sequence"
        else:
            kind = "values"
        kinds.append(OutputKind(out.name, kind, act, b))
    # A YOLO-seg head's rows past the class scores are mask coefficients for a [N, k, H, W] output of prototypes:
    # judged by cosine, not as a k-class segmentation
    extra = {k.classes and shape[1] - k.classes[1] for k, shape in zip(kinds, shapes, strict=True)
             if k.kind == "detection"}
    for i, (k, shape) in enumerate(zip(kinds, shapes, strict=True)):
        if k.kind == "segmentation" and shape[1] in extra:
            kinds[i] = OutputKind(k.name, "values", k.activation, k.batch_axis)
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


def _psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    """PSNR (dB) of `b` against `a`, with the range of `a` as the peak."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    peak = float(a.max() - a.min()) or 1.0
    return 10.0 * np.log10(peak * peak / mse) if mse > 0 else None  # identical: no figure (JSON has no inf)


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
        # the batch first ([T, N, C] or [N, T, C] -> [N, T, C]), then the class at each step: [N, T]
        a = np.moveaxis(before, kind.batch_axis, 0).argmax(-1)
        b = np.moveaxis(after, kind.batch_axis, 0).argmax(-1)
        exact = [_ctc_decode(x) == _ctc_decode(y) for x, y in zip(a, b, strict=True)]
        result.update(value=float(np.mean(exact)), step_agreement=float((a == b).mean()))
    elif kind.kind == "detection":
        assert kind.classes is not None
        truth = [detect(before[i], kind.classes) for i in range(n)]
        found = [detect(after[i], kind.classes) for i in range(n)]
        result.update(value=map50(truth, found), boxes_before=int(sum(len(t[0]) for t in truth)),
                      boxes_after=int(sum(len(f[0]) for f in found)))
    else:
        fa = np.moveaxis(before, kind.batch_axis, 0).reshape(n, -1).astype(np.float64)
        fb = np.moveaxis(after, kind.batch_axis, 0).reshape(n, -1).astype(np.float64)
        norms = np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1)
        cos = np.where(norms > 0, np.sum(fa * fb, axis=1) / np.maximum(norms, 1e-300), 1.0)
        result.update(value=float(cos.mean()), max_abs_diff=float(np.max(np.abs(fa - fb))) if fa.size else 0.0)
    result["drop_points"] = round(100.0 * (1.0 - result["value"]), 4)
    return result


CONFIDENCE = 0.25  # Ultralytics' defaults for prediction
NMS_IOU = 0.45
MAX_CANDIDATES = 1000  # the best-scored anchors that go into NMS
MAX_DETECTIONS = 300


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each of `boxes`."""
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def detect(head: np.ndarray, classes: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's YOLO head [4 + C (+ extra), anchors] -> (xyxy boxes, scores, labels) after per-class NMS."""
    scores_all = head[classes[0] : classes[1]].astype(np.float64)
    scores, labels = scores_all.max(0), scores_all.argmax(0)
    keep = np.nonzero(scores >= CONFIDENCE)[0]
    keep = keep[np.argsort(-scores[keep])][:MAX_CANDIDATES]
    cx, cy, w, h = (head[i, keep].astype(np.float64) for i in range(4))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1) if len(keep) else np.zeros((0, 4))
    scores, labels = scores[keep], labels[keep]
    chosen: list[int] = []
    for c in np.unique(labels):
        idx = list(np.nonzero(labels == c)[0])  # already by descending score
        while idx:
            best, idx = idx[0], idx[1:]
            chosen.append(best)
            if idx:
                overlap = _iou(boxes[best], boxes[idx])
                idx = [i for i, o in zip(idx, overlap, strict=True) if o <= NMS_IOU]
    chosen = sorted(chosen, key=lambda i: -scores[i])[:MAX_DETECTIONS]
    return boxes[chosen], scores[chosen], labels[chosen]


def map50(truth: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
          found: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> float:
    """Mean over the classes the truth has of the average precision at IoU 0.5 (all-point interpolation), each
    true box matched at most once, the found boxes taken by descending score. 1.0 when neither side finds
    anything, 0.0 when only the found side does."""
    labels = sorted({int(c) for t in truth for c in t[2]})
    if not labels:
        return 1.0 if not any(len(f[0]) for f in found) else 0.0
    aps = []
    for c in labels:
        entries: list[tuple[float, int, int]] = []  # score, image, index
        for i, f in enumerate(found):
            entries += [(float(s), i, j) for j, (s, lab) in enumerate(zip(f[1], f[2], strict=True)) if lab == c]
        entries.sort(key=lambda e: -e[0])
        gt = {i: t[0][t[2] == c] for i, t in enumerate(truth)}
        used = {i: np.zeros(len(b), dtype=bool) for i, b in gt.items()}
        total = sum(len(b) for b in gt.values())
        hits = []
        for _, i, j in entries:
            boxes = gt[i]
            if not len(boxes):
                hits.append(False)
                continue
            overlap = _iou(found[i][0][j], boxes)
            k = int(np.argmax(np.where(used[i], -1.0, overlap)))
            if overlap[k] >= 0.5 and not used[i][k]:
                used[i][k] = True
                hits.append(True)
            else:
                hits.append(False)
        tp = np.cumsum(hits)
        recall = tp / max(total, 1) if hits else np.zeros(0)
        precision = tp / np.arange(1, len(hits) + 1) if hits else np.zeros(0)
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.concatenate([[1.0], precision, [0.0]])
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
        aps.append(float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1])))
    return float(np.mean(aps))
