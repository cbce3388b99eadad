"""NNI's norm pruners on the CIFAR ResNet, for bench/cifar_vs_torch_pruning.py --with-nni PYTHON.

Runs in an interpreter that has NNI (its own virtual environment: `make nni-venv`, which also sees the
project's torch and secateurs). NNI's `L1NormPruner` or `L2NormPruner` masks the first convolution of every
residual block at one `sparse_ratio` (per layer; the classifier untouched), then `ModelSpeedup` removes the
masked channels for real. Only those: the channels a residual add ties together cannot be pruned by NNI
here, as its mask propagation does not pass the option-A shortcut (a custom channel-select module), and
masking every Conv2d left the block's two sides of the add at different widths (29 against 32 channels at
the add, ResNet-20, NNI 3.0). Pruning the blocks' inner channels only is also the usual setting for these
residual networks (Li et al. 2017, "Pruning Filters for Efficient ConvNets"). The ratio is searched
(secant steps, bisection when they leave the bracket) until the MACs kept are within `--tolerance` of
`--goal`, counted as the comparison counts them. The pruned model is exported to ONNX like every other
model of the comparison; one JSON line on stdout describes it.

    /path/to/nni-venv/bin/python bench/nni_prune.py --pruner l2 --goal 0.5 --out /tmp/nni.onnx
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
import warnings

import cifar_vs_torch_pruning as cmp
import torch
from common import DATA, macs, params


def nni_prune(original: torch.nn.Module, pruner_name: str, ratio: float) -> torch.nn.Module:
    from nni.compression.pruning import L1NormPruner, L2NormPruner
    from nni.compression.speedup import ModelSpeedup

    model = copy.deepcopy(original)
    pruner_cls = {"l1": L1NormPruner, "l2": L2NormPruner}[pruner_name]
    inner = [name for name, m in model.named_modules()
             if name.startswith("layer") and name.endswith(".conv1") and isinstance(m, torch.nn.Conv2d)]
    pruner = pruner_cls(model, [{"op_names": inner, "sparse_ratio": ratio}])
    _, masks = pruner.compress()
    pruner.unwrap_model()
    # NNI's own tracer (concrete_trace) fails on this torch (a function whose __module__ is None); the
    # traced graph is handed over from torch.fx instead, which ModelSpeedup accepts as `graph_module`.
    graph = torch.fx.symbolic_trace(model)
    ModelSpeedup(model, torch.rand(cmp.SHAPE), masks, graph_module=graph).speedup_model()
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default=cmp.ARCH)
    p.add_argument("--pruner", choices=["l1", "l2"], default="l2")
    p.add_argument("--goal", type=float, required=True, help="MACs kept to land at")
    p.add_argument("--tolerance", type=float, default=0.005)
    p.add_argument("--tries", type=int, default=6)
    p.add_argument("--out", required=True, help="the pruned model's ONNX file")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)  # ModelSpeedup logs every replaced module
    import nni

    cmp.ARCH = args.arch
    depth = args.arch.removeprefix("resnet").removesuffix("_cifar")
    original = cmp.original_model((DATA / f"resnet{depth}_cifar10.safetensors").read_bytes())
    base_macs, base_params = macs(original, cmp.SHAPE), params(original)
    t_search = time.monotonic()
    # MACs of a block go as (1 - ratio) when its inner channels are pruned: the first guess
    tried: list[tuple[float, float]] = []
    lo, hi = (0.0, 1.0), (0.95, 0.0)  # (ratio, MACs kept) bracketing the goal
    ratio = min(1 - args.goal, 0.9)
    best = None
    for _ in range(args.tries):
        t0 = time.monotonic()
        model = nni_prune(original, args.pruner, ratio)
        seconds = time.monotonic() - t0
        kept = macs(model, cmp.SHAPE) / base_macs
        tried.append((round(ratio, 4), round(kept, 4)))
        if best is None or abs(kept - args.goal) < abs(best[2] - args.goal):
            best = (model, ratio, kept, seconds)
        if abs(kept - args.goal) <= args.tolerance:
            break
        lo, hi = ((ratio, kept), hi) if kept > args.goal else (lo, (ratio, kept))
        if hi[0] - lo[0] < 0.002:  # MACs move in steps of whole channels: no ratio between lands closer
            break
        # the secant through the bracket's ends, kept inside the bracket
        ratio = lo[0] + (lo[1] - args.goal) * (hi[0] - lo[0]) / (lo[1] - hi[1])
        if not lo[0] < ratio < hi[0]:
            ratio = (lo[0] + hi[0]) / 2
    assert best is not None
    model, ratio, kept, seconds = best
    with open(args.out, "wb") as f:
        f.write(cmp.to_onnx(model))
    print(json.dumps({"nni": nni.__version__, "pruner": args.pruner, "ratio": ratio, "macs_kept": kept,
                      "params_kept": params(model) / base_params, "channels": cmp.channels(model),
                      "seconds": seconds, "search_seconds": time.monotonic() - t_search, "tried": tried}))


if __name__ == "__main__":
    main()
