from __future__ import annotations

import io
import os
import threading
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SECATEURS_SHARED_DATA", ROOT.parent / "shared" / "data"))
CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)


def shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the tests need ../shared/data beside the repo")
    return path


def cifar_inputs(n: int, split: str = "test"):  # type: ignore[no-untyped-def]
    """The first n CIFAR-10 images, normalised as the pretrained ResNets expect (NCHW float32)."""
    import numpy as np

    name = "cifar10_test.npz" if split == "test" else "cifar10_train_subset10k.npz"
    with np.load(shared(name)) as d:
        x = d["x"][:n].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        y = d["y"][:n].astype(np.int64)
    mean = np.asarray(CIFAR_MEAN, dtype=np.float32)[None, :, None, None]
    std = np.asarray(CIFAR_STD, dtype=np.float32)[None, :, None, None]
    return (x - mean) / std, y


def npz_bytes(**arrays) -> bytes:  # type: ignore[no-untyped-def]
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def torchvision_onnx(name: str, size: int = 64, **kwargs) -> bytes:  # type: ignore[no-untyped-def]
    """A torchvision classifier with random weights, exported as a user would (opset 17, dynamic batch)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    return onnx_of(getattr(torchvision.models, name)(weights=None, **kwargs), size)


def onnx_of(model, size: int) -> bytes:  # type: ignore[no-untyped-def]
    """A classifier taking 3 x size x size images, exported as a user would (opset 17, dynamic batch)."""
    import torch

    model = model.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.randn(1, 3, size, size),), buf, dynamo=False, opset_version=17,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return buf.getvalue()


def tiny_cnn_onnx() -> bytes:
    """A two-convolution classifier on 16 x 16 images: a job on it takes a few seconds."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    return onnx_of(net, 16)


@pytest.fixture(scope="session")
def resnet20_weights() -> bytes:
    return shared("resnet20_cifar10.safetensors").read_bytes()


@pytest.fixture(scope="session")
def cifar_eval_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x, y = cifar_inputs(500)
    path = tmp_path_factory.mktemp("data") / "cifar_eval.npz"
    path.write_bytes(npz_bytes(x=x, y=y))
    return path


def webhook_receiver(secret: list[str]):  # type: ignore[no-untyped-def]
    """An HTTP endpoint that answers 204 to a delivery verified with secret[0] and 400 to anything else."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from secateurs.client import WebhookVerificationError, verify_webhook

    verified: list[dict] = []
    refused: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["content-length"]))
            try:
                verified.append(verify_webhook(body, self.headers, secret[0]))
                self.send_response(204)
            except WebhookVerificationError:
                refused.append(body)
                self.send_response(400)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/hook", verified, refused
