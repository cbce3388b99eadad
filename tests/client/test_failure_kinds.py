"""The three kinds of failure, told apart everywhere a user meets them: the user's input is bad (exit 2, a 4xx
problem `invalid-model`, `invalid-spec`, ...), the model is valid but uses what the engine cannot prune (exit 6,
`unsupported-model`), the job ran and failed for a reason of its own (exit 3, its `error.type`). The engine
bug's `internal-error` is in tests/worker/test_runner.py, where one can be caused."""

from __future__ import annotations

import json
import pickle

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.api.conftest import Stack
from tests.conftest import cifar_inputs, npz_bytes, shared

from .conftest import secateurs

PROBLEMS = "https://secateurs.dev/problems/"


def _one_conv(opset: int = 17) -> bytes:
    """A graph with nothing to prune: its only conv is the output."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [10, 3, 1, 1], np.ones(30, np.float32))
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "one_conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10, 8, 8])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8).SerializeToString()


@pytest.fixture
def api(embedded: Stack, tenant_key: str) -> httpx.Client:
    with httpx.Client(base_url=embedded.url, headers={"Authorization": f"Bearer {tenant_key}"}, timeout=60) as c:
        yield c


def _problem(r: httpx.Response, status: int, kind: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["type"] == PROBLEMS + kind, body
    return body


def test_each_refusal_at_the_door_has_its_problem_type(api, tiny_onnx):
    _problem(api.post("/v1/models", files={"file": ("m.pt", pickle.dumps({"w": [1.0]}))}), 415, "unsafe-format")
    _problem(api.post("/v1/models", files={"file": ("m.onnx", b"\x08\x07 not a model at all" * 20)}), 422,
             "invalid-model")
    old = _problem(api.post("/v1/models", files={"file": ("old.onnx", _one_conv(opset=6))}), 422,
                   "unsupported-model")
    assert "opset 6" in old["detail"]
    model_id = api.post("/v1/models", files={"file": ("tiny.onnx", tiny_onnx.read_bytes())}).json()["id"]
    spec = _problem(api.post("/v1/jobs", json={"model_id": model_id, "spec": {"signal": "nonsense"}}), 422,
                    "invalid-spec")
    assert spec["errors"][0]["field"].startswith("spec"), spec
    _problem(api.post("/v1/jobs", json={"model_id": model_id, "spec": {"calibration": {"dataset_id": "dst_x"}}}),
             422, "invalid-spec")
    _problem(api.post("/v1/jobs", json={"model_id": "mdl_nope", "spec": {}}), 422, "validation")


def test_a_model_refused_at_upload_as_unsupported_exits_6(env, tmp_path):
    src = tmp_path / "old.onnx"
    src.write_bytes(_one_conv(opset=6))
    proc = secateurs("submit", str(src), "--wait", "-o", str(tmp_path / "out.onnx"), env=env)
    assert proc.returncode == 6, proc.stderr
    assert "Traceback" not in proc.stderr and "opset 6" in proc.stderr.strip().splitlines()[-1], proc.stderr


@pytest.mark.slow
def test_a_job_the_engine_cannot_prune_fails_unsupported_and_exits_6(env, tmp_path, api):
    src, out = tmp_path / "one_conv.onnx", tmp_path / "out.onnx"
    src.write_bytes(_one_conv())
    proc = secateurs("submit", str(src), "--wait", "-o", str(out), "--json", env=env)
    assert proc.returncode == 6, proc.stderr
    job = json.loads(proc.stdout)
    assert job["status"] == "failed" and job["error"]["type"] == "unsupported-model", job
    assert "nothing is prunable" in job["error"]["message"]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"secateurs: job {job['id']} failed (unsupported-model): ")
    assert not out.exists()
    failed = [e for e in api.get(f"/v1/jobs/{job['id']}/events").json()["data"] if e["type"] == "failed"]
    assert failed and failed[-1]["data"] == {"error_type": "unsupported-model"}, failed
    follow = secateurs("jobs", "events", job["id"], "--follow", env=env)
    assert follow.returncode == 6, follow.stderr
    show = secateurs("jobs", "show", job["id"], env=env)
    assert show.returncode == 0 and "error        unsupported-model: nothing is prunable" in show.stdout, show.stdout


@pytest.mark.slow
def test_a_missed_fidelity_budget_fails_the_job_as_such_and_exits_3(env, tmp_path):
    # the pretrained CIFAR ResNet-20 cut to a fifth of its MACs without recovery: its top-1 on held-out images
    # no longer agrees with the original's on every one, and the budget allows no drop at all
    weights, calib, out = tmp_path / "r20.safetensors", tmp_path / "calib.npz", tmp_path / "out.onnx"
    weights.write_bytes(shared("resnet20_cifar10.safetensors").read_bytes())
    x, y = cifar_inputs(40)
    calib.write_bytes(npz_bytes(x=x, y=y))
    proc = secateurs("submit", "--arch", "resnet20_cifar", "--weights", str(weights), "--signal", "l2_norm",
                     "--target", "macs=0.2", "--calib", str(calib), "--max-drop", "0", "--wait", "-o", str(out),
                     "--json", env=env)
    assert proc.returncode == 3, proc.stderr
    job = json.loads(proc.stdout)
    assert job["status"] == "failed" and job["error"]["type"] == "fidelity-budget", job
    assert job["metrics"]["fidelity"]["held"] is False, "the job keeps its report, to show what was lost"
    assert "failed (fidelity-budget): " in proc.stderr.strip().splitlines()[-1]
    assert not out.exists()
