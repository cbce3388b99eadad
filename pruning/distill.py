"""Distillation losses per output, in the terms of what each output is (fidelity.py's kinds).

The student matches the teacher (the original model) on every output, not only the first, each output compared
along the axis its values are distributions over:
- `classes` [N, C]: KL of the class distributions at a temperature, scaled by its square;
- `segmentation` [N, C, H, W]: KL over the classes at every pixel;
- `sequence` [N, T, C] or [T, N, C]: KL over the alphabet at every step;
- `map` [N, 1, H, W]: binary cross-entropy at every pixel, the teacher's probability as the soft target;
- `detection` (YOLO-style [N, 4 + C (+ extra), anchors]): the boxes by smooth L1 relative to their scale, the class
  scores by binary cross-entropy, what follows them by relative squared error;
- `values` (embeddings, regressions, anything else): squared error relative to the teacher's mean square.
Outputs that already hold probabilities (a trailing Softmax or Sigmoid) are taken back to logits first (the log of
a softmax, the logit of a sigmoid: what the activation's input was, up to what the activation ignores), so every
output is distilled before its activation, at the same temperature and with the same gradient scale: a mean of
per-pixel binary cross-entropies on probabilities is far weaker than a classifier's tempered KL and recovers a map
far slower. Each loss is a mean over samples and positions, so that the outputs of one model weigh alike whatever
their size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .fidelity import OutputKind

EPS = 1e-6


def outputs_of(out: object) -> list[torch.Tensor]:
    """A module's outputs as a list (one tensor, or a tuple or list of them)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for t in out if isinstance(t, torch.Tensor)]
    raise TypeError(f"a model output of type {type(out).__name__}")


def _logits(t: torch.Tensor, activation: str | None) -> torch.Tensor:
    """The tensor before the output's activation, up to what the activation ignores: the log of a softmax's
    probabilities (its logits less their log-sum-exp), a log-softmax itself, the logit of a sigmoid's."""
    if activation == "softmax":
        return t.clamp_min(EPS).log()
    if activation == "sigmoid":
        p = t.clamp(EPS, 1 - EPS)
        return p.log() - (-p).log1p()
    return t


def _kl(student: torch.Tensor, teacher: torch.Tensor, activation: str | None, axis: int,
        temperature: float) -> torch.Tensor:
    """KL(teacher || student) over `axis` at a temperature, scaled by its square, averaged over every other
    position."""
    log_s = F.log_softmax(_logits(student, activation) / temperature, axis)
    log_t = F.log_softmax(_logits(teacher, activation) / temperature, axis)
    per_position = (log_t.exp() * (log_t - log_s)).sum(axis)
    return per_position.mean() * temperature**2


def _bce(student: torch.Tensor, teacher: torch.Tensor, activation: str | None, temperature: float,
         axis: int | None = None) -> torch.Tensor:
    """Binary cross-entropy of every value at a temperature, scaled by its square: the same gradient scale as `_kl`
    (a mean over a map's pixels is otherwise far weaker than a classifier's KL, and recovers far slower). With
    `axis` (independent class scores), summed over it as `_kl` sums over its classes, averaged over the rest."""
    z_s, z_t = _logits(student, activation) / temperature, _logits(teacher, activation) / temperature
    each = F.binary_cross_entropy_with_logits(z_s, torch.sigmoid(z_t), reduction="none")
    return (each.mean() if axis is None else each.sum(axis).mean()) * temperature**2


def _relative_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return ((student - teacher) ** 2).mean() / (teacher.detach().pow(2).mean() + EPS)


def output_loss(kind: OutputKind, student: torch.Tensor, teacher: torch.Tensor,
                temperature: float = 4.0) -> torch.Tensor:
    """How far one output of the student is from the teacher's, by the output's kind."""
    student, teacher = student.float(), teacher.float()
    if student.shape != teacher.shape:
        raise ValueError(f"output {kind.name!r}: student {list(student.shape)} against teacher {list(teacher.shape)}")
    k = kind.kind
    if k == "classes":
        if kind.activation == "sigmoid":  # multi-label scores
            return _bce(student, teacher, "sigmoid", temperature, axis=1)
        return _kl(student, teacher, kind.activation, 1, temperature)
    if k == "segmentation":
        return _kl(student, teacher, kind.activation, 1, temperature)
    if k == "sequence":
        return _kl(student, teacher, kind.activation, student.dim() - 1, temperature)
    if k == "map":
        return _bce(student, teacher, kind.activation, temperature)
    if k == "detection" and kind.classes is not None:
        c0, c1 = kind.classes
        boxes_s, boxes_t = student[:, :4], teacher[:, :4]
        scale = boxes_t.detach().abs().mean().clamp_min(EPS)
        loss = F.smooth_l1_loss(boxes_s / scale, boxes_t / scale)
        loss = loss + _bce(student[:, c0:c1], teacher[:, c0:c1], "sigmoid", temperature, axis=1)
        # what is neither boxes nor class scores: an objectness row before them, mask coefficients or keypoints after
        rest = [r for r in range(4, student.shape[1]) if not c0 <= r < c1]
        if rest:
            loss = loss + _relative_mse(student[:, rest], teacher[:, rest])
        return loss
    return _relative_mse(student, teacher)


def total_loss(kinds: list[OutputKind], student: list[torch.Tensor], teacher: list[torch.Tensor],
               temperature: float = 4.0) -> torch.Tensor:
    """The sum over every output of its loss."""
    if len(student) != len(kinds) or len(teacher) != len(kinds):
        raise ValueError(f"{len(kinds)} outputs expected, the student gave {len(student)}, the teacher {len(teacher)}")
    losses = [output_loss(k, s, t, temperature) for k, s, t in zip(kinds, student, teacher, strict=True)]
    return torch.stack(losses).sum()


def hard_target_loss(kind: OutputKind, student: torch.Tensor, teacher: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """The loss of one output against the teacher's hardened prediction, summed over samples and averaged over
    every other position: what gradient signals (Taylor, Fisher) differentiate when there are no labels. The
    teacher is the original model, which the student still is when channels are scored, so a distillation loss
    would have no gradient at all; a hard target is what the model would be trained on. By kind: class scores,
    segmentation pixels and sequence steps take the teacher's argmax (cross-entropy); sigmoid scores, maps and a
    detection head's class rows take the teacher's side of 0.5 (binary cross-entropy; a head's boxes have no hard
    form and are left out); other values (embeddings, regressions) a target drawn around the teacher's output
    with its own root mean square as the deviation (the squared error's expected gradient is then the sampled
    Fisher of a Gaussian model of the output)."""
    student, teacher = student.float(), teacher.detach().float()
    n = student.shape[kind.batch_axis]
    z_s, z_t = _logits(student, kind.activation), _logits(teacher, kind.activation)
    k = kind.kind
    if k == "detection" and kind.classes is not None:
        c0, c1 = kind.classes
        z_s, z_t, k = z_s[:, c0:c1], z_t[:, c0:c1], "map"
    if k == "classes" and kind.activation == "sigmoid":
        k = "map"
    if k in ("classes", "segmentation", "sequence"):
        axis = student.dim() - 1 if k == "sequence" else 1
        log_p = F.log_softmax(z_s, axis)
        picked = log_p.gather(axis, z_t.argmax(axis, keepdim=True))
        return -picked.mean() * n
    if k == "map":
        return F.binary_cross_entropy_with_logits(z_s, (z_t > 0).float()) * n
    rms = teacher.pow(2).mean().sqrt().clamp_min(EPS)
    noise = torch.randn(teacher.shape, generator=generator).to(teacher.device)
    return ((student - (teacher + rms * noise)) ** 2).mean() / rms**2 * n
