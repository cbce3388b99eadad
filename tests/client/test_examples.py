"""The examples run: examples/prune-and-check.sh against the real embedded stack passes within the accuracy
threshold and fails past it; examples/github-actions.yml is valid YAML whose commands are real CLI commands,
and its check step judges a real report the same way."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml
from secateurs.cli import _parser

from tests.conftest import npz_bytes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 installs tomli (pyproject.toml)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "prune-and-check.sh"
WORKFLOW = ROOT / "examples" / "github-actions.yml"


@pytest.fixture(scope="module")
def labelled(tiny_onnx, tmp_path_factory) -> Path:
    """Evaluation data labelled with the model's own predictions: accuracy before is 100%, so any change the
    pruning makes to a prediction is a drop. Each sample has its own brightness per channel, or the random
    model would predict one class for all of them."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((64, 3, 1, 1)) * 2 + rng.standard_normal((64, 3, 32, 32))).astype(np.float32)
    sess = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input": x})[0].argmax(1)
    path = tmp_path_factory.mktemp("eval") / "eval.npz"
    path.write_bytes(npz_bytes(x=x, y=y))
    return path


def run_script(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**env, "SECATEURS": f"{sys.executable} -m secateurs.cli", "PYTHON": sys.executable,
           "TARGET": "macs=0.4"}
    return subprocess.run(["sh", str(SCRIPT), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def steps() -> list[dict]:
    return [s for job in workflow()["jobs"].values() for s in job["steps"]]


def check_step() -> str:
    return next(s["run"] for s in steps() if "MAX_ACCURACY_DROP" in s.get("name", ""))


@pytest.mark.slow
def test_prune_and_check_passes_within_the_threshold_and_fails_past_it(tiny_onnx, labelled, env, tmp_path):
    ok = run_script(env, tmp_path, str(tiny_onnx), str(labelled), "1.0")
    assert ok.returncode == 0, ok.stderr
    assert "prune-and-check: passed" in ok.stdout and "job job_" in ok.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert (tmp_path / "pruned.onnx").stat().st_size > 0
    drop = report["accuracy_before"] - report["accuracy_after"]
    assert report["accuracy_before"] == 1.0 and drop > 0, report  # pruning to 40% of the MACs changed predictions

    # the workflow's own check step judges the same report the same way
    for allowed, code in ((1.0, 0), (drop / 2, 1)):
        step = subprocess.run(["bash", "-e", "-c", check_step().replace("python3", shlex.quote(sys.executable))],
                              cwd=tmp_path, env={**env, "MAX_ACCURACY_DROP": str(allowed)}, capture_output=True,
                              text=True, timeout=60)
        assert step.returncode == code, (allowed, step.stdout, step.stderr)
        assert "accuracy 100.00% ->" in step.stdout

    failing = tmp_path / "again"
    failing.mkdir()
    bad = run_script(env, failing, str(tiny_onnx), str(labelled), str(drop / 2))
    assert bad.returncode == 1, bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("prune-and-check: FAILED: accuracy 100.00% ->"), bad.stderr


def test_prune_and_check_passes_the_clients_exit_codes_on(labelled, env, tmp_path):
    usage = run_script(env, tmp_path)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: ")
    missing = run_script(env, tmp_path, str(tmp_path / "absent.onnx"), str(labelled))  # refused before any upload
    assert missing.returncode == 2 and "absent.onnx" in missing.stderr
    assert not (tmp_path / "report.json").exists()


def test_the_workflow_parses_and_its_commands_are_real_cli_commands():
    flow = workflow()
    assert "push" in flow.get("on", flow.get(True))  # YAML 1.1 reads the key `on` as true
    commands = []
    for step in steps():
        assert "uses" in step or "run" in step, step
        lines = step.get("run", "").replace("\\\n", " ").splitlines()
        commands += [line.strip() for line in lines if line.strip().startswith(("secateurs ", "pip install"))]
    cli = [c for c in commands if c.startswith("secateurs ")]
    assert {shlex.split(c)[1] for c in cli} == {"export", "submit"}, commands
    parser = _parser()
    for command in cli:
        words = shlex.split(command)[1:]
        words = words[:words.index(">")] if ">" in words else words
        try:
            args = parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"not a valid secateurs command: {command}")
        assert callable(args.run)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installs = [c for c in commands if c.startswith("pip install")]
    assert installs and all(e in extras for c in installs for e in _extras(c)), installs


def _extras(command: str) -> list[str]:
    return [e for word in shlex.split(command) if "[" in word for e in word.split("[")[1].rstrip("]").split(",")]
