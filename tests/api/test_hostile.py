"""Hostile input is refused at upload with a 4xx problem+json before anything big is allocated: archives and
models that declare (or decompress to) absurd sizes, oversized JSON bodies and headers. What only a full
import can see (shapes computed inside the graph) is refused by the engine: tests/pruning/test_absurd_shapes.py."""

from __future__ import annotations

import io
import json
import resource
import struct
import zipfile

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from .conftest import Stack
from .test_api import _is_problem, alice, app_settings, client  # noqa: F401 (fixtures)


def _npz_declaring(shape: tuple[int, ...], payload: bytes = b"\0" * 4096) -> bytes:
    """An .npz whose x.npy header declares `shape` (float32) over a small, highly compressed payload."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as f:
        f.writestr("x.npy", header.getvalue() + payload)
    return z.getvalue()


def _safetensors_declaring(elements: int) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [elements], "data_offsets": [0, 4 * elements]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * 64


def _onnx(nodes, inputs_hw=(8, 8), initializers=()) -> bytes:  # type: ignore[no-untyped-def]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, *inputs_hw])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 4, "h", "w"])
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "W")
    graph = helper.make_graph(nodes, "g", [x], [y], [w, *initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


CONV = helper.make_node("Conv", ["input", "W"], ["out"])
HOSTILE_MODELS = {
    "safetensors header declaring 10^12 elements": (_safetensors_declaring(10**12), {"arch": "resnet20_cifar"}),
    "ONNX input of 3 x 100000 x 100000": (_onnx([CONV], inputs_hw=(100_000, 100_000)), {}),
}
HOSTILE_DATA = {
    "x declaring 2^34 elements": _npz_declaring((1 << 34,)),
    "x declaring 2^20 x 3 x 512 x 512": _npz_declaring((1 << 20, 3, 512, 512)),
    "x declaring 2^40 x 2^40 (int64 overflow)": _npz_declaring((1 << 40, 1 << 40, 1)),
}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("name", list(HOSTILE_MODELS))
def test_models_declaring_absurd_shapes_are_refused_before_allocating(client, alice, name):  # noqa: F811
    payload, fields = HOSTILE_MODELS[name]
    before = _peak_rss_mib()
    body = _is_problem(client.post("/v1/models", headers=alice, files={"file": ("m.bin", payload)}, data=fields), 422)
    assert _peak_rss_mib() - before < 512, "the refusal allocated the declared size"
    assert body["detail"]


@pytest.mark.parametrize("name", list(HOSTILE_DATA))
def test_npz_bombs_are_refused_before_allocating(client, alice, name):  # noqa: F811
    payload = HOSTILE_DATA[name]
    before = _peak_rss_mib()
    body = _is_problem(client.post("/v1/datasets", headers=alice, files={"file": ("d.npz", payload)}), 422)
    assert _peak_rss_mib() - before < 512, "the refusal allocated the declared size"
    assert "x" in body["detail"]


def test_oversized_json_bodies_are_413_whether_declared_or_streamed(client, alice):  # noqa: F811
    big = json.dumps({"model_id": "m" * (2 << 20)}).encode()
    headers = {**alice, "content-type": "application/json"}
    _is_problem(client.post("/v1/jobs", headers=headers, content=big), 413)
    _is_problem(client.post("/v1/jobs", headers=headers, content=(big[i:i + 65536] for i in range(0, len(big), 65536))),
                413)
    _is_problem(client.post("/v1/jobs", headers=headers, content=b"[" * 500_000), 400)  # nesting bomb


def test_headers_of_absurd_size_are_refused(client, embedded: Stack):  # noqa: F811
    _is_problem(client.get("/v1/jobs", headers={"Authorization": "Bearer " + "k" * 40_000}), 431)
    _is_problem(client.get("/v1/jobs", headers={f"X-{i}": "v" * 100 for i in range(400)}), 431)
    try:  # past 64 KiB the HTTP server itself drops the request before the app sees it
        r = httpx.get(f"{embedded.url}/v1/jobs", headers={"Authorization": "Bearer " + "k" * 200_000}, timeout=30)
        assert 400 <= r.status_code < 500 and r.status_code != 401, r.status_code
    except httpx.TransportError:
        pass
    assert httpx.get(f"{embedded.url}/healthz").status_code == 200  # and it still serves
