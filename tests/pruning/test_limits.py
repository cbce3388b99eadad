"""A job's memory and wall-time limits: past either, the job fails with the stage and the figure reached, and the
process that ran it prunes the next model as if nothing had happened."""

from __future__ import annotations

import resource

import pytest
from secateurs.pruning import PruneSpec, prune
from secateurs.pruning.limits import ResourceLimitError, memory_cap

from tests.conftest import tiny_cnn_onnx, torchvision_onnx

QUICK = {"signal": "l2_norm", "target": {"macs": 0.6}, "measure": {"repeats": 3}}


def test_a_job_that_needs_more_memory_than_the_cap_fails_naming_the_stage_and_the_next_one_prunes():
    import numpy as np
    from secateurs.pruning.data import Dataset

    data = torchvision_onnx("resnet18", size=64)
    # 96 MiB of calibration images: copies of it are fresh mappings (numpy maps arrays that large on their own),
    # over a 0.05 GiB cap however much memory earlier work in this process left free for reuse
    calib = Dataset(np.zeros([2048, 3, 64, 64], np.float32), None)
    before = resource.getrlimit(resource.RLIMIT_AS)
    spec = PruneSpec.model_validate({**QUICK, "limits": {"memory_gb": 0.05}})
    with pytest.raises(ResourceLimitError, match=r"stage \w+ needed more memory than the job's limit of 0.05 GiB"):
        prune(data, spec, calibration=calib)
    assert resource.getrlimit(resource.RLIMIT_AS) == before, "the cap is lifted when the job ends"
    result = prune(data, PruneSpec.model_validate(QUICK), calibration=calib)
    assert result.report["macs_after"] <= 0.6 * result.report["macs_before"]


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
