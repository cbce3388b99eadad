"""A job's memory and wall-time limits: past either, the job fails with the stage and the figure reached, and the
process that ran it prunes the next model as if nothing had happened."""

from __future__ import annotations

import pytest
from secateurs.pruning import PruneSpec, prune
from secateurs.pruning.limits import ResourceLimitError, memory_cap

from tests.conftest import tiny_cnn_onnx, torchvision_onnx

QUICK = {"signal": "l2_norm", "target": {"macs": 0.6}, "measure": {"repeats": 3}}


# Run in a process of its own: the cap counts address space mapped after the job starts, and a long-lived process
# (this test session, after a hundred models) reuses memory it mapped before without mapping more.
CAPPED_THEN_FREE = """
import resource, sys
import numpy as np
sys.path.insert(0, {root!r})
from tests.conftest import torchvision_onnx
from secateurs.pruning import PruneSpec, prune
from secateurs.pruning.data import Dataset
from secateurs.pruning.limits import ResourceLimitError

data = torchvision_onnx("resnet18", size=64)
calib = Dataset(np.zeros([2048, 3, 64, 64], np.float32), None)  # 96 MiB, copied when a fifth is held out
quick = {{"signal": "l2_norm", "target": {{"macs": 0.6}}, "measure": {{"repeats": 3}}}}
before = resource.getrlimit(resource.RLIMIT_AS)
try:
    prune(data, PruneSpec.model_validate({{**quick, "limits": {{"memory_gb": 0.05}}}}), calibration=calib)
    print("no error")
except ResourceLimitError as e:
    print("limit:", e)
print("restored:", resource.getrlimit(resource.RLIMIT_AS) == before)
r = prune(data, PruneSpec.model_validate(quick), calibration=calib).report
print("next:", r["macs_after"] <= 0.6 * r["macs_before"])
"""


def test_a_job_that_needs_more_memory_than_the_cap_fails_naming_the_stage_and_the_next_one_prunes():
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, "-c", CAPPED_THEN_FREE.format(root=root)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("limit: stage ") and "needed more memory than the job's limit of 0.05 GiB" in line
               for line in lines), proc.stdout
    assert "restored: True" in lines, "the cap is lifted when the job ends"
    assert "next: True" in lines, "the same process then prunes the model to its target"


def test_a_job_past_its_minutes_fails_saying_where():
    spec = PruneSpec.model_validate({**QUICK, "limits": {"minutes": 0.0001}})
    with pytest.raises(ResourceLimitError, match=r"ran past its limit of 0.0001 minutes \(in stage \w+\)"):
        prune(tiny_cnn_onnx(), spec)


def test_the_cap_counts_from_what_the_process_maps_already():
    import numpy as np

    with memory_cap(0.5):
        np.ones(32 << 20, dtype=np.uint8)  # 32 MiB: well within
        with pytest.raises(MemoryError):
            np.ones(1 << 30, dtype=np.uint8)  # 1 GiB: past it
    np.ones(1 << 30, dtype=np.uint8)  # and the cap is gone


def test_the_cli_says_it_in_one_line(tmp_path):
    import json
    import subprocess
    import sys

    src, spec = tmp_path / "m.onnx", tmp_path / "spec.json"
    src.write_bytes(torchvision_onnx("resnet18", size=64))
    spec.write_text(json.dumps({"limits": {"memory_gb": 0.05}}))
    proc = subprocess.run([sys.executable, "-m", "secateurs.cli", "prune", str(src), "-o", str(tmp_path / "o.onnx"),
                           "--spec", str(spec), "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("[")]
    assert len(lines) == 1 and "needed more memory than the job's limit of 0.05 GiB" in lines[0], proc.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_a_stage_past_its_cap_is_stopped_where_it_is_even_in_code_that_reports_nothing():
    import threading
    import time

    from secateurs.pruning.limits import Watchdog

    dog = Watchdog(None, {"analyse": 0.002})  # 0.12 s
    dog.start()
    t0 = time.monotonic()
    with pytest.raises(ResourceLimitError, match=r"^stage analyse ran past its limit of 0.002 minutes: protect"):
        with dog.job(lambda: "analyse"), dog.stage("analyse"):
            n = 0
            while True:  # a library's loop that never returns to the engine
                n += 1
    assert time.monotonic() - t0 < 5
    assert not any(t.name == "secateurs-watchdog" for t in threading.enumerate()), "the watching thread ended"
    time.sleep(0.2)  # and nothing is left pending for this thread: no stray exception arrives later
    assert sum(range(1000)) == 499500


def test_a_stage_within_its_cap_and_an_uncapped_stage_run_to_their_end():
    import time

    from secateurs.pruning.limits import Watchdog

    dog = Watchdog(None, {"score": 0.01})
    dog.start()
    with dog.job(lambda: "score"):
        with dog.stage("score"):
            time.sleep(0.05)
        with dog.stage("recover"):  # no cap of its own
            time.sleep(0.7)  # past score's 0.6 s, which was disarmed when its stage ended


def test_a_job_whose_tracing_runs_past_its_stage_cap_fails_saying_so_and_the_next_prunes():
    spec = PruneSpec.model_validate({**QUICK, "limits": {"stage_minutes": {"analyse": 0.0001}}})
    with pytest.raises(ResourceLimitError, match=r"^stage analyse ran past its limit of 0.0001 minutes"):
        prune(torchvision_onnx("resnet18", size=64), spec)  # tracing ResNet-18 takes longer than 6 ms
    r = prune(tiny_cnn_onnx(), PruneSpec.model_validate(QUICK)).report
    assert r["macs_after"] <= 0.6 * r["macs_before"]


def test_the_job_cap_interrupts_a_stage_in_the_middle():
    spec = PruneSpec.model_validate({**QUICK, "limits": {"minutes": 0.005}})  # 0.3 s: inside import or analyse
    with pytest.raises(ResourceLimitError, match=r"^the job ran past its limit of 0.005 minutes \(in stage \w+\)$"):
        prune(torchvision_onnx("resnet18", size=64), spec)


def test_stage_caps_come_from_the_configuration(monkeypatch):
    from secateurs.pruning.limits import default_stage_minutes

    assert default_stage_minutes() == {"analyse": 20.0}
    monkeypatch.setenv("SECATEURS_STAGE_MINUTES", "analyse=5, recover=90")
    assert default_stage_minutes() == {"analyse": 5.0, "recover": 90.0}
    monkeypatch.setenv("SECATEURS_STAGE_MINUTES", "")
    assert default_stage_minutes() == {}
    monkeypatch.setenv("SECATEURS_STAGE_MINUTES", "tracing=5")
    with pytest.raises(ValueError, match="unknown stage 'tracing'"):
        default_stage_minutes()
