"""ResNet-56 on CIFAR-10, no recovery: our data-free signals against Torch-Pruning's own group-L2 at the
same MACs, accuracy on the full 10,000-image test set.

Torch-Pruning is called directly (BasePruner, GroupMagnitudeImportance(p=2), global and local), on the
same model with the same option-A shortcut handling, its pruning ratio bisected until its measured MACs
land at ours (MACs counted the same way for both: FlopCounterMode at 1x3x32x32).

    .venv/bin/python bench/cifar_vs_torch_pruning.py [--targets 0.7,0.5]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from common import DATA, cifar, command, machine, write_section


def macs(model: torch.nn.Module) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as c:
        model(torch.zeros(1, 3, 32, 32))
    return c.get_total_flops() / 2


def accuracy(model: torch.nn.Module, data) -> float:  # type: ignore[no-untyped-def]
    model.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(data), 500):
            correct += int((model(torch.from_numpy(data.x[s : s + 500])).argmax(1).numpy() == data.y[s : s + 500]).sum())
    return correct / len(data)


def torch_pruning_at(original: torch.nn.Module, kept_goal: float, global_pruning: bool):  # type: ignore[no-untyped-def]
    import torch_pruning as tp
    from secateurs.pruning.custom_ops import CUSTOM_PRUNERS

    base = macs(original)
    lo, hi, best = 0.0, 0.95, None
    for _ in range(16):
        ratio = (lo + hi) / 2
        model = copy.deepcopy(original)
        pruner = tp.pruner.BasePruner(model, torch.zeros(1, 3, 32, 32), importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=ratio, global_pruning=global_pruning, ignored_layers=[model.linear],
                                      customized_pruners=CUSTOM_PRUNERS)
        pruner.step()
        kept = macs(model) / base
        if kept <= kept_goal:
            best, hi = (model, kept), ratio
            if kept >= kept_goal - 0.005:
                break
        else:
            lo = ratio
    assert best is not None
    return best


def main() -> None:
    from secateurs.pruning import PruneSpec, prune
    from secateurs.pruning.loading import load_model

    p = argparse.ArgumentParser()
    p.add_argument("--targets", default="0.7,0.5")
    p.add_argument("--signals", default="l2_norm,l1_norm,fpgm,bn_scale,random")
    args = p.parse_args()
    weights = (DATA / "resnet56_cifar10.safetensors").read_bytes()
    test = cifar("cifar10_test.npz")
    original = load_model(weights, arch="resnet56_cifar").module.eval()
    base_params = sum(p.numel() for p in original.parameters())
    rows = [("unpruned", "-", 1.0, 1.0, accuracy(original, test), 0.0)]
    for target in (float(t) for t in args.targets.split(",")):
        ours_kept = []
        for signal in args.signals.split(","):
            t0 = time.monotonic()
            r = prune(weights, PruneSpec.model_validate({"signal": signal, "target": {"macs": target},
                                                          "measure": {"repeats": 3}}),
                      arch="resnet56_cifar", evaluation=test).report
            rows.append((f"secateurs {signal}", target, r["macs_kept"], r["params_kept"], r["accuracy_after"],
                         time.monotonic() - t0))
            ours_kept.append(r["macs_kept"])
            print(rows[-1], flush=True)
        goal = max(ours_kept)  # Torch-Pruning gets at least as many MACs as any of ours
        for global_pruning in (True, False):
            t0 = time.monotonic()
            model, kept = torch_pruning_at(original, goal, global_pruning)
            rows.append((f"Torch-Pruning group-L2 ({'global' if global_pruning else 'local'})", target, kept,
                         sum(p.numel() for p in model.parameters()) / base_params, accuracy(model, test),
                         time.monotonic() - t0))
            print(rows[-1], flush=True)
    lines = [
        "## ResNet-56 / CIFAR-10, no recovery: our signals against Torch-Pruning at the same MACs",
        "",
        f"Machine: {machine()}. Pretrained weights from the shared data, full 10,000-image test set, no "
        "recovery of any kind. Ours is measured on the exported ONNX in ONNX Runtime, Torch-Pruning's in PyTorch.",
        "",
        "| method | target | MACs kept | params kept | top-1 | wall time (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for method, target, kept, params, acc, secs in rows:
        lines.append(f"| {method} | {target} | {kept:.3f} | {params:.3f} | {acc * 100:.2f}% | {secs:.1f} |")
    lines += ["", f"Command: `{command()}`"]
    write_section("cifar-vs-torch-pruning", "\n".join(lines))


if __name__ == "__main__":
    main()
