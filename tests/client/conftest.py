"""The client commands run as a user runs them (a `secateurs` process) against the real embedded stack of
tests/api, and a TCP proxy that drops event streams part-way."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.api.conftest import Stack, embedded, secateurs_cmd  # noqa: F401  (embedded: the session's stack)
from tests.conftest import npz_bytes


def secateurs(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(secateurs_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout)


def client_env(home: Path, url: str | None = None, key: str | None = None) -> dict[str, str]:
    """The environment of a user's shell: no SECATEURS_* but those given, a config folder of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECATEURS_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), PYTHONUNBUFFERED="1")
    if url:
        env["SECATEURS_URL"] = url
    if key:
        env["SECATEURS_API_KEY"] = key
    return env


@pytest.fixture(scope="session")
def tenant_key(embedded: Stack) -> str:  # noqa: F811
    """A tenant of the client tests' own, so listings see only their jobs."""
    return embedded.new_key("client-tests")


@pytest.fixture
def env(embedded: Stack, tenant_key: str, tmp_path: Path) -> dict[str, str]:  # noqa: F811
    return client_env(tmp_path, embedded.url, tenant_key)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN for 3x32x32 inputs, exported as a user would (opset 17, dynamic batch): prunes in seconds."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), buf, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="session")
def calib_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "calib.npz"
    path.write_bytes(npz_bytes(x=rng.standard_normal((32, 3, 32, 32)).astype(np.float32), y=np.arange(32) % 10))
    return path


class CuttingProxy:
    """A TCP proxy to the service that cuts its first `cuts` event streams in the middle of the JSON of
    event number `after + 1`: the client sees a connection dropped with a partly received event."""

    def __init__(self, upstream: str, after: int, cuts: int = 1) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.after, self.cuts = after, cuts
        self.streams = 0  # event streams opened through the proxy
        self.cut = 0  # of them, cut
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            threading.Thread(target=self._requests, args=(conn, up), daemon=True).start()
            threading.Thread(target=self._responses, args=(up, conn), daemon=True).start()

    @staticmethod
    def _requests(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(dst)

    def _responses(self, src: socket.socket, dst: socket.socket) -> None:
        stream, sent, cutting = b"", 0, False
        try:
            while data := src.recv(65536):
                if not stream and b"text/event-stream" in data:
                    with self.lock:
                        self.streams += 1
                        cutting = self.cut < self.cuts
                        self.cut += cutting
                if cutting or stream:
                    stream += data
                    at = _nth(stream, b"\nid: ", self.after + 1)
                    data_at = stream.find(b"\ndata: ", at) if at >= 0 else -1
                    if cutting and data_at >= 0:
                        dst.sendall(stream[sent:data_at + 20])  # into the next event's JSON, then gone
                        return
                    dst.sendall(stream[sent:])
                    sent = len(stream)
                else:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(dst)
            _close(src)

    def close(self) -> None:
        self.server.close()


def _nth(data: bytes, needle: bytes, n: int) -> int:
    at = -1
    for _ in range(n):
        at = data.find(needle, at + 1)
        if at < 0:
            return -1
    return at


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


@pytest.fixture
def cutting_proxy(embedded: Stack) -> Iterator[CuttingProxy]:  # noqa: F811
    proxy = CuttingProxy(embedded.url, after=3)
    yield proxy
    proxy.close()
