"""A second network, trained here: a small CNN on Fashion-MNIST, then pruned by every signal with each
recovery at macs 0.7 and 0.5; and the bandit against l1_norm after the same fine-tune.

The network is trained from scratch on the 60,000 shared training images (no download), exported to
ONNX the ordinary way, and handed to the engine as a user would. Calibration: 2,000 training images;
evaluation: the 10,000-image test set, on the pruned ONNX in ONNX Runtime.

    .venv/bin/python bench/fashion_mnist.py [--epochs 3] [--signals ...] [--recoveries ...]
"""

from __future__ import annotations

import argparse
import io
import json
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from common import DATA, ROOT, command, machine, write_section
from torch import nn

RESULTS = ROOT / "bench" / "results"


class FashionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(block(1, 32), block(32, 32), nn.MaxPool2d(2), block(32, 64), block(64, 64),
                                      nn.MaxPool2d(2), block(64, 128))
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def fashion(name: str):  # type: ignore[no-untyped-def]
    from secateurs.pruning.data import Dataset

    with np.load(DATA / name) as d:
        x = (d["x"].astype(np.float32)[:, None] / 255.0 - 0.2860) / 0.3530
        return Dataset(np.ascontiguousarray(x), d["y"].astype(np.int64))


def train(train_set, epochs: int) -> nn.Module:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = FashionNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * (len(train_set) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=steps)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(train_set), generator=gen)
        for s in range(0, len(train_set) - 127, 128):
            idx = order[s : s + 128].numpy()
            loss = F.cross_entropy(model(torch.from_numpy(train_set.x[idx])), torch.from_numpy(train_set.y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def to_onnx(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), buf, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    return buf.getvalue()


def main() -> None:
    from secateurs.pruning import PruneSpec, prune

    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--signals", default="l1_norm,l2_norm,fpgm,random,activation_mean,apoz,dead_units,taylor,"
                                        "fisher,similarity,lasso,bandit")
    p.add_argument("--recoveries", default="none,bn_recalibrate,reconstruct,distill")
    p.add_argument("--targets", default="0.7,0.5")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train_set, test = fashion("fashion_mnist_train.npz"), fashion("fashion_mnist_test.npz")
    t0 = time.monotonic()
    model = train(train_set, args.epochs)
    train_minutes = (time.monotonic() - t0) / 60
    onnx_model = to_onnx(model)
    calib = train_set.head(2000)
    rows = []
    for target in (float(t) for t in args.targets.split(",")):
        for signal in args.signals.split(","):
            for rec in args.recoveries.split(","):
                spec = PruneSpec.model_validate({
                    "signal": signal, "target": {"macs": target}, "calibration": {"samples": 2000},
                    "recovery": {"method": rec, "epochs": 2, "lr": 0.01, "batch_size": 64},
                    "signal_options": {"bandit_epochs": 1}, "measure": {"repeats": 5},
                })
                t1 = time.monotonic()
                r = prune(onnx_model, spec, calibration=calib, evaluation=test).report
                row = {"signal": signal, "recovery": rec, "target": target, "macs_kept": r["macs_kept"],
                       "accuracy_before": r["accuracy_before"], "accuracy": r["accuracy_after"],
                       "minutes": (time.monotonic() - t1) / 60, "bandit": r.get("bandit")}
                rows.append(row)
                print(json.dumps(row), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fashion_mnist.json").write_text(json.dumps(rows, indent=1))
    before = rows[0]["accuracy_before"] if rows else float("nan")
    lines = [
        "## Fashion-MNIST, a network trained here: every signal x recovery",
        "",
        f"Machine: {machine()}; {args.threads} thread(s). FashionNet (5 conv + BN blocks, "
        f"{sum(p.numel() for p in model.parameters())} parameters) trained {args.epochs} epochs on the 60k "
        f"training images in {train_minutes:.1f} min: {before * 100:.2f}% on the 10k test set. Calibration and "
        "recovery on 2,000 training images (distill: 2 epochs, no labels); accuracy of the pruned ONNX in ONNX "
        "Runtime on the test set.",
        "",
        "| signal | recovery | target | MACs kept | top-1 | minutes |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['signal']} | {r['recovery']} | {r['target']} | {r['macs_kept']:.3f} | "
                     f"{r['accuracy'] * 100:.2f}% | {r['minutes']:.2f} |")
    bandit = [r for r in rows if r["signal"] == "bandit" and r["bandit"]]
    if bandit:
        b = bandit[0]["bandit"]
        lines += ["", f"Bandit fine-tune: {b['channel_steps_executed']} channel-steps executed against "
                      f"{b['channel_steps_dense']} for a dense fine-tune of the same length "
                      f"({b['executed_fraction'] * 100:.0f}%)."]
    lines += ["", f"Command: `{command()}`"]
    write_section("fashion-mnist", "\n".join(lines))


if __name__ == "__main__":
    main()
