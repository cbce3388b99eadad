"""Two small OCR models trained here from random init on synthetic text images, for bench/text_fidelity.py.

- `dbnet`: a DBNet-style text detector. Input [N, 3, 128, 128] float32, output [N, 1, 128, 128], a Sigmoid
  probability map of the text regions (1 inside each word's box). Backbone of strided conv + BatchNorm + ReLU
  stages (strides 2 to 32), an FPN that adds each level into the one above it, brings every level to 1/4 of the
  input and concatenates them, and DBNet's head (3x3 conv, then two transposed convs back to the input's size).
  Trained with binary cross-entropy + dice against the rendered masks.
- `crnn`: a CRNN-style recognizer. Input [N, 1, 32, 128] float32, output [N, 32, 37] through a final
  LogSoftmax over 36 characters (0-9, A-Z) and the CTC blank (class 0). A conv + BatchNorm stack that halves the
  height down to 2 rows, a (2, 1) conv that collapses them, and a head of 1-D convs + BatchNorm over the 32 steps
  and a linear classifier per step (convs and linear layers only, so that the engine can prune all of it).
  Trained with CTC loss.

The images are rendered with Pillow's built-in scalable font (`ImageFont.load_default(size=...)`, Pillow >= 10.1,
installed with torchvision) on noisy backgrounds: a colour gradient, Gaussian noise, blur and distractor shapes
(lines, boxes, ellipses) for the detector; words of random length, size, position, contrast and polarity. Every
image comes from a seeded generator (training, calibration and evaluation from different seeds), the networks
from a seeded init, and training runs a fixed number of steps: a rerun with the same thread count gives the same
models (byte for byte, checked). Measured on the project's 2-core machine with 2 torch threads while another process
held about one core: the detector trained in 230 s to IoU 0.957 against the ground truth, the recognizer in 384 s
to 0.934 exact match (the images take another 12 s each to render).

Written to the cache directory (default ~/.cache/secateurs-bench/text_models, or $SECATEURS_TEXT_MODELS; not
bench/results, whose files git tracks), for each model NAME:
  NAME.onnx        opset 17, torch.onnx.export(dynamo=False), BatchNorm kept as nodes, dynamic batch
  NAME_calib.npz   x: 64 images exactly as the model takes them (float32, normalised)
  NAME_eval.npz    x: 256 held-out images
  NAME_truth.npz   y: their ground truth (detector: uint8 masks N x 1 x H x W; recognizer: int64 N x 8 class
                   indices, 1-based, padded with -1), apart from x since the engine takes y as class labels only
  NAME.json        training figures: seconds, steps, MACs, parameters, IoU / exact match against the ground truth
                   on the 256 held-out images, measured on the exported ONNX in ONNX Runtime
A model whose five files exist is not trained again unless --retrain.

    .venv/bin/python bench/text_models.py [--only dbnet|crnn] [--retrain] [--threads 2] [--out DIR] [--steps N]
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Before torch loads its OpenMP runtime: threads that wait for each other sleep instead of spinning. On this
# 2-core machine with one core taken by another process, a DBNet training step on 2 threads took 1.26 s with
# spinning (the default) against 0.19 s without, and 0.16 s on 1 thread. Set it yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

CACHE = Path(os.environ.get("SECATEURS_TEXT_MODELS",
                            Path.home() / ".cache" / "secateurs-bench" / "text_models"))
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # class i + 1 is ALPHABET[i]; class 0 is the CTC blank
DET_SIZE = 128  # detector input: DET_SIZE x DET_SIZE RGB
REC_H, REC_W = 32, 128  # recognizer input: one grey channel
CALIB, EVAL = 64, 256  # images in NAME_calib.npz and NAME_eval.npz
# Seeds of the three disjoint image streams per model (training, calibration, evaluation).
SEED_TRAIN, SEED_CALIB, SEED_EVAL = 1, 2, 3


# ------------------------------------------------------------------------------------------- rendering


@functools.lru_cache(maxsize=64)
def _font(size: int):  # type: ignore[no-untyped-def]
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _word(rng: np.random.Generator, lo: int, hi: int) -> str:
    return "".join(ALPHABET[i] for i in rng.integers(0, len(ALPHABET), int(rng.integers(lo, hi + 1))))


def _glyphs(text: str, size: int):  # type: ignore[no-untyped-def]
    """The word's ink as an 'L' image cropped to its tight bounding box."""
    from PIL import Image, ImageDraw

    font = _font(size)
    left, top, right, bottom = font.getbbox(text)
    layer = Image.new("L", (right + 4, bottom + 4), 0)
    ImageDraw.Draw(layer).text((2, 2), text, fill=255, font=font)
    box = layer.getbbox()
    return layer.crop(box) if box else layer


def _background(rng: np.random.Generator, h: int, w: int, channels: int) -> np.ndarray:
    """A random colour gradient (float, 0-255), H x W x channels."""
    base = rng.uniform(0, 255, channels)
    tilt = rng.uniform(-60, 60, (2, channels))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = base + tilt[0] * (yy[..., None] / h - 0.5) + tilt[1] * (xx[..., None] / w - 0.5)
    return np.clip(img, 0, 255)


def _ink(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A text colour that stands out from the background colour `under` (by at least ~70 grey levels)."""
    lum = float(under.mean())
    target = rng.uniform(0, max(lum - 70, 5)) if lum > 128 else rng.uniform(min(lum + 70, 250), 255)
    return np.clip(target + rng.uniform(-30, 30, under.shape[-1]), 0, 255)


def _finish(rng: np.random.Generator, img: np.ndarray, noise: tuple[float, float]) -> np.ndarray:
    """Blur a little, add Gaussian noise, quantise to uint8 (H x W x C)."""
    from PIL import Image, ImageFilter

    radius = float(rng.uniform(0, 0.9))
    if radius > 0.3:
        pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8).squeeze(-1) if img.shape[-1] == 1
                              else np.clip(img, 0, 255).astype(np.uint8))
        img = np.asarray(pil.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32).reshape(img.shape)
    img = img + rng.normal(0, rng.uniform(*noise), img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def detection_sample(rng: np.random.Generator, size: int = DET_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One detector image (size x size x 3 uint8) and its text mask (size x size uint8, 1 inside each word's
    tight ink box): 1 to 5 words of 2 to 9 characters at 9 to 26 pixels, none overlapping, among distractor
    strokes and shapes that are not text."""
    from PIL import Image, ImageDraw

    bg = _background(rng, size, size, 3)
    canvas = Image.fromarray(bg.astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 5))):  # distractors, drawn under the text
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, size, 4))
        box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        kind = int(rng.integers(0, 3))
        width = int(rng.integers(1, 4))
        if kind == 0:
            draw.line((x0, y0, x1, y1), fill=colour, width=width)
        elif kind == 1:
            draw.rectangle(box, outline=colour, width=width)
        else:
            draw.ellipse(box, outline=colour, width=width)
    img = np.asarray(canvas, dtype=np.float32)
    mask = np.zeros((size, size), np.uint8)
    placed: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(1, 6))):
        glyphs = _glyphs(_word(rng, 2, 9), int(rng.integers(9, 27)))
        w, h = glyphs.size
        if w >= size - 4 or h >= size - 4:
            continue
        for _attempt in range(20):
            x, y = int(rng.integers(2, size - w - 1)), int(rng.integers(2, size - h - 1))
            if all(x + w + 3 < a or a + c + 3 < x or y + h + 3 < b or b + d + 3 < y for a, b, c, d in placed):
                break
        else:
            continue
        placed.append((x, y, w, h))
        alpha = np.asarray(glyphs, dtype=np.float32)[..., None] / 255.0
        region = img[y : y + h, x : x + w]
        colour = _ink(rng, region.reshape(-1, 3).mean(0))
        img[y : y + h, x : x + w] = region * (1 - alpha) + colour * alpha
        mask[y : y + h, x : x + w] = 1
    return _finish(rng, img, (2, 14)), mask


def recognition_sample(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One recognizer image (REC_H x REC_W uint8) and its text: a word of 3 to 8 characters, 16 to 26 pixels,
    at a random place, dark on light or light on dark."""
    while True:
        text = _word(rng, 3, 8)
        glyphs = _glyphs(text, int(rng.integers(16, 27)))
        w, h = glyphs.size
        if w <= REC_W - 4 and h <= REC_H - 2:
            break
    img = _background(rng, REC_H, REC_W, 1)
    x, y = int(rng.integers(2, REC_W - w - 1)), int(rng.integers(1, REC_H - h))
    alpha = np.asarray(glyphs, dtype=np.float32)[..., None] / 255.0
    colour = _ink(rng, img[y : y + h, x : x + w].reshape(-1, 1).mean(0))
    img[y : y + h, x : x + w] = img[y : y + h, x : x + w] * (1 - alpha) + colour * alpha
    # a stroke through the line now and then (underlines, table rules), drawn after the text
    if rng.random() < 0.3:
        row = int(rng.integers(0, REC_H))
        img[row : row + int(rng.integers(1, 3))] = rng.uniform(0, 255)
    return _finish(rng, img, (2, 16))[..., 0], text


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 N x H x W x C -> float32 N x C x H x W in [-1, 1]: what both models take."""
    return np.ascontiguousarray((images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5) - 1.0)


def detection_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n detector images (uint8 N x H x W x 3) and masks (uint8 N x H x W) from one seed."""
    rng = np.random.default_rng(seed)
    pairs = [detection_sample(rng) for _ in range(n)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def recognition_set(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """n recognizer images (uint8 N x H x W x 1) and their texts from one seed."""
    rng = np.random.default_rng(seed)
    pairs = [recognition_sample(rng) for _ in range(n)]
    return np.stack([p[0] for p in pairs])[..., None], [p[1] for p in pairs]


def encode(texts: list[str], length: int = 8) -> np.ndarray:
    """Texts as class indices (1-based; blank is 0), padded with -1 to `length`: int64 N x length."""
    out = np.full((len(texts), length), -1, np.int64)
    for i, t in enumerate(texts):
        out[i, : len(t)] = [ALPHABET.index(c) + 1 for c in t]
    return out


# --------------------------------------------------------------------------------------------- networks


def _cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DBNet(nn.Module):
    """DBNet-style detector: backbone levels at strides 4, 8, 16, 32; FPN into `inner` channels top-down; each
    level smoothed to inner / 4 channels at stride 4 and concatenated; head back to the input's size."""

    def __init__(self, levels: tuple[int, ...] = (32, 64, 96, 128), inner: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(_cbr(3, levels[0] // 2, 2), _cbr(levels[0] // 2, levels[0], 2))  # stride 4
        self.stages = nn.ModuleList()
        cin = levels[0]
        for i, w in enumerate(levels):  # strides 4, 8, 16, 32
            self.stages.append(nn.Sequential(_cbr(cin, w, 1 if i == 0 else 2), _cbr(w, w)))
            cin = w
        self.lateral = nn.ModuleList([nn.Conv2d(c, inner, 1, bias=False) for c in levels])
        self.smooth = nn.ModuleList([nn.Conv2d(inner, inner // 4, 3, 1, 1, bias=False) for _ in levels])
        q = inner // 4
        self.head = nn.Sequential(
            nn.Conv2d(inner, q, 3, 1, 1, bias=False), nn.BatchNorm2d(q), nn.ReLU(),
            nn.ConvTranspose2d(q, q, 2, 2), nn.BatchNorm2d(q), nn.ReLU(),
            nn.ConvTranspose2d(q, 1, 2, 2), nn.Sigmoid(),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        lat = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        for i in range(len(lat) - 1, 0, -1):  # top-down
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], scale_factor=2.0, mode="nearest")
        maps = [smooth(p) for smooth, p in zip(self.smooth, lat, strict=True)]
        maps = [m if i == 0 else F.interpolate(m, scale_factor=float(2**i), mode="nearest")
                for i, m in enumerate(maps)]
        return torch.cat(maps, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The map before its Sigmoid (training uses it for a numerically safe BCE)."""
        return self.head[:-1](self.features(x))


class CRNN(nn.Module):
    """CRNN-style recognizer without a recurrent layer: conv stack to [N, C, 2, T], a (2, 1) conv collapsing the
    height, two 1-D conv + BatchNorm layers over the steps, a linear classifier per step, LogSoftmax."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 96, 96, 128), hidden: int = 128,
                 classes: int = len(ALPHABET) + 1) -> None:
        super().__init__()
        a, b, c, d, e = widths
        self.cnn = nn.Sequential(
            _cbr(1, a), nn.MaxPool2d(2),  # 16 x 64
            _cbr(a, b), nn.MaxPool2d(2),  # 8 x 32
            _cbr(b, c), _cbr(c, d), nn.MaxPool2d((2, 1)),  # 4 x 32
            _cbr(d, e), nn.MaxPool2d((2, 1)),  # 2 x 32
            nn.Conv2d(e, hidden, (2, 1), bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),  # 1 x 32
        )
        self.seq = nn.Sequential(
            nn.Conv1d(hidden, hidden, 3, 1, 1, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Conv1d(hidden, hidden, 3, 1, 1, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
        )
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.seq(self.cnn(x).squeeze(2))  # N, C, T
        return self.fc(f.permute(0, 2, 1)).log_softmax(-1)  # N, T, classes


# ------------------------------------------------------------------------------------------ evaluation


def ctc_greedy(logp: np.ndarray) -> list[tuple[int, ...]]:
    """Greedy CTC decodes of [N, T, C]: argmax per step, repeats collapsed, blanks dropped."""
    out = []
    for steps in logp.argmax(-1):
        seq, prev = [], -1
        for s in steps.tolist():
            if s != prev and s != 0:
                seq.append(s)
            prev = s
        out.append(tuple(seq))
    return out


def exact_match(logp: np.ndarray, labels: np.ndarray) -> float:
    truth = [tuple(int(v) for v in row if v >= 0) for row in labels]
    return float(np.mean([d == t for d, t in zip(ctc_greedy(logp), truth, strict=True)]))


def iou(prob: np.ndarray, masks: np.ndarray) -> float:
    """IoU of the maps thresholded at 0.5 with the masks, pixels pooled over the set (as the engine's fidelity
    check pools them)."""
    a, b = prob.reshape(masks.shape) > 0.5, masks > 0
    return float(np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1))


def run_onnx(data: bytes, x: np.ndarray, threads: int) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 64]})[0] for i in range(0, len(x), 64)])


def to_onnx(model: nn.Module, shape: tuple[int, ...], output: str) -> bytes:
    """Exported as a user would: opset 17, the TorchScript exporter, dynamic batch; BatchNorm kept as nodes
    (folded, the engine's BatchNorm re-estimation would have nothing to work on)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(shape),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=[output], do_constant_folding=False,
                          dynamic_axes={"x": {0: "N"}, output: {0: "N"}})
    return buf.getvalue()


def count_macs(model: nn.Module, shape: tuple[int, ...]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(shape))
    return counter.get_total_flops() / 2


# ------------------------------------------------------------------------------------------------ training


def _schedule(opt: torch.optim.Optimizer, lr: float, steps: int) -> Callable[[int], None]:
    """Linear warm-up over 5% of the steps, then cosine to zero."""
    warm = max(1, steps // 20)

    def at(step: int) -> None:
        f = (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / (steps - warm)))
        for group in opt.param_groups:
            group["lr"] = lr * f

    return at


def _log(name: str, step: int, steps: int, loss: float, t0: float) -> None:
    print(f"  {name}: step {step}/{steps} loss {loss:.4f} ({time.monotonic() - t0:.0f} s)", flush=True)


def train_dbnet(images: np.ndarray, masks: np.ndarray, steps: int, batch: int, lr: float) -> DBNet:
    """BCE + dice on the map's logits, AdamW, warm-up + cosine; each batch flipped left-right at random (a
    flipped word is still a text region of the same box)."""
    torch.manual_seed(0)
    model = DBNet()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = _schedule(opt, lr, steps)
    gen = np.random.default_rng(0)
    t0, running = time.monotonic(), 0.0
    model.train()
    for step in range(steps):
        idx = gen.choice(len(images), batch, replace=False)
        x, y = torch.from_numpy(normalise(images[idx])), torch.from_numpy(masks[idx, None].astype(np.float32))
        if gen.random() < 0.5:
            x, y = x.flip(3), y.flip(3)
        logits = model.logits(x)
        p = torch.sigmoid(logits)
        dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
        loss = F.binary_cross_entropy_with_logits(logits, y) + dice
        opt.zero_grad(set_to_none=True)
        loss.backward()
        schedule(step)
        opt.step()
        running = 0.95 * running + 0.05 * loss.item() if step else loss.item()
        if (step + 1) % 100 == 0:
            _log("dbnet", step + 1, steps, running, t0)
    return model.eval()


def train_crnn(images: np.ndarray, labels: np.ndarray, steps: int, batch: int, lr: float) -> CRNN:
    """CTC loss (blank 0), AdamW, warm-up + cosine."""
    torch.manual_seed(0)
    model = CRNN()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = _schedule(opt, lr, steps)
    gen = np.random.default_rng(0)
    lengths_all = (labels >= 0).sum(1)
    t0, running = time.monotonic(), 0.0
    model.train()
    for step in range(steps):
        idx = gen.choice(len(images), batch, replace=False)
        logp = model(torch.from_numpy(normalise(images[idx]))).permute(1, 0, 2)  # T, N, C for ctc_loss
        lengths = torch.from_numpy(lengths_all[idx])
        targets = torch.from_numpy(labels[idx][labels[idx] >= 0])
        loss = F.ctc_loss(logp, targets, torch.full((batch,), logp.shape[0], dtype=torch.long), lengths,
                          blank=0, zero_infinity=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        schedule(step)
        opt.step()
        running = 0.95 * running + 0.05 * loss.item() if step else loss.item()
        if (step + 1) % 100 == 0:
            _log("crnn", step + 1, steps, running, t0)
    return model.eval()


# The recipe of each model: training images, steps, batch, peak learning rate.
RECIPES: dict[str, dict[str, Any]] = {
    "dbnet": {"train_images": 4000, "steps": 1200, "batch": 16, "lr": 3e-3},
    "crnn": {"train_images": 20000, "steps": 1500, "batch": 32, "lr": 2e-3},
}


def files(name: str, out: Path = CACHE) -> dict[str, Path]:
    return {"onnx": out / f"{name}.onnx", "calib": out / f"{name}_calib.npz", "eval": out / f"{name}_eval.npz",
            "truth": out / f"{name}_truth.npz", "meta": out / f"{name}.json"}


def build(name: str, out: Path, threads: int, recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """Render the data, train `name`, export it and write its five files; returns its training figures."""
    from common import CpuWatch, load_average

    recipe = {**RECIPES[name], **(recipe or {})}
    torch.set_num_threads(threads)
    t0 = time.monotonic()
    if name == "dbnet":
        images, masks = detection_set(recipe["train_images"], SEED_TRAIN)
        calib = detection_set(CALIB, SEED_CALIB)[0]
        ev_images, ev_masks = detection_set(EVAL, SEED_EVAL)
        shape: tuple[int, ...] = (1, 3, DET_SIZE, DET_SIZE)
        output, truth = "prob", ev_masks[:, None].astype(np.uint8)
    else:
        images, texts = recognition_set(recipe["train_images"], SEED_TRAIN)
        calib = recognition_set(CALIB, SEED_CALIB)[0]
        ev_images, ev_texts = recognition_set(EVAL, SEED_EVAL)
        shape = (1, 1, REC_H, REC_W)
        output, truth = "logp", encode(ev_texts)
    render = time.monotonic() - t0
    t1 = time.monotonic()
    with CpuWatch() as watch:  # how busy other processes kept the machine while this one trained
        if name == "dbnet":
            model: nn.Module = train_dbnet(images, masks, recipe["steps"], recipe["batch"], recipe["lr"])
        else:
            model = train_crnn(images, encode(texts), recipe["steps"], recipe["batch"], recipe["lr"])
    seconds = time.monotonic() - t1
    data = to_onnx(model, shape, output)
    x_eval = normalise(ev_images)
    pred = run_onnx(data, x_eval, threads)
    score = {"iou": iou(pred, truth)} if name == "dbnet" else {"exact_match": exact_match(pred, truth)}
    meta = {
        "model": name, "input_shape": list(shape), "output": output, "output_shape": list(pred.shape[1:]),
        "train_seconds": round(seconds, 1), "render_seconds": round(render, 1), "threads": threads, **recipe,
        "other_cores_busy": round(watch.other, 2), "load_average_after": load_average(),
        "macs": count_macs(model, shape), "parameters": sum(p.numel() for p in model.parameters()),
        "eval_images": EVAL, "calib_images": CALIB,
        "measured_on": "exported ONNX in ONNX Runtime, 256 held-out images against their ground truth",
        "preprocess": "uint8 pixels / 127.5 - 1, NCHW" + (" RGB" if name == "dbnet" else " grey"),
        **score,
    }
    out.mkdir(parents=True, exist_ok=True)
    paths = files(name, out)
    paths["onnx"].write_bytes(data)
    np.savez(paths["calib"], x=normalise(calib))
    np.savez(paths["eval"], x=x_eval)  # x only: the engine's y is class labels, one per image
    np.savez(paths["truth"], y=truth)
    paths["meta"].write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def ensure(name: str, out: Path = CACHE, threads: int = 2, retrain: bool = False) -> dict[str, Any]:
    """The model's training figures, training it first when its files are missing (or `retrain`)."""
    paths = files(name, out)
    if not retrain and all(p.exists() for p in paths.values()):
        return json.loads(paths["meta"].read_text())
    print(f"training {name} ({threads} threads) into {out}", flush=True)
    return build(name, out, threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(RECIPES), help="one model only")
    parser.add_argument("--retrain", action="store_true", help="train again even when the files exist")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    parser.add_argument("--out", type=Path, default=CACHE, help=f"cache directory (default {CACHE})")
    parser.add_argument("--steps", type=int, help="override the recipe's training steps and train now (for "
                        "development: use with --out, or the cache holds an undertrained model)")
    args = parser.parse_args()
    for name in [args.only] if args.only else list(RECIPES):
        if args.steps:
            meta = build(name, args.out, args.threads, {"steps": args.steps})
        else:
            meta = ensure(name, args.out, args.threads, args.retrain)
        score = f"IoU {meta['iou']:.3f}" if "iou" in meta else f"exact match {meta['exact_match']:.3f}"
        print(f"{name}: {meta['macs'] / 1e6:.0f} MMACs, {meta['parameters']:,} parameters, trained in "
              f"{meta['train_seconds']:.0f} s, {score} against the ground truth on {meta['eval_images']} "
              f"held-out images -> {files(name, args.out)['onnx']}")


if __name__ == "__main__":
    main()
