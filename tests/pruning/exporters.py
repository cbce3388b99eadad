"""ONNX graphs as other exporters write them, built from code: the patterns of Paddle2ONNX, tf2onnx and older
PyTorch exports that real users send (old opsets, weights as `Constant` nodes, biases added through
`Add(Conv, Reshape(Constant))`, a fixed batch of 1), and small models with the shapes that broke the engine
(several outputs, option-A shortcuts that pad channels with zeros)."""

from __future__ import annotations

import io

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn


def torch_onnx(model: nn.Module, shape: tuple[int, ...], *, outputs: tuple[str, ...] = ("y",), opset: int = 17,
               dynamic: bool = True, fold: bool = True) -> onnx.ModelProto:
    torch.manual_seed(0)
    buf = io.BytesIO()
    axes = {"x": {0: "N"}, **{n: {0: "N"} for n in outputs}} if dynamic else None
    torch.onnx.export(model.eval(), torch.randn(shape), buf, dynamo=False, opset_version=opset, input_names=["x"],
                      output_names=list(outputs), dynamic_axes=axes, do_constant_folding=fold)
    return onnx.load_model_from_string(buf.getvalue())


def paddle_style(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Every weight a `Constant` node, every conv bias an `Add(Conv, Reshape(Constant, [1, -1, 1, 1]))`."""
    g = proto.graph
    nodes: list[onnx.NodeProto] = []
    for n in g.node:
        if n.op_type == "Conv" and len(n.input) == 3:
            bias, out = n.input[2], n.output[0]
            del n.input[2]
            n.output[0] = out + "_nobias"
            nodes += [
                n,
                helper.make_node("Constant", [], [bias + "_shape"],
                                 value=numpy_helper.from_array(np.array([1, -1, 1, 1], dtype=np.int64))),
                helper.make_node("Reshape", [bias, bias + "_shape"], [bias + "_r"]),
                helper.make_node("Add", [out + "_nobias", bias + "_r"], [out]),
            ]
        else:
            nodes.append(n)
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in g.initializer]
    del g.node[:]
    g.node.extend(constants + nodes)
    del g.initializer[:]
    return proto


def fix_batch(proto: onnx.ModelProto, batch: int = 1) -> onnx.ModelProto:
    for v in [*proto.graph.input, *proto.graph.output]:
        d = v.type.tensor_type.shape.dim[0]
        d.Clear()
        d.dim_value = batch
    return proto


def small_classifier() -> nn.Module:
    """A direction-classifier-sized CNN with a softmax head, BatchNorm kept in the graph (do_constant_folding off)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4), nn.Softmax(-1),
    ).eval()


class _PadBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad)) if self.pad else x
        return F.relu(out + shortcut)


class OptionAResNet(nn.Module):
    """A CIFAR ResNet as the paper's option A writes it: the downsampling shortcut zero-pads channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(_PadBlock(16, 16, 1), _PadBlock(16, 32, 2), _PadBlock(32, 32, 1),
                                    _PadBlock(32, 64, 2), _PadBlock(64, 64, 1))
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


class ThreeHeads(nn.Module):
    """Boxes, sigmoid scores and an embedding from one backbone: three outputs, three output layers."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 1, 1), nn.ReLU(),
                                  nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU())
        self.box = nn.Conv2d(32, 4, 1)
        self.cls = nn.Conv2d(32, 3, 1)
        self.emb = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.body(x)
        return self.box(f), self.cls(f).sigmoid(), self.emb(f.mean((2, 3)))


def _export_bytes(model: nn.Module, shape: tuple[int, ...], outputs: tuple[str, ...] = ("y",)) -> bytes:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch_onnx(model, shape, outputs=outputs).SerializeToString()


class _FirstOutput(nn.Module):
    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[self.key]


def segmenter_onnx(name: str, size: int = 64, classes: int = 5) -> bytes:
    """A torchvision segmentation model (random weights) exported with its `out` map: its graph keeps ONNX
    `Shape` ops (the upsampling to the input's size)."""
    from torchvision.models import segmentation

    torch.manual_seed(0)
    kwargs: dict[str, object] = {"weights": None, "weights_backbone": None, "num_classes": classes}
    if not name.startswith("lraspp"):
        kwargs["aux_loss"] = False
    return _export_bytes(_FirstOutput(getattr(segmentation, name)(**kwargs), "out"), (1, 3, size, size), ("out",))


def timm_onnx(name: str, size: int = 64, classes: int = 10, **kwargs: object) -> bytes:
    """A timm model (random weights, nothing downloaded) exported as a user would."""
    import timm

    torch.manual_seed(0)
    if any(k in name for k in ("vit", "deit", "swin")):
        kwargs.setdefault("img_size", size)
    model = timm.create_model(name, pretrained=False, num_classes=classes, **kwargs)
    return _export_bytes(model, (1, 3, size, size))


def ultralytics_onnx(cfg: str, folder: str, size: int = 64) -> bytes:
    """An Ultralytics model built from its yaml (random weights) and exported by Ultralytics' own ONNX exporter,
    as `yolo export format=onnx` writes it (fixed batch 1, opset 17, not simplified)."""
    import os
    from pathlib import Path

    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    cwd = os.getcwd()
    os.chdir(folder)  # Ultralytics writes beside the model's yaml name, in the working folder
    try:
        torch.manual_seed(0)
        path = YOLO(cfg).export(format="onnx", imgsz=size, simplify=False, dynamic=False, opset=17, verbose=False)
        return Path(path).read_bytes()
    finally:
        os.chdir(cwd)
