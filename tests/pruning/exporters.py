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


class CRNN(nn.Module):
    """A CRNN-style text recognizer: a conv stack squeezed into a sequence, a 3-D BatchNorm over it, transposed
    to (T, N, C), optionally a bidirectional LSTM, and per-step log-probabilities over an alphabet of 11."""

    def __init__(self, lstm: bool = False) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(1, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d((2, 1)),
            nn.Conv2d(32, 48, 3, 1, 1), nn.BatchNorm2d(48), nn.ReLU(), nn.MaxPool2d((8, 1)),
        )
        self.seq, self.bn = nn.Conv1d(48, 64, 3, 1, 1), nn.BatchNorm1d(64)
        self.lstm = nn.LSTM(64, 32, bidirectional=True) if lstm else None
        self.fc = nn.Linear(64, 11)
        with torch.no_grad():  # statistics of a trained network, not the identity
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.bn(self.seq(self.cnn(x).squeeze(2))))  # N, C, T
        f = f.permute(2, 0, 1)  # T, N, C
        if self.lstm is not None:
            f, _ = self.lstm(f)
        return self.fc(f).log_softmax(-1)


def crnn_onnx(lstm: bool = False) -> bytes:
    """Exported with BatchNorm kept (no constant folding), the batch on axis 1 of the output as CTC wants it."""
    import warnings

    torch.manual_seed(0)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(CRNN(lstm).eval(), torch.randn(1, 1, 32, 64), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logp"],
                          dynamic_axes={"x": {0: "N"}, "logp": {1: "N"}}, do_constant_folding=False)
    return buf.getvalue()


def dynamically_quantized(proto: onnx.ModelProto, ops: tuple[str, ...]) -> bytes:
    """`proto` through ONNX Runtime's dynamic quantization of `ops` (weights int8, activations at run time)."""
    import logging
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "fp32.onnx", Path(d) / "int8.onnx"
        onnx.save(proto, src)
        quantize_dynamic(src, dst, op_types_to_quantize=list(ops), weight_type=QuantType.QInt8)
        return dst.read_bytes()


def _cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DBNet(nn.Module):
    """A DBNet-style text detector: a strided backbone, an FPN that upsamples and concatenates its levels, and a
    head that upsamples back to the input's size into one sigmoid probability map."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stages = nn.ModuleList([nn.Sequential(_cbr(3, w, 2), _cbr(w, w)), nn.Sequential(_cbr(w, 2 * w, 2)),
                                     nn.Sequential(_cbr(2 * w, 4 * w, 2)), nn.Sequential(_cbr(4 * w, 8 * w, 2))])
        self.lateral = nn.ModuleList([nn.Conv2d(c, 4 * w, 1, bias=False) for c in (w, 2 * w, 4 * w, 8 * w)])
        self.smooth = nn.ModuleList([nn.Conv2d(4 * w, w, 3, 1, 1, bias=False) for _ in range(4)])
        self.head = nn.Sequential(_cbr(4 * w, w), nn.ConvTranspose2d(w, w, 2, 2), nn.BatchNorm2d(w), nn.ReLU(),
                                  nn.Conv2d(w, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        laterals = [lat(f) for lat, f in zip(self.lateral, feats, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], scale_factor=2.0, mode="nearest")
        size = laterals[0].shape[2:]
        maps = [F.interpolate(s(lat), size=size, mode="nearest") for s, lat in zip(self.smooth, laterals, strict=True)]
        return self.head(torch.cat(maps, 1))


class YOLOXHead(nn.Module):
    """A YOLOX-style detector: a small backbone and, per level, a decoupled head (class, box and objectness convs)
    whose outputs are concatenated and flattened into [N, 4 + 1 + classes, anchors]."""

    def __init__(self, classes: int = 3, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(_cbr(3, w, 2), _cbr(w, 2 * w, 2))
        self.levels = nn.ModuleList([_cbr(2 * w, 4 * w, 2), _cbr(4 * w, 4 * w, 2)])
        self.stems = nn.ModuleList([nn.Conv2d(4 * w, 2 * w, 1) for _ in range(2)])
        self.cls = nn.ModuleList([nn.Sequential(_cbr(2 * w, 2 * w), nn.Conv2d(2 * w, classes, 1)) for _ in range(2)])
        self.reg = nn.ModuleList([_cbr(2 * w, 2 * w) for _ in range(2)])
        self.box = nn.ModuleList([nn.Conv2d(2 * w, 4, 1) for _ in range(2)])
        self.obj = nn.ModuleList([nn.Conv2d(2 * w, 1, 1) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        outs = []
        for i, level in enumerate(self.levels):
            x = level(x)
            s = self.stems[i](x)
            r = self.reg[i](s)
            out = torch.cat([self.box[i](r), self.obj[i](r).sigmoid(), self.cls[i](s).sigmoid()], 1)
            outs.append(out.flatten(2))
        return torch.cat(outs, 2)


class AnchorHead(nn.Module):
    """A head as Ultralytics' exporter leaves it before NMS: per anchor, a box (cx, cy, w, h) and sigmoid class
    scores, concatenated along axis 1 into [N, 4 + classes, anchors]."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(_cbr(3, 16, 2), _cbr(16, 32, 2), _cbr(32, 32))
        self.box = nn.Conv2d(32, 4, 1)
        self.cls = nn.Conv2d(32, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        t = self.box(f)
        h, w = t.shape[2], t.shape[3]
        stride = x.shape[2] // h
        gy, gx = torch.meshgrid(torch.arange(h, dtype=t.dtype), torch.arange(w, dtype=t.dtype), indexing="ij")
        cx = (gx + t[:, 0].sigmoid()) * stride  # each anchor's box around its own cell, as YOLO decodes them
        cy = (gy + t[:, 1].sigmoid()) * stride
        size = F.softplus(t[:, 2:4]) * stride + stride
        box = torch.cat([cx[:, None], cy[:, None], size], 1).flatten(2)
        return torch.cat([box, (3.0 * self.cls(f)).flatten(2).sigmoid()], 1)


# --------------------------------------------------------------------------------------------- several inputs


class TwoStems(nn.Module):
    """Two image inputs (a stereo pair, an image and its mask) through a conv stem each, added into a shared trunk
    with a classifier head."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.trunk = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
                                   nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                   nn.Linear(32, 10))

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.left(left) + self.right(right))


class ScaledBoxes(nn.Module):
    """An image and a float [N, 2] `scale_factor` that scales the box output, as Paddle's detectors take it; a second
    output of class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.box, self.cls = nn.Linear(32, 4), nn.Linear(32, 5)

    def forward(self, image: torch.Tensor, scale_factor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.body(image)
        return self.box(f) * torch.cat([scale_factor, scale_factor], 1), self.cls(f)


class WithIds(nn.Module):
    """An image and an int64 id per sample (a camera, a domain) whose learned bias is added to the class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head, self.bias = nn.Linear(32, 10), nn.Embedding(7, 10)

    def forward(self, image: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(image)) + self.bias(ids)


def multi_input_onnx(model: nn.Module, inputs: dict[str, torch.Tensor], outputs: tuple[str, ...]) -> bytes:
    """`model` exported with the inputs named (in order) and a symbolic batch N on every input and output."""
    torch.manual_seed(0)
    for m in model.modules():  # BatchNorm statistics that are not the identity, so recalibration changes something
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    buf = io.BytesIO()
    names = [*inputs, *outputs]
    torch.onnx.export(model.eval(), tuple(inputs.values()), buf, dynamo=False, opset_version=17,
                      input_names=list(inputs), output_names=list(outputs),
                      dynamic_axes={n: {0: "N"} for n in names}, do_constant_folding=False)
    return buf.getvalue()
