import io
import pickle
import zipfile

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from secateurs.pruning.errors import BadModelError, InputError, UnsafeFormatError, UnsupportedModelError
from secateurs.pruning.loading import load_model, sniff

from tests.conftest import cifar_inputs


def test_pickle_is_refused_without_being_loaded():
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    data = pickle.dumps(Boom(), protocol=4)
    with pytest.raises(UnsafeFormatError, match="pickle"):
        load_model(data)


def test_torch_save_zip_is_refused_whatever_its_name():
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf)
    with pytest.raises(UnsafeFormatError, match="torch.save"):
        load_model(buf.getvalue())


def test_torchscript_is_refused():
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buf)
    with pytest.raises(UnsafeFormatError, match="TorchScript"):
        load_model(buf.getvalue())


def test_npz_sent_as_a_model_says_what_it_is():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x.npy", b"\x93NUMPY")
    with pytest.raises(UnsafeFormatError, match="npz"):
        load_model(buf.getvalue())


@pytest.mark.parametrize("data", [b"", b"\x00" * 8, np.random.default_rng(0).bytes(4096)])
def test_empty_and_random_bytes_are_refused(data):
    with pytest.raises(BadModelError):
        load_model(data)


def test_truncated_onnx_is_refused(resnet20_weights):
    from tests.conftest import torchvision_onnx

    data = torchvision_onnx("squeezenet1_1", size=32)
    with pytest.raises(BadModelError):
        load_model(data[: len(data) // 3])


def _tiny_onnx(external: bool = False, opset: int = 17) -> bytes:
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 1, 1], np.ones(12, np.float32))
    if external:
        w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 3, 1, 1])
        w.data_location = TensorProto.EXTERNAL
        w.external_data.add(key="location", value="../../etc/passwd")
    node = helper.make_node("Conv", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


def test_external_data_is_refused_and_never_read():
    with pytest.raises(BadModelError, match="external"):
        load_model(_tiny_onnx(external=True))


def test_an_opset_older_than_onnx_runtime_runs_is_refused():
    with pytest.raises(UnsupportedModelError, match="opset 6 is too old"):
        load_model(_tiny_onnx(opset=6))


def test_sniff_tells_safetensors_from_onnx(resnet20_weights):
    assert sniff(resnet20_weights) == "safetensors"
    assert sniff(_tiny_onnx()) == "onnx"


def test_safetensors_needs_an_arch(resnet20_weights):
    with pytest.raises(InputError, match="--arch"):
        load_model(resnet20_weights)


def test_safetensors_with_the_wrong_arch_is_refused(resnet20_weights):
    with pytest.raises(BadModelError, match="resnet32_cifar"):
        load_model(resnet20_weights, arch="resnet32_cifar")
    with pytest.raises(InputError, match="unknown arch"):
        load_model(resnet20_weights, arch="resnet9000")


def test_pretrained_cifar_resnet_loads_strictly_and_keeps_its_accuracy(resnet20_weights):
    loaded = load_model(resnet20_weights, arch="resnet20_cifar")
    x, y = cifar_inputs(1000)
    with torch.no_grad():
        pred = loaded.module(torch.from_numpy(x)).argmax(1).numpy()
    accuracy = (pred == y).mean()
    # The shared README measures 91.73% on all 10k test images; the first 1000 land close to it.
    assert accuracy > 0.88, accuracy
    assert loaded.input_shape == [1, 3, 32, 32]


def _two_inputs(a_dims, b_dims, b_type=TensorProto.FLOAT) -> bytes:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, a_dims)
    b = helper.make_tensor_value_info("b", b_type, b_dims)
    out = helper.make_tensor_value_info("c", TensorProto.FLOAT, a_dims)
    nodes = [helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT), helper.make_node("ReduceSum", ["bf"], ["s"]),
             helper.make_node("Add", ["a", "s"], ["c"])]
    graph = helper.make_graph(nodes, "g", [a, b], [out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_onnx_with_two_inputs_is_loaded_with_both_in_graph_order():
    loaded = load_model(_two_inputs(["N", 3], ["N", 1], TensorProto.INT64))
    assert [(i.name, i.shape, i.dtype) for i in loaded.inputs] == [("a", [1, 3], "float32"), ("b", [1, 1], "int64")]
    assert loaded.dynamic_axes == {"a": {0: "N"}, "b": {0: "N"}, "c": {0: "N"}}
    with pytest.raises(UnsupportedModelError, match="fix different batch sizes"):
        load_model(_two_inputs([1, 3], [2, 3]))
    with pytest.raises(UnsupportedModelError, match="input 'b' has no shape"):
        load_model(_two_inputs([1, 3], []))


def test_exported_torchvision_model_imports_and_matches(resnet20_weights):
    from tests.conftest import torchvision_onnx

    data = torchvision_onnx("resnet18", size=64)
    loaded = load_model(data)
    assert loaded.input_name == "input" and loaded.output_names == ["logits"]
    assert loaded.dynamic_axes["input"] == {0: "batch"}
    proto = onnx.load_model_from_string(data)
    assert any(n.op_type == "Identity" for n in proto.graph.node)  # the pre-pass had work to do
