"""Models with several inputs: the .npz carries one key per ONNX input name, every step feeds every input, and the
returned model keeps each input's name, dtype and dimensions."""

import functools
import io
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from secateurs.pruning import PruneSpec, prune
from secateurs.pruning.data import Dataset, load_npz
from secateurs.pruning.errors import BadDataError
from secateurs.pruning.loading import load_model

from tests.conftest import npz_bytes
from tests.pruning.exporters import ScaledBoxes, TwoStems, WithIds, multi_input_onnx

N = 40


@functools.cache
def two_stems() -> bytes:
    torch.manual_seed(0)
    return multi_input_onnx(TwoStems(), {"left": torch.randn(1, 3, 32, 32), "right": torch.randn(1, 3, 32, 32)},
                            ("logits",))


@functools.cache
def scaled_boxes() -> bytes:
    torch.manual_seed(0)
    return multi_input_onnx(ScaledBoxes(), {"image": torch.randn(1, 3, 32, 32), "scale_factor": torch.ones(1, 2)},
                            ("boxes", "scores"))


@functools.cache
def with_ids() -> bytes:
    torch.manual_seed(0)
    return multi_input_onnx(WithIds(), {"image": torch.randn(1, 3, 32, 32), "ids": torch.zeros(1, dtype=torch.long)},
                            ("logits",))


def _arrays(n: int = N) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)

    def image() -> np.ndarray:
        return rng.standard_normal((n, 3, 32, 32)).astype(np.float32)

    return {
        "two_stems": {"left": image(), "right": image()},
        "scaled_boxes": {"image": image(), "scale_factor": rng.uniform(0.5, 2.0, (n, 2)).astype(np.float32)},
        "with_ids": {"image": image(), "ids": rng.integers(0, 7, n)},
    }


MODELS = {"two_stems": two_stems, "scaled_boxes": scaled_boxes, "with_ids": with_ids}


def _interface(data: bytes) -> list[tuple[str, int, list[int | str]]]:
    graph = onnx.load_model_from_string(data).graph
    inits = {i.name for i in graph.initializer}
    return [(i.name, i.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim])
            for i in [*graph.input, *graph.output] if i.name not in inits]


def _run(data: bytes, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.mark.parametrize("with_data", [True, False], ids=["npz", "data-free"])
@pytest.mark.parametrize("name", list(MODELS))
def test_a_multi_input_model_is_pruned_with_its_interface_kept(name, with_data):
    sent = MODELS[name]()
    arrays = _arrays()[name]
    calibration = load_npz(npz_bytes(**arrays)) if with_data else None
    spec = {"target": {"macs": 0.5}, **({"recovery": {"method": "distill", "epochs": 1, "mixup": True}}
                                        if with_data else {})}
    r = prune(sent, PruneSpec.model_validate(spec), calibration=calibration)
    report = r.report
    assert report["macs_after"] <= 0.5 * report["macs_before"]
    assert _interface(r.onnx) == _interface(sent)
    assert [i["name"] for i in report["inputs"]] == list(arrays)
    feed = {k: v[:3] for k, v in arrays.items()}  # a batch the probes never used
    before, after = _run(sent, feed), _run(r.onnx, feed)
    assert [b.shape for b in before] == [a.shape for a in after]
    if with_data:
        outputs = report["fidelity"]["outputs"]
        assert [o["output"] for o in outputs] == [o.name for o in onnx.load_model_from_string(sent).graph.output]
        assert all(o["samples"] == report["fidelity"]["samples"] > 0 for o in outputs)
        assert report["recovery"]["bn_recalibrated"] and report["recovery"]["steps"] >= 1
    else:
        assert not report["fidelity"]["measured"]


def test_the_pruned_model_still_uses_its_second_input():
    r = prune(scaled_boxes(), PruneSpec.model_validate({"target": {"macs": 0.5}}))
    image = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    one = _run(r.onnx, {"image": image, "scale_factor": np.ones((2, 2), np.float32)})
    two = _run(r.onnx, {"image": image, "scale_factor": np.full((2, 2), 2.0, np.float32)})
    np.testing.assert_allclose(two[0], 2 * one[0], rtol=1e-5, atol=1e-6)  # boxes scale with it
    np.testing.assert_allclose(two[1], one[1])  # class scores do not


def test_integer_inputs_keep_their_dtype_from_the_npz_to_the_model():
    arrays = _arrays()["with_ids"]
    data = load_npz(npz_bytes(ids=arrays["ids"].astype(np.int32), image=arrays["image"]))
    assert data.names == ["ids", "image"] and data.extra["image"].dtype == np.float32
    assert np.issubdtype(data.x.dtype, np.integer)
    loaded = load_model(with_ids())
    bound = data.bind([i.name for i in loaded.inputs], [np.dtype(i.dtype) for i in loaded.inputs])
    assert bound.names == ["image", "ids"] and bound.extra["ids"].dtype == np.int64
    np.testing.assert_array_equal(bound.extra["ids"], arrays["ids"])


def _bad(name: str, **arrays: np.ndarray) -> str:
    with pytest.raises(BadDataError) as e:
        prune(MODELS[name](), PruneSpec.model_validate({"target": {"macs": 0.5}}),
              calibration=load_npz(npz_bytes(**arrays)))
    return str(e.value)


def test_wrong_npz_keys_are_refused_naming_the_key():
    a = _arrays()["two_stems"]
    assert "no key 'right'" in _bad("two_stems", left=a["left"])
    assert "no key 'left'" in _bad("two_stems", x=a["left"])
    b = _arrays()["with_ids"]
    assert "'ids' holds float32, but the model's input 'ids' takes int64" in _bad(
        "with_ids", image=b["image"], ids=b["ids"].astype(np.float32))
    assert "right has per-sample shape [1, 32, 32]" in _bad("two_stems", left=a["left"], right=a["right"][:, :1])


def test_a_single_input_model_takes_x_not_several_keys():
    from tests.pruning.exporters import small_classifier, torch_onnx

    sent = torch_onnx(small_classifier(), (1, 3, 32, 32)).SerializeToString()
    a = _arrays(12)["two_stems"]
    with pytest.raises(BadDataError, match="the model has one input \\('x'\\): give its samples under key 'x'"):
        prune(sent, PruneSpec.model_validate({"target": {"macs": 0.5}}), calibration=load_npz(npz_bytes(**a)))


FLOATS = [np.dtype(np.float32)] * 2


@pytest.mark.parametrize("arrays,needle", [
    ({"left": np.zeros((4, 3), np.float32), "right": np.zeros((5, 3), np.float32)}, "right has 5 samples, left 4"),
    ({"left": np.zeros((4, 3), np.float32), "right": np.array(["a", "b", "c", "d"])}, "right holds <U1"),
    ({"left": np.zeros((4, 3), np.float32), "right": np.full((4, 3), np.nan, np.float32)}, "right holds NaN"),
    ({"left": np.zeros((4, 3), np.float32), "right": np.zeros((4, 3), np.float32), "y": np.zeros(3, np.int64)},
     "y must be 4 integer class labels"),
])
def test_npz_with_several_inputs_is_checked_member_by_member_when_bound(arrays, needle):
    data = load_npz(npz_bytes(**arrays))
    with pytest.raises(BadDataError, match=needle):
        data.bind(["left", "right"], FLOATS)


def test_keys_no_input_takes_are_left_out_unchecked():
    left = np.zeros((4, 3), np.float32)
    data = load_npz(npz_bytes(left=left, right=left + 1, mean=np.zeros(3), names=np.array(list("abcd")),
                              other=np.full((4, 3), np.nan, np.float32), scale=np.float64(2.0)))
    bound = data.bind(["left", "right"], FLOATS)
    assert bound.names == ["left", "right"] and len(bound) == 4
    np.testing.assert_array_equal(bound.extra["right"], left + 1)


def test_every_member_counts_towards_the_declared_size_limit():
    small = {"left": np.zeros((4, 3, 8, 8), np.float32), "right": np.zeros((4, 3, 8, 8), np.float32)}
    load_npz(npz_bytes(**small), max_elements=2 * 4 * 3 * 8 * 8)
    with pytest.raises(BadDataError, match="declares shape"):
        load_npz(npz_bytes(**small), max_elements=2 * 4 * 3 * 8 * 8 - 1)


def secateurs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "secateurs.cli", *args], capture_output=True, text=True, timeout=600)


def test_cli_prunes_a_two_input_model_with_one_npz_key_per_input(tmp_path):
    src, calib = tmp_path / "m.onnx", tmp_path / "calib.npz"
    src.write_bytes(two_stems())
    calib.write_bytes(npz_bytes(**_arrays()["two_stems"]))
    out, report = tmp_path / "p.onnx", tmp_path / "r.json"
    proc = secateurs("prune", str(src), "-o", str(out), "--target", "macs=0.5", "--calib", str(calib),
                     "--report", str(report), "--quiet")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    assert r["macs_after"] <= 0.5 * r["macs_before"] and r["fidelity"]["measured"]
    assert _interface(out.read_bytes()) == _interface(two_stems())

    bad = tmp_path / "bad.npz"
    bad.write_bytes(npz_bytes(x=_arrays()["two_stems"]["left"]))
    failed = tmp_path / "failed.onnx"
    proc = secateurs("prune", str(src), "-o", str(failed), "--calib", str(bad), "--quiet")
    assert proc.returncode == 2 and "no key 'left'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not failed.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_dataset_object_can_be_built_in_code_for_several_inputs():
    a = _arrays(8)["scaled_boxes"]
    data = Dataset(a["image"], None, {"scale_factor": a["scale_factor"]}, "image")
    held = data.take(np.array([1, 3]))
    assert held.names == ["image", "scale_factor"] and len(held) == 2
    np.testing.assert_array_equal(held.arrays()[1], a["scale_factor"][[1, 3]])
    buf = io.BytesIO()
    np.savez(buf, **dict(zip(held.names, held.arrays(), strict=True)))
    assert load_npz(buf.getvalue()).names == ["image", "scale_factor"]


def test_an_input_only_frozen_nodes_read_stays_in_the_returned_model():
    proto = onnx.load_model_from_string(scaled_boxes())
    g = proto.graph
    mul = next(n for n in g.node if n.op_type == "Mul")  # boxes = box(f) * [scale_factor, scale_factor]
    g.node.remove(mul)
    g.node.append(onnx.helper.make_node("Hardmax", [mul.input[0]], ["hard"], axis=1))  # not convertible: frozen
    mul.input[0] = "hard"
    g.node.append(mul)
    sent = proto.SerializeToString()
    r = prune(sent, PruneSpec.model_validate({"target": {"macs": 0.5}}))
    assert r.report["frozen"]["ops"] == {"Concat": 1, "Hardmax": 1, "Mul": 1}
    assert r.report["prunable_kept"] <= 0.5
    assert _interface(r.onnx) == _interface(sent)
    image = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    boxes = _run(r.onnx, {"image": image, "scale_factor": np.full((2, 2), 3.0, np.float32)})[0]
    np.testing.assert_array_equal(np.sort(boxes, 1), [[0, 0, 0, 3]] * 2)  # a one-hot, scaled by the input


def test_fidelity_feeds_each_array_to_its_own_input_whatever_the_files_input_order():
    from onnx import TensorProto, helper
    from secateurs.pruning import fidelity
    from secateurs.pruning.pipeline import _fidelity

    def difference(order: list[str]) -> bytes:  # y = a - b, the inputs declared in `order`
        info = {n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in ("a", "b")}
        graph = helper.make_graph([helper.make_node("Sub", ["a", "b"], ["y"])], "g", [info[n] for n in order],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    rng = np.random.default_rng(0)
    data = Dataset(rng.normal(size=(32, 4)).astype(np.float32), None,
                   {"b": rng.normal(size=(32, 4)).astype(np.float32)}, "a")
    kinds = [fidelity.OutputKind("y", "classes", None)]
    spec = PruneSpec()
    same = _fidelity(difference(["a", "b"]), difference(["b", "a"]), kinds, spec, data, "evaluation", None, "")
    assert same["outputs"][0]["value"] == 1.0  # fed by position, the second file would compute b - a
    swapped = Dataset(data.extra["b"], None, {"a": data.x}, "b")  # the archive's keys in the other order
    assert _fidelity(difference(["a", "b"]), difference(["b", "a"]), kinds, spec, swapped, "evaluation", None,
                     "")["outputs"][0]["value"] == 1.0
