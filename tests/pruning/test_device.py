"""The device is chosen once per job: CUDA where there is one, the CPU otherwise, same code path."""

import pytest
import torch
from secateurs.pruning import PruneSpec, prune
from secateurs.pruning.data import Dataset

from tests.conftest import cifar_inputs

require_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _run(weights, device=None):
    x, y = cifar_inputs(128, "train")
    spec = PruneSpec.model_validate({"signal": "taylor", "target": {"macs": 0.6}, "calibration": {"samples": 128},
                                     "recovery": {"method": "distill", "epochs": 1}, "measure": {"repeats": 3}})
    return prune(weights, spec, arch="resnet20_cifar", calibration=Dataset(x, y), device=device).report


def test_default_device_is_the_one_available(resnet20_weights):
    r = _run(resnet20_weights)
    assert r["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert r["macs_kept"] <= 0.6 and r["recovery"]["steps"] > 0


@require_cuda
def test_cuda_path_scores_recovers_and_exports(resnet20_weights):
    r = _run(resnet20_weights, device="cuda")
    assert r["device"] == "cuda" and r["max_abs_diff"] < 1e-3 and r["macs_kept"] <= 0.6
