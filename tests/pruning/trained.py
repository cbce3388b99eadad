"""Small models trained here in seconds on synthetic images, for tests that need outputs that mean something: a
random-weight text detector's map sits at 0.5 everywhere, and whether pruning or recovery keeps it is noise."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tests.pruning.exporters import DBNet, torch_onnx


def boxes(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images of noise with one to three bright rectangles, and their masks: [N, 3, size, size], [N, 1, size, size]."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.3, (n, 3, size, size)).astype(np.float32)
    mask = np.zeros((n, 1, size, size), np.float32)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            h, w = rng.integers(size // 8, size // 2, 2)
            top, left = rng.integers(0, size - h), rng.integers(0, size - w)
            mask[i, 0, top : top + h, left : left + w] = 1.0
    x += mask * rng.uniform(0.8, 1.2, (n, 3, 1, 1)).astype(np.float32)
    return x, mask


def map_detector(size: int = 32, steps: int = 150, width: int = 8) -> tuple[bytes, float]:
    """A DBNet-style detector trained to find the rectangles of `boxes` (its sigmoid map), as ONNX; and the IoU of
    its thresholded map against the true masks on images it was not trained on."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model: threads cost more than they give
    try:
        model = DBNet(width)
        x, mask = boxes(256, size)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(steps):
            idx = torch.randint(0, len(x), (32,), generator=gen).numpy()
            loss = F.binary_cross_entropy(model(torch.from_numpy(x[idx])), torch.from_numpy(mask[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        xt, mt = boxes(64, size, seed=1)
        with torch.no_grad():
            found = model(torch.from_numpy(xt)).numpy() > 0.5
        iou = float((found & (mt > 0.5)).sum() / max((found | (mt > 0.5)).sum(), 1))
    finally:
        torch.set_num_threads(threads)
    return torch_onnx(model, (1, 3, size, size), fold=False).SerializeToString(), iou
