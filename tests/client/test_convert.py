"""Local conversion on the user's machine: `secateurs export` (their module to checked ONNX),
`secateurs convert-weights` (their .pth to safetensors) and `submit file.py:factory`; every refusal one
line and exit 2; without torch, one line naming the extra to install."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file
from secateurs.cli import main

from tests.api.conftest import free_port

from .conftest import client_env, secateurs

USER_CODE = '''
import torch
from torch import nn


def build():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def broken():
    raise RuntimeError("the user's bug")


def not_a_module():
    return {"layers": 3}
'''


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A user's project: their own module (as a file and as a package) and a trained state dict."""
    root = tmp_path_factory.mktemp("project")
    (root / "nets").mkdir()
    (root / "nets" / "__init__.py").write_text("")
    (root / "nets" / "small.py").write_text(USER_CODE)
    (root / "train.py").write_text(USER_CODE)
    namespace: dict = {}
    exec(compile(USER_CODE, "train.py", "exec"), namespace)
    torch.manual_seed(1)
    model = namespace["build"]().eval()
    for m in model.modules():  # trained-looking BatchNorm statistics, so a wrong load would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    torch.save(model.state_dict(), root / "w.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 7},
               root / "checkpoint.pth")
    return root, model


def run(args: list[str], cwd: Path, capsys) -> tuple[int, str, str]:
    """The command in this process, from the user's folder (the slow part, importing torch, is done)."""
    import os

    before = os.getcwd()
    os.chdir(cwd)
    try:
        code = main(args)
    finally:
        os.chdir(before)
    out, err = capsys.readouterr()
    return code, out, err


def test_export_writes_onnx_that_computes_what_the_module_computes(user, tmp_path):
    root, model = user
    out = tmp_path / "model.onnx"
    proc = subprocess.run([sys.executable, "-m", "secateurs.cli", "export", "--module", "nets.small:build",
                           "--weights", "w.pth", "--input-shape", "1,3,32,32", "-o", str(out)],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)  # batch 3: the axis is dynamic
    got = sess.run(None, {"input": x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_export_takes_a_file_and_a_checkpoint_with_a_wrapped_state_dict(user, tmp_path, capsys):
    root, model = user
    out = tmp_path / "m.onnx"
    code, _, err = run(["export", "--module", "train.py:build", "--weights", "checkpoint.pth",
                        "--input-shape", "2x3x16x16", "-o", str(out)], root, capsys)
    assert code == 0, err
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.ones((1, 3, 16, 16), np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(sess.run(None, {"input": x})[0], model(torch.from_numpy(x)).numpy(),
                                   rtol=1e-4, atol=1e-5)


def test_convert_weights_writes_the_same_tensors_as_safetensors(user, tmp_path, capsys):
    root, model = user
    for source in ("w.pth", "checkpoint.pth"):
        out = tmp_path / f"{source}.safetensors"
        code, stdout, err = run(["convert-weights", source, "-o", str(out)], root, capsys)
        assert code == 0, err
        loaded = load_file(str(out))
        assert loaded.keys() == model.state_dict().keys(), source
        assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
        assert f"({len(loaded)} tensors)" in stdout


def _bad_files(root: Path) -> None:
    torch.save(torch.nn.Linear(2, 2), root / "whole_model.pth")  # a whole pickled model
    torch.save([torch.zeros(1)], root / "a_list.pth")
    torch.save({"weight": torch.zeros(1), "note": "hi"}, root / "mixed.pth")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), root / "scripted.pt")
    (root / "garbage.pth").write_bytes(b"not a torch file")
    torch.save({"0.weight": torch.zeros(3, 3, 3, 3)}, root / "other_net.pth")


@pytest.mark.parametrize("case, args, needle", [
    ("whole model", ["convert-weights", "whole_model.pth"], "pickled objects other than tensors"),
    ("a list", ["convert-weights", "a_list.pth"], "holds a list, not a state dict"),
    ("not tensors", ["convert-weights", "mixed.pth"], "note is not tensors"),
    ("torchscript", ["convert-weights", "scripted.pt"], "TorchScript archive"),
    ("garbage", ["convert-weights", "garbage.pth"], "not a file torch.save wrote"),
    ("missing", ["convert-weights", "absent.pth"], "no file absent.pth"),
    ("no folder", ["convert-weights", "w.pth", "-o", "/nonexistent/w.safetensors"], "does not exist"),
    ("bad ref", ["export", "--module", "nets.small"], "pkg.mod:factory"),
    ("no module", ["export", "--module", "nets.absent:build"], "no module named 'nets.absent'"),
    ("no factory", ["export", "--module", "train.py:missing"], "no callable 'missing'"),
    ("factory fails", ["export", "--module", "train.py:broken"], "RuntimeError: the user's bug"),
    ("not a module", ["export", "--module", "nets.small:not_a_module"], "not a torch.nn.Module"),
    ("wrong weights", ["export", "--module", "train.py:build", "--weights", "other_net.pth"],
     "0.weight [3, 3, 3, 3] (model has [8, 3, 3, 3])"),
    ("wrong shape", ["export", "--module", "train.py:build", "--input-shape", "1,5,32,32"], "does not run on"),
    ("bad shape", ["export", "--module", "train.py:build", "--input-shape", "1,3,a"], "--input-shape"),
    ("old opset", ["export", "--module", "train.py:build", "--opset", "11"], "--opset must be between 13"),
])
def test_bad_input_is_one_line_and_exit_2_and_nothing_is_written(case, args, needle, user, tmp_path, capsys):
    root, _ = user
    _bad_files(root)
    out = tmp_path / "out.bin"
    if "-o" not in args:
        args = [*args, "-o", str(out)]
    if args[0] == "export" and "--input-shape" not in args:
        args = [*args, "--input-shape", "1,3,32,32"]
    code, _, err = run(args, root, capsys)
    assert code == 2, (case, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("secateurs: error: ") and needle in lines[0], err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_without_torch_the_commands_name_the_extra_to_install(user, tmp_path):
    root, _ = user
    code = ("import sys; sys.modules['torch'] = None; from secateurs.cli import main; "  # as if not installed
            "sys.exit(main(sys.argv[1:]))")
    for args in (["export", "--module", "train.py:build", "--input-shape", "1,3,32,32", "-o", "x.onnx"],
                 ["convert-weights", "w.pth", "-o", "x.safetensors"],
                 ["submit", "train.py:build", "--input-shape", "1,3,32,32", "--url", f"http://127.0.0.1:{free_port()}"]):
        proc = subprocess.run([sys.executable, "-c", code, *args], cwd=root, capture_output=True, text=True,
                              timeout=60, env=client_env(tmp_path))
        assert proc.returncode == 2, (args, proc.stderr)
        last = proc.stderr.strip().splitlines()[-1]  # after submit's progress note, if any
        assert "Traceback" not in proc.stderr and "pip install 'secateurs[convert]'" in last, proc.stderr
        assert f"`secateurs {args[0]}`" in last


@pytest.mark.slow
def test_submit_exports_a_factory_model_first_and_prunes_it(user, env, tmp_path):
    root, _ = user
    out, report = tmp_path / "pruned.onnx", tmp_path / "report.json"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"measure": {"repeats": 3}}))
    proc = secateurs("submit", str(root / "train.py") + ":build", "--weights", str(root / "w.pth"),
                     "--input-shape", "1,3,32,32", "--target", "macs=0.6", "--spec", str(spec),
                     "-o", str(out), "--report", str(report), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "exporting" in proc.stderr and "train.py:build" in proc.stderr
    job = json.loads(proc.stdout)
    assert job["status"] == "succeeded" and job["spec"]["input_shape"] == [1, 3, 32, 32]
    r = json.loads(report.read_text())
    assert r["macs_after"] <= 0.6 * r["macs_before"]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((2, 3, 32, 32), np.float32)})[0].shape == (2, 10)


def test_submit_refuses_a_factory_model_it_cannot_export_before_any_request(user, tmp_path):
    root, _ = user
    env = client_env(tmp_path, f"http://127.0.0.1:{free_port()}", "sk_unused")  # unreachable: must not matter
    for extra, needle in ((["train.py:build"], "needs --input-shape"),
                          (["train.py:build", "--input-shape", "1,3,32,32", "--arch", "resnet18"], "--arch")):
        proc = subprocess.run([sys.executable, "-m", "secateurs.cli", "submit", *extra], cwd=root, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (extra, proc.stderr)
        assert needle in proc.stderr.strip().splitlines()[-1], proc.stderr

