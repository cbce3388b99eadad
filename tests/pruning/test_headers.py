"""Header checks of uploads (what the API runs): they agree with the full importer on real files, refuse what
it refuses where that shows in the headers, and read a large file in bounded memory without torch."""

import io
import pickle
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest
from onnx import TensorProto, helper
from secateurs.pruning.errors import (
    BadDataError,
    BadModelError,
    InputError,
    UnsafeFormatError,
    UnsupportedModelError,
)
from secateurs.pruning.headers import read_model_header, read_npz_header
from secateurs.pruning.loading import load_model

from tests.conftest import npz_bytes, shared, torchvision_onnx


def _file(tmp_path, data: bytes, name: str = "upload"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _onnx(*, opset: int = 17, external: bool = False, inputs: int = 1, subgraph: bool = False,
          weight_elements: int = 12, dims=("N", 3, 8, 8)) -> bytes:
    w = helper.make_tensor("w", TensorProto.FLOAT, [weight_elements // 3, 3, 1, 1],
                           np.ones(weight_elements, np.float32).tobytes(), raw=True)
    if external:
        w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 3, 1, 1])
        w.data_location = TensorProto.EXTERNAL
        w.external_data.add(key="location", value="../../etc/passwd")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"])]
    if subgraph:
        branch = helper.make_graph([helper.make_node("Identity", ["y"], ["z"])], "b", [],
                                   [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
        nodes.append(helper.make_node("If", ["c"], ["out"], then_branch=branch, else_branch=branch))
    graph_inputs = [helper.make_tensor_value_info(f"x{i}" if i else "x", TensorProto.FLOAT, list(dims))
                    for i in range(inputs)]
    graph = helper.make_graph(nodes, "g", graph_inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


@pytest.mark.parametrize("name,size", [("squeezenet1_1", 64), ("mobilenet_v2", 32)])
def test_onnx_header_matches_the_importer(tmp_path, name, size):
    data = torchvision_onnx(name, size=size)
    header = read_model_header(_file(tmp_path, data))
    loaded = load_model(data)
    assert (header.format, header.input_shape, header.opset) == ("onnx", loaded.input_shape, loaded.opset)


def test_safetensors_header_matches_the_importer(tmp_path):
    data = shared("resnet20_cifar10.safetensors").read_bytes()
    header = read_model_header(_file(tmp_path, data), arch="resnet20_cifar", num_classes=10)
    loaded = load_model(data, arch="resnet20_cifar", num_classes=10)
    assert (header.format, header.input_shape) == ("safetensors", loaded.input_shape)
    # the module's one input, as the engine names it and exports it
    assert header.dims == {loaded.input_name: [loaded.dynamic_axes[loaded.input_name][0], *loaded.input_shape[1:]]}
    assert header.inputs == {loaded.input_name: loaded.input_shape} and header.dtypes == {loaded.input_name: "float32"}


@pytest.mark.parametrize("data,error,needle", [
    (b"", BadModelError, "empty"),
    (pickle.dumps({"state_dict": 1}, protocol=4), UnsafeFormatError, "pickle"),
    (npz_bytes(x=np.zeros(3)), UnsafeFormatError, "npz"),
    (b"\x00\x01garbage" * 100, BadModelError, "ONNX"),
    (np.random.default_rng(0).bytes(4096), BadModelError, "ONNX"),
    (_onnx(external=True), BadModelError, "external"),
    (_onnx(opset=6), UnsupportedModelError, "opset"),
    (_onnx(weight_elements=3000)[:-200], BadModelError, "ONNX"),
])
def test_refusals_say_what_is_wrong(tmp_path, data, error, needle):
    with pytest.raises(error, match=needle):
        read_model_header(_file(tmp_path, data))


def test_safetensors_needs_a_known_arch_and_consistent_offsets(tmp_path):
    data = shared("resnet20_cifar10.safetensors").read_bytes()
    path = _file(tmp_path, data)
    with pytest.raises(InputError, match="architecture"):
        read_model_header(path)
    with pytest.raises(InputError, match="unknown arch"):
        read_model_header(path, arch="resnet21_cifar")
    with pytest.raises(BadModelError, match="safetensors"):
        read_model_header(_file(tmp_path, data[:-100], "cut"), arch="resnet20_cifar")
    with pytest.raises(InputError, match="not safetensors"):
        read_model_header(_file(tmp_path, _onnx(), "m.onnx"), arch="resnet20_cifar")


def test_a_large_onnx_is_read_in_bounded_memory_without_torch(tmp_path):
    path = _file(tmp_path, _onnx(weight_elements=3 * 16 * 1024 * 1024), "big.onnx")  # 192 MiB of weights
    tracemalloc.start()
    try:
        header = read_model_header(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert header.input_shape == [1, 3, 8, 8] and peak < 1024 * 1024
    code = ("import sys; from secateurs.pruning.headers import read_model_header; "
            f"read_model_header({str(path)!r}); assert 'torch' not in sys.modules and 'onnx' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_npz_header_matches_load_npz_and_refuses_what_it_refuses(tmp_path):
    x = np.random.default_rng(0).standard_normal((9, 3, 4, 4)).astype(np.float32)
    header = read_npz_header(_file(tmp_path, npz_bytes(x=x, y=np.arange(9) % 3), "d.npz"))
    assert (header.samples, header.shape, header.labelled) == (9, [3, 4, 4], True)
    x[5, 1, 2, 3] = np.nan
    bad = {
        "nan": npz_bytes(x=x),
        "key 'x'": npz_bytes(y=np.arange(3)),
        "float": npz_bytes(x=np.zeros((2, 3), np.int32)),
        "labels": npz_bytes(x=np.zeros((2, 3), np.float32), y=np.zeros(3, np.int64)),
        "readable": b"not a zip at all",
    }
    obj = io.BytesIO()  # object arrays: loading them would need pickle
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("x.npy", obj.getvalue())
    bad["pickle"] = z.getvalue()
    for needle, data in bad.items():
        with pytest.raises(BadDataError, match=needle if needle != "nan" else "NaN"):
            read_npz_header(_file(tmp_path, data, "bad.npz"))


def test_a_model_with_several_inputs_lists_them_all(tmp_path):
    header = read_model_header(_file(tmp_path, _onnx(inputs=2, dims=("N", 3, "H", 8))))
    assert header.inputs == {"x": [1, 3, -1, 8], "x1": [1, 3, -1, 8]} and header.input_shape == [1, 3, -1, 8]
    assert header.dtypes == {"x": "float32", "x1": "float32"}
    assert header.dims == {"x": ["N", 3, "H", 8], "x1": ["N", 3, "H", 8]}  # as declared, the names kept
    header = read_model_header(_file(tmp_path, _onnx(dims=(None, 3, 0, 8)), "anonymous.onnx"))
    assert header.dims == {"x": [None, 3, None, 8]} and header.inputs == {"x": [1, 3, -1, 8]}  # dynamic, no name


def test_npz_header_of_several_inputs_keeps_what_submission_checks_of_each(tmp_path):
    x = np.zeros((5, 3, 4, 4), np.float32)
    data = npz_bytes(image=x, ids=np.arange(5), scale_factor=np.ones((5, 2), np.float32))
    header = read_npz_header(_file(tmp_path, data, "d.npz"))
    assert header.inputs == {"image": [3, 4, 4], "ids": [], "scale_factor": [2]} and header.samples == 5
    assert header.arrays["ids"] == {"samples": 5, "dtype": "int64", "finite": True}
    # which arrays a model takes is known at job submission, which refuses these there (tests/api)
    odd = npz_bytes(image=x, ids=np.arange(4), scale_factor=np.full((5, 2), np.nan, np.float32),
                    names=np.array(list("abcde")))
    header = read_npz_header(_file(tmp_path, odd, "odd.npz"))
    assert header.arrays == {"image": {"samples": 5, "dtype": "float32", "finite": True},
                             "ids": {"samples": 4, "dtype": "int64", "finite": True},
                             "scale_factor": {"samples": 5, "dtype": "float32", "finite": False},
                             "names": {"samples": 5, "dtype": "<U1", "finite": True}}


def test_npz_header_ignores_other_members_as_load_npz_does(tmp_path):
    from tests.pruning.test_data import classifier_npz

    data = classifier_npz(9)
    header = read_npz_header(_file(tmp_path, data, "d.npz"))
    assert (header.samples, header.shape, header.labelled) == (9, [3, 32, 32], True)
    assert list(header.arrays) == ["x", "mean", "class_names", "weights", "version"]
    assert header.arrays["version"]["samples"] is None and header.inputs["mean"] == []
    obj = io.BytesIO()
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    z = io.BytesIO(data)
    with zipfile.ZipFile(z, "a") as f:
        f.writestr("lookup.npy", obj.getvalue())
    with pytest.raises(BadDataError, match="without pickle: lookup.npy holds Python objects"):
        read_npz_header(_file(tmp_path, z.getvalue(), "bad.npz"))
    with pytest.raises(BadDataError, match="the arrays have 300 elements, over the limit of 299"):
        read_npz_header(_file(tmp_path, npz_bytes(x=np.zeros((2, 100), np.float32), mean=np.zeros(100)), "big.npz"),
                        max_elements=299)


def test_symbolic_height_and_width_pass_the_header_check_as_free_dimensions(tmp_path):
    header = read_model_header(_file(tmp_path, _onnx(dims=("N", 3, "H", "W"))))
    assert header.input_shape == [1, 3, -1, -1]


def test_control_flow_passes_the_header_check_and_its_subgraphs_are_still_searched(tmp_path):
    assert read_model_header(_file(tmp_path, _onnx(subgraph=True))).format == "onnx"
