"""`secateurs prune` as a user runs it: real process, exit codes, one-line errors, nothing half-written."""

import json
import pickle
import subprocess
import sys

import onnxruntime as ort
import pytest

from tests.conftest import shared, torchvision_onnx


def secateurs(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "secateurs.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_prune_onnx_writes_model_and_report(tmp_path):
    src = tmp_path / "m.onnx"
    src.write_bytes(torchvision_onnx("mobilenet_v2", size=64))
    out, report = tmp_path / "p.onnx", tmp_path / "r.json"
    proc = secateurs("prune", str(src), "-o", str(out), "--signal", "l2_norm", "--target", "macs=0.6",
                     "--report", str(report), "--quiet")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    assert r["macs_after"] <= 0.6 * r["macs_before"]
    assert "MACs" in proc.stdout and str(out) in proc.stdout
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == "input" and sess.get_outputs()[0].name == "logits"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_prune_safetensors_with_arch(tmp_path):
    out = tmp_path / "p.onnx"
    proc = secateurs("prune", "--arch", "resnet20_cifar", "--weights", str(shared("resnet20_cifar10.safetensors")),
                     "-o", str(out), "--target", "params=0.7", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert out.exists()


def _bad_inputs(tmp_path):
    random_bytes = tmp_path / "random.onnx"
    random_bytes.write_bytes(bytes(range(256)) * 64)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(torchvision_onnx("squeezenet1_1", size=32)[:5000])
    pickled = tmp_path / "model.pth"
    pickled.write_bytes(pickle.dumps({"state_dict": [1, 2, 3]}))
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    return {"random": random_bytes, "truncated": truncated, "pickle": pickled, "empty": empty}


@pytest.mark.parametrize("kind", ["random", "truncated", "pickle", "empty", "missing"])
def test_bad_models_fail_in_one_line_and_write_nothing(tmp_path, kind):
    inputs = _bad_inputs(tmp_path)
    src = inputs.get(kind, tmp_path / "does-not-exist.onnx")
    out = tmp_path / "out.onnx"
    proc = secateurs("prune", str(src), "-o", str(out), "--quiet")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("secateurs: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--target", "macs=2"], "target"),
        (["--target", "flops=0.5"], "target"),
        (["--signal", "nonsense"], "unknown signal"),
        (["--spec", "/nonexistent/spec.json"], "cannot read spec"),
    ],
)
def test_bad_spec_flags_are_one_line_errors(tmp_path, args, needle):
    src = tmp_path / "m.onnx"
    src.write_bytes(torchvision_onnx("squeezenet1_1", size=32))
    proc = secateurs("prune", str(src), "-o", str(tmp_path / "o.onnx"), *args)
    assert proc.returncode == 2
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_spec_file_is_used_and_flags_override_it(tmp_path):
    src = tmp_path / "m.onnx"
    src.write_bytes(torchvision_onnx("resnet18", size=32))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"signal": "l1_norm", "target": {"macs": 0.8}, "round_to": 4}))
    report = tmp_path / "r.json"
    proc = secateurs("prune", str(src), "-o", str(tmp_path / "o.onnx"), "--spec", str(spec),
                     "--target", "macs=0.5", "--report", str(report), "--quiet")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    assert r["signal"] == "l1_norm" and r["target"] == {"macs": 0.5} and r["macs_kept"] <= 0.5


def _onnx(nodes, inputs, outputs, inits=()):
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_a_graph_with_nothing_prunable_is_a_clear_error(tmp_path):
    import numpy as np
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [10, 3, 1, 1], np.ones(30, np.float32))
    data = _onnx(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10, 8, 8])],
        [w],
    )
    src = tmp_path / "one_conv.onnx"
    src.write_bytes(data)
    proc = secateurs("prune", str(src), "-o", str(tmp_path / "o.onnx"))
    assert proc.returncode == 6 and "nothing is prunable" in proc.stderr, proc.stderr
    assert _error_lines(proc) == 1


def test_an_unsupported_op_is_named(tmp_path):
    import numpy as np
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 1, 1], np.ones(12, np.float32))
    data = _onnx(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Hardmax", ["c"], ["y"], axis=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [w],
    )
    src = tmp_path / "hardmax.onnx"
    src.write_bytes(data)
    out = tmp_path / "o.onnx"
    proc = secateurs("prune", str(src), "-o", str(out))
    assert proc.returncode == 6 and "Hardmax" in proc.stderr, proc.stderr
    assert _error_lines(proc) == 1 and not out.exists()


def _error_lines(proc) -> int:
    assert "Traceback" not in proc.stderr
    return sum(1 for line in proc.stderr.splitlines() if not line.startswith("["))
