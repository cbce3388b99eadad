"""The engine's own import refuses what a few bytes can declare: initializers claiming more than the file
holds, tensors computed inside the graph at absurd shapes, .npz members declaring terabytes. Each is an
InputError (4xx at the API, a failed job in the worker), raised before the declared size is allocated."""

from __future__ import annotations

import io
import resource
import zipfile

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from secateurs.pruning.data import load_npz
from secateurs.pruning.errors import BadDataError, BadModelError
from secateurs.pruning.loading import load_model


def _model(nodes, initializers, hw=(8, 8)) -> bytes:  # type: ignore[no-untyped-def]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, *hw])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 4, "h", "w"])],
                              initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


W = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "W")
CONV = helper.make_node("Conv", ["input", "W"], ["out"])
MODELS = {
    "initializer declaring 9e10 elements in 64 bytes": _model(
        [CONV], [TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[100_000, 100_000, 3, 3], raw_data=b"\0" * 64)]),
    "ConstantOfShape computing 3e10 elements": _model(
        [helper.make_node("ConstantOfShape", ["S"], ["big"]), helper.make_node("Conv", ["big", "W"], ["c"]), CONV],
        [W, numpy_helper.from_array(np.array([1, 3, 100_000, 100_000], np.int64), "S")]),
    "input of 3 x 100000 x 100000": _model([CONV], [W], hw=(100_000, 100_000)),
}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_declaring_absurd_shapes_is_refused_before_allocating(name):
    before = _peak_rss_mib()
    with pytest.raises(BadModelError, match="elements|too small for the declared shape"):
        load_model(MODELS[name])
    assert _peak_rss_mib() - before < 512


@pytest.mark.parametrize("shape", [(1 << 34,), (1 << 20, 3, 512, 512), (1 << 40, 1 << 40, 1)])
def test_npz_members_declaring_absurd_shapes_are_refused_before_allocating(shape):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as f:
        f.writestr("x.npy", header.getvalue() + b"\0" * (1 << 20))  # a megabyte of zeros: a few KiB zipped
    before = _peak_rss_mib()
    with pytest.raises(BadDataError, match="declares shape"):
        load_npz(z.getvalue())
    assert _peak_rss_mib() - before < 512
