"""Every torchvision classification family, exported to ONNX the ordinary way (opset 17, dynamic batch),
prunes with `secateurs prune M.onnx -o P.onnx --signal l2_norm --target macs=0.6` to at most 60% of the
MACs, and the output runs in ONNX Runtime at batch 1 and 4 with the original's output shape.
Random weights; inputs as small as each architecture allows, to keep the suite fast."""

import json

import numpy as np
import pytest
from secateurs.cli import main
from secateurs.pruning.onnx_tools import run, session

from tests.conftest import torchvision_onnx

FAMILIES = [
    ("resnet18", 32, {}),
    ("resnext50_32x4d", 32, {}),
    ("wide_resnet50_2", 32, {}),
    ("mobilenet_v2", 32, {}),
    ("mobilenet_v3_large", 32, {}),
    ("efficientnet_b0", 32, {}),
    ("efficientnet_v2_s", 32, {}),
    ("densenet121", 32, {}),
    ("googlenet", 32, {"aux_logits": False, "init_weights": False}),
    ("inception_v3", 80, {"aux_logits": False, "init_weights": False}),
    ("shufflenet_v2_x1_0", 32, {}),
    ("squeezenet1_1", 64, {}),
    ("regnet_x_400mf", 32, {}),
    ("regnet_y_400mf", 32, {}),
    ("mnasnet1_0", 32, {}),
    ("vgg11_bn", 224, {}),
    ("alexnet", 224, {}),
    ("convnext_tiny", 32, {}),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,size,kwargs", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_family_prunes_to_the_macs_target(tmp_path, name, size, kwargs):
    src, out, report = tmp_path / "m.onnx", tmp_path / "p.onnx", tmp_path / "r.json"
    src.write_bytes(torchvision_onnx(name, size=size, **kwargs))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"measure": {"repeats": 3}}))
    code = main(["prune", str(src), "-o", str(out), "--signal", "l2_norm", "--target", "macs=0.6",
                 "--spec", str(spec), "--report", str(report), "--quiet"])
    assert code == 0
    r = json.loads(report.read_text())
    assert r["macs_after"] <= 0.6 * r["macs_before"]
    assert r["macs_after"] >= 0.5 * r["macs_before"], "far under the target"
    original, pruned = session(src.read_bytes()), session(out.read_bytes())
    for batch in (1, 4):
        x = np.random.default_rng(batch).standard_normal([batch, 3, size, size]).astype(np.float32)
        assert run(pruned, x).shape == run(original, x).shape == (batch, 1000)
