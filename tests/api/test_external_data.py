"""ONNX tensors whose data lives in an external file, at a hostile location (`../x`, an absolute path, the name of a
symlink that leads out), wherever a tensor can hide in the model (initializers, sparse initializers, node attributes,
model-local functions, training graphs): the upload is refused with 422 problem+json and nothing is kept, the
worker's full import refuses the same bytes, and neither opens the file the location names (watched with inotify).
Without these checks onnx.checker stats such a path, relative to the process's working directory, before anything
else refuses it."""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from onnx import ModelProto, TensorProto, helper, numpy_helper
from secateurs.pruning.errors import BadModelError
from secateurs.pruning.loading import load_model

from .test_api import _is_problem, alice, app_settings, client  # noqa: F401 (fixtures)

IN_ACCESS, IN_OPEN = 0x1, 0x20


class OpenWatch:
    """Whether anything opens or reads the watched files (inotify; stat and lstat are not reported)."""

    def __init__(self, paths: list[Path]) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        self.names: dict[int, str] = {}
        for p in paths:
            wd = self.libc.inotify_add_watch(self.fd, str(p).encode(), IN_OPEN | IN_ACCESS)
            assert wd >= 0, os.strerror(ctypes.get_errno())
            self.names[wd] = str(p)

    def touched(self) -> list[str]:
        try:
            buf = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        out, i = [], 0
        while i < len(buf):
            wd, _mask, _cookie, length = struct.unpack_from("iIII", buf, i)
            out.append(self.names.get(wd, "?"))
            i += 16 + length
        return out

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def traps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[dict[str, str], OpenWatch]]:
    """Readable files where each hostile location leads from the working directory, which is the directory
    the libraries resolve a location against for a model given as bytes."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    weights = np.ones(4 * 3 * 3 * 3, np.float32).tobytes()
    parent, absolute, secret = tmp_path / "x", tmp_path / "elsewhere.bin", tmp_path / "secret.bin"
    for p in (parent, absolute, secret):
        p.write_bytes(weights)
    (cwd / "weights.bin").symlink_to(secret)
    monkeypatch.chdir(cwd)
    watch = OpenWatch([parent, absolute, secret])
    yield {"../x": "../x", "absolute": str(absolute), "/etc/passwd": "/etc/passwd", "symlink": "weights.bin"}, watch
    watch.close()


def _point_outside(t: TensorProto, location: str) -> TensorProto:
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * int(np.prod(t.dims))))):
        t.external_data.add(key=key, value=value)
    return t


def _tensor(name: str, location: str) -> TensorProto:
    return _point_outside(numpy_helper.from_array(np.ones(4, np.float32), name), location)


def _sparse(location: str):  # type: ignore[no-untyped-def]
    indices = numpy_helper.from_array(np.array([0, 3], np.int64), "indices")
    return helper.make_sparse_tensor(_point_outside(numpy_helper.from_array(np.ones(2, np.float32), "sparse"), location),
                                     indices, [2, 2])


def _initializer(m: ModelProto, location: str) -> None:
    _point_outside(m.graph.initializer[0], location)


def _sparse_initializer(m: ModelProto, location: str) -> None:
    m.graph.sparse_initializer.append(_sparse(location))


def _constant_node(m: ModelProto, location: str) -> None:
    m.graph.node.insert(0, helper.make_node("Constant", [], ["c"], value=_tensor("c", location)))


def _sparse_constant_node(m: ModelProto, location: str) -> None:
    m.graph.node.insert(0, helper.make_node("Constant", [], ["c"], sparse_value=_sparse(location)))


def _function_node(m: ModelProto, location: str) -> None:
    node = helper.make_node("Constant", [], ["y"], value=_tensor("c", location))
    m.functions.append(helper.make_function("local", "F", [], ["y"], [node], [helper.make_opsetid("", 17)]))


def _function_default(m: ModelProto, location: str) -> None:
    f = helper.make_function("local", "G", [], [], [], [helper.make_opsetid("", 17)])
    f.attribute_proto.append(helper.make_attribute("v", _tensor("default", location)))
    m.functions.append(f)


def _training_graph(m: ModelProto, location: str) -> None:
    m.training_info.add().initialization.CopyFrom(helper.make_graph([], "init", [], [], [_tensor("w0", location)]))


PLACES: dict[str, Callable[[ModelProto, str], None]] = {
    "initializer": _initializer, "sparse initializer": _sparse_initializer, "Constant node": _constant_node,
    "sparse Constant node": _sparse_constant_node, "node of a model-local function": _function_node,
    "a function attribute's default": _function_default, "training graph": _training_graph,
}
# every location on the ordinary place, every place with the location a user's own files are likeliest to have
CASES = [("initializer", where) for where in ("../x", "absolute", "/etc/passwd", "symlink")] + [
    (place, "symlink") for place in PLACES if place != "initializer"]


def _model(place: str, location: str) -> bytes:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 8, 8])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 4, 6, 6])
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "W")
    graph = helper.make_graph([helper.make_node("Conv", ["input", "W"], ["out"])], "g", [x], [y], [w])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    PLACES[place](m, location)
    return m.SerializeToString()


@pytest.mark.parametrize("place,where", CASES, ids=[f"{p}-{w}" for p, w in CASES])
def test_external_data_at_a_hostile_location_is_refused_and_never_opened(client, alice, app_settings, traps,  # noqa: F811
                                                                          place, where):
    locations, watch = traps
    data = _model(place, locations[where])
    stored = sorted(p for p in app_settings.home.rglob("*") if p.is_file() and "secateurs.db" not in p.name)
    models = client.get("/v1/models", headers=alice).json()["data"]

    body = _is_problem(client.post("/v1/models", headers=alice, files={"file": ("m.onnx", data)}), 422)
    assert "external file" in body["detail"] and "save the model as one file" in body["detail"], body
    assert client.get("/v1/models", headers=alice).json()["data"] == models
    assert sorted(p for p in app_settings.home.rglob("*") if p.is_file() and "secateurs.db" not in p.name) == stored

    with pytest.raises(BadModelError, match="external file"):  # the worker's import, should a file get past
        load_model(data)
    assert watch.touched() == [], "a file outside storage was opened"


def test_the_watch_sees_a_read(traps):
    """The check above is not blind: reading a trap through the symlink is reported."""
    _, watch = traps
    assert Path("weights.bin").read_bytes()
    assert watch.touched()
