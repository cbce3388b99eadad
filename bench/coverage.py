"""Coverage: real model families from the toolchains users export with, each pruned to 60% of its MACs.

Every model is built from code with random weights (nothing downloaded): torchvision and timm classifiers and
transformers exported by `torch.onnx.export` (opset 17, dynamic batch), Ultralytics detectors exported by
Ultralytics' own exporter (fixed batch 1), torchvision segmenters, OCR models (a DBNet-style detector, CRNN
recognizers with and without an LSTM head), and graphs written as Paddle2ONNX writes them (opset 11, weights as
`Constant` nodes, biases through `Add(Conv, Reshape)`, fixed batch 1) or as ONNX Runtime's dynamic quantization
leaves them. Each is pruned with `secateurs prune --signal l2_norm --target macs=0.6` in a process of its own
under an address-space cap (a model whose tracing runs away fails alone), and the table gives what came back:
MACs kept, ONNX Runtime latency before and after (the report's, batch 1, 1 thread, interleaved), the latency
saving over the MACs saving, what was frozen, and for a failure its one-line message.

    .venv/bin/python bench/coverage.py [--only NAME,...] [--memory-gb 8] [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, command, load_average, machine, write_section

sys.path.insert(0, str(ROOT))

# name, family, exporter, builder expression (evaluated in tests.pruning.exporters' namespace), input
ZOO: list[tuple[str, str, str, str]] = [
    ("ResNet-18", "classification", "torch.onnx", "tv('resnet18')"),
    ("MobileNetV2", "classification", "torch.onnx", "tv('mobilenet_v2')"),
    ("MobileNetV3-Large", "classification", "torch.onnx", "tv('mobilenet_v3_large')"),
    ("EfficientNet-B0", "classification", "torch.onnx", "tv('efficientnet_b0')"),
    ("DenseNet-121", "classification", "torch.onnx", "tv('densenet121')"),
    ("RegNetX-400MF", "classification", "torch.onnx", "tv('regnet_x_400mf')"),
    ("ShuffleNetV2", "classification", "torch.onnx", "tv('shufflenet_v2_x1_0')"),
    ("ConvNeXt-Tiny", "classification", "torch.onnx", "tv('convnext_tiny')"),
    ("timm ConvNeXt-Atto", "classification", "timm + torch.onnx", "timm_onnx('convnext_atto', 224)"),
    ("timm EfficientNet-B0", "classification", "timm + torch.onnx", "timm_onnx('efficientnet_b0', 224)"),
    ("timm RegNetX-002", "classification", "timm + torch.onnx", "timm_onnx('regnetx_002', 224)"),
    ("timm MobileNetV3-S", "classification", "timm + torch.onnx", "timm_onnx('mobilenetv3_small_100', 224)"),
    ("direction classifier", "classification", "Paddle2ONNX-style", "paddle_classifier(48, 192)"),
    ("ResNet-18, opset 11", "classification", "Paddle2ONNX-style", "paddle_tv('resnet18')"),
    ("dyn-quantized CNN", "classification", "ORT quantize_dynamic", "quantized_classifier()"),
    ("YOLOv8n", "detection", "Ultralytics export", "yolo('yolov8n.yaml')"),
    ("YOLOv8n-seg", "detection", "Ultralytics export", "yolo('yolov8n-seg.yaml')"),
    ("YOLOv8n-pose", "detection", "Ultralytics export", "yolo('yolov8n-pose.yaml')"),
    ("YOLO11n", "detection", "Ultralytics export", "yolo('yolo11n.yaml')"),
    ("YOLOX-style", "detection", "torch.onnx", "plain(YOLOXHead(), (1, 3, 320, 320))"),
    ("LRASPP-MobileNetV3", "segmentation", "torch.onnx", "segmenter_onnx('lraspp_mobilenet_v3_large', 256)"),
    ("DeepLabV3-MobileNetV3", "segmentation", "torch.onnx", "segmenter_onnx('deeplabv3_mobilenet_v3_large', 256)"),
    ("FCN-ResNet50", "segmentation", "torch.onnx", "segmenter_onnx('fcn_resnet50', 256)"),
    ("DBNet-style", "OCR detection", "torch.onnx", "plain(DBNet(), (1, 3, 256, 256))"),
    ("CRNN (3-D BatchNorm)", "OCR recognition", "torch.onnx", "crnn_onnx()"),
    ("CRNN + LSTM", "OCR recognition", "torch.onnx", "crnn_onnx(lstm=True)"),
    ("ViT-Tiny", "transformer", "timm + torch.onnx", "timm_onnx('vit_tiny_patch16_224', 224)"),
    ("DeiT-Tiny", "transformer", "timm + torch.onnx", "timm_onnx('deit_tiny_patch16_224', 224)"),
    ("Swin-T (112 px)", "transformer", "timm + torch.onnx", "timm_onnx('swin_tiny_patch4_window7_224', 112)"),
    ("MobileViT-XXS", "transformer", "timm + torch.onnx", "timm_onnx('mobilevit_xxs', 256)"),
    ("MobileViTv2-050", "transformer", "timm + torch.onnx", "timm_onnx('mobilevitv2_050', 256)"),
]

BUILD = """
import sys, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, {root!r})
from tests.conftest import onnx_of
from tests.pruning.exporters import *

def tv(name, size=224):
    import torch, torchvision
    torch.manual_seed(0)
    return onnx_of(getattr(torchvision.models, name)(weights=None), size)

def plain(model, shape):
    return torch_onnx(model, shape, fold=False).SerializeToString()

def paddle_classifier(h, w):
    return fix_batch(paddle_style(torch_onnx(small_classifier(), (1, 3, h, w), outputs=("prob",), opset=11,
                                             fold=False))).SerializeToString()

def paddle_tv(name):
    import torch, torchvision
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    return fix_batch(paddle_style(torch_onnx(model, (1, 3, 224, 224), opset=11, fold=False))).SerializeToString()

def quantized_classifier():
    return dynamically_quantized(torch_onnx(small_classifier(), (1, 3, 64, 64), outputs=("prob",)),
                                 ("MatMul", "Gemm"))

def yolo(cfg):
    return ultralytics_onnx(cfg, {folder!r}, size=320)

open({out!r}, "wb").write({expr})
"""


def _limit(memory_gb: float):  # type: ignore[no-untyped-def]
    def apply() -> None:
        cap = int(memory_gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return apply


def run_one(name: str, expr: str, folder: Path, memory_gb: float, repeats: int, timeout: float) -> dict:
    src, out, report = folder / "model.onnx", folder / "pruned.onnx", folder / "report.json"
    build = subprocess.run([sys.executable, "-c", BUILD.format(root=str(ROOT), folder=str(folder), out=str(src),
                                                               expr=expr)],
                           capture_output=True, text=True, timeout=timeout)
    if build.returncode != 0:
        return {"name": name, "error": "build failed: " + (build.stderr.strip().splitlines() or ["?"])[-1]}
    spec = folder / "spec.json"
    # the engine's own cap below the process's: a runaway trace fails in its words, naming the stage
    spec.write_text(json.dumps({"measure": {"repeats": repeats}, "limits": {"memory_gb": max(memory_gb - 4, 1)}}))
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "secateurs.cli", "prune", str(src), "-o", str(out), "--signal", "l2_norm",
             "--target", "macs=0.6", "--spec", str(spec), "--report", str(report), "--quiet"],
            capture_output=True, text=True, timeout=timeout, preexec_fn=_limit(memory_gb),
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    except subprocess.TimeoutExpired:
        return {"name": name, "error": f"over {timeout:.0f} s", "seconds": timeout}
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.startswith("secateurs:")]
        return {"name": name, "error": f"exit {proc.returncode}: " + (lines[-1] if lines else proc.stderr[-200:]),
                "seconds": seconds}
    r = json.loads(report.read_text())
    return {"name": name, "report": r, "seconds": seconds}


def _row(family: str, exporter: str, res: dict) -> str:
    if "error" in res:
        msg = res["error"].replace("|", "\\|")[:160]
        return f"| {res['name']} | {family} | {exporter} | - | - | - | {msg} |"
    r = res["report"]
    macs_saving = 1 - r["macs_kept"]
    lat_saving = 1 - r["latency_ms_after"] / r["latency_ms_before"]
    ratio = lat_saving / macs_saving if macs_saving > 0 else float("nan")
    frozen = []
    if r.get("frozen"):
        ops = ", ".join(f"{k}" for k in r["frozen"]["ops"] if k in ("LSTM", "GRU", "DynamicQuantizeLinear",
                                                                     "MatMulInteger", "QLinearConv"))
        frozen.append(f"{r['frozen']['nodes']} nodes ({ops or 'tail'}; {r['frozen']['macs'] / 1e6:.2f} M MACs)")
    if r.get("frozen_groups"):
        frozen.append(f"{len(r['frozen_groups'])} group(s)")
    passes = "+".join(p["pass"].replace("opset-", "") for p in r.get("prepasses", []))
    kept = f"{r['macs_kept']:.3f}" + (f" (prunable {r['prunable_kept']:.3f})" if "prunable_kept" in r else "")
    return (f"| {res['name']} | {family} | {exporter} | {kept} | {r['latency_ms_before']:.2f} -> "
            f"{r['latency_ms_after']:.2f} | {ratio:.2f} | {'; '.join(frozen) or '-'}"
            f"{' [' + passes + ']' if passes else ''} |")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", help="comma-separated names from the zoo")
    p.add_argument("--memory-gb", type=float, default=8.0)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--timeout", type=float, default=900)
    args = p.parse_args()
    wanted = set(args.only.split(",")) if args.only else None
    t_begin, load_start = time.monotonic(), load_average()
    rows = []
    for name, family, exporter, expr in ZOO:
        if wanted and name not in wanted:
            continue
        with tempfile.TemporaryDirectory() as d:
            res = run_one(name, expr, Path(d), args.memory_gb, args.repeats, args.timeout)
        print(name, res.get("error") or f"{res['report']['macs_kept']:.3f} in {res['seconds']:.0f} s", flush=True)
        rows.append(_row(family, exporter, res))
    done = sum(1 for r in rows if "| - | - | - |" not in r)
    body = "\n".join([
        "## Coverage: model families from other exporters, pruned to 60% of their MACs",
        "",
        f"{done} of {len(rows)} architectures pruned. Each was built from code with random weights and pruned by "
        f"`secateurs prune --signal l2_norm --target macs=0.6` in a process of its own capped at "
        f"{args.memory_gb:g} GB of address space, the job's own limit (`limits.memory_gb`) "
        f"{max(args.memory_gb - 4, 1):g} GiB above what the process mapped when it started. Latency: ONNX Runtime, CPU, batch 1 (or the model's fixed "
        "batch), 1 thread, the report's interleaved medians. *Latency / MACs saving* is (1 - latency after / "
        "before) / (1 - MACs kept): 1.0 means the latency fell as much as the MACs. *Frozen*: nodes kept as "
        "they are in ONNX (the target applies to the prunable part) and dependency groups left unpruned because "
        "their indices do not fit their layers; in brackets the import passes that ran (upgrade: opset 11 to 17; "
        "simplify: onnxslim).",
        "",
        "| model | family | exporter | MACs kept | latency ms before -> after | latency / MACs saving | frozen |",
        "| --- | --- | --- | ---: | ---: | ---: | --- |",
        *rows,
        "",
        f"Machine: {machine()}. Load average {load_start} at the start; {(time.monotonic() - t_begin) / 60:.1f} "
        f"minutes in all. Command: `{command()}`.",
    ])
    write_section("coverage", body)


if __name__ == "__main__":
    main()
