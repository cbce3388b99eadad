"""Detectors, segmenters and vision transformers from the libraries users build them with (Ultralytics with its own
ONNX exporter, timm, torchvision; random weights, nothing downloaded) prune to at most 60% of their MACs and come
back with the same output names and shapes in ONNX Runtime at the original's own input shape."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from secateurs.pruning import PruneSpec, prune

from tests.pruning.exporters import segmenter_onnx, timm_onnx, ultralytics_onnx

SPEC = PruneSpec.model_validate({"signal": "l2_norm", "target": {"macs": 0.6}, "measure": {"repeats": 3}})


def _outputs(data: bytes, x: np.ndarray) -> list[tuple[str, tuple[int, ...]]]:
    import onnxruntime as ort

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    values = sess.run(None, {sess.get_inputs()[0].name: x})
    return [(o.name, v.shape) for o, v in zip(sess.get_outputs(), values, strict=True)]


def _input_dims(data: bytes) -> list[int | str]:
    m = onnx.load_model_from_string(data)
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in m.graph.input[0].type.tensor_type.shape.dim]


def _check(data: bytes, calibration=None) -> dict:  # type: ignore[no-untyped-def]
    result = prune(data, SPEC, calibration=calibration)
    r = result.report
    assert r["macs_after"] <= 0.6 * r["macs_before"]
    assert r["macs_after"] >= 0.45 * r["macs_before"], "far under the target"
    dims = _input_dims(data)
    assert _input_dims(result.onnx) == dims
    batches = (dims[0],) if isinstance(dims[0], int) else (1, 2)
    for batch in batches:
        x = np.random.default_rng(batch).standard_normal([batch, *dims[1:]]).astype(np.float32)
        assert _outputs(result.onnx, x) == _outputs(data, x)
    return r


SEGMENTERS = ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SEGMENTERS)
def test_a_segmenter_whose_graph_keeps_shape_ops_prunes(name):
    _check(segmenter_onnx(name))


@pytest.mark.slow
@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolov8n-seg.yaml", "yolov8n-pose.yaml"])
def test_an_ultralytics_model_from_its_own_exporter_prunes_with_its_heads_kept(tmp_path, cfg):
    from secateurs.pruning.data import Dataset

    images = np.random.default_rng(0).uniform(0, 1, [10, 3, 64, 64]).astype(np.float32)
    r = _check(ultralytics_onnx(cfg, str(tmp_path)), Dataset(images, None))
    head = r["fidelity"]["outputs"][0]  # boxes and class scores before NMS: judged by mAP@0.5 of the boxes after it
    assert head["output"] == "output0" and head["kind"] == "detection" and head["metric"] == "map50"
    if cfg == "yolov8n-seg.yaml":  # 32 mask prototypes, not a 32-class segmentation
        assert r["fidelity"]["outputs"][1]["kind"] == "values"
    # every class/mask/keypoint head's last conv and the DFL conv reach an output: their channels are kept
    protected = set(r["protected_layers"])
    assert "model/22/dfl/conv/Conv" in protected
    assert {f"model/22/cv3/{i}/cv3/{i}/2/Conv" for i in range(3)} <= protected
    # the box branch is reshaped into (4 sides, 16 bins) for the DFL conv: the group Torch-Pruning cannot map there
    # is frozen and listed, the job goes on
    assert any(g["root"].startswith("model/22/cv2/") for g in r["frozen_groups"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_patch16_224"])
def test_a_vision_transformer_prunes_its_mlps_and_freezes_the_fused_qkv(name):
    r = _check(timm_onnx(name))
    frozen = [g["root"] for g in r["frozen_groups"]]
    assert len(frozen) == 12 and all("attn_qkv" in root for root in frozen)
    layers = {layer["name"]: layer for layer in r["layers"]}
    fc1 = [n for n in layers if "mlp_fc1" in n]
    assert fc1 and all(layers[n]["channels_after"] < layers[n]["channels_before"] for n in fc1)


@pytest.mark.slow
def test_a_swin_transformer_prunes_and_runs_at_any_batch():
    # windows partitioned by reshapes to shapes read off the tensor: re-exported by onnx2torch's own Reshape, every
    # shape downstream was folded at the traced batch and the model ran at batch 1 only (custom_ops.ShapedReshape)
    import timm

    from tests.pruning.exporters import _export_bytes

    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=10, img_size=56,
                              embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=7)
    r = _check(_export_bytes(model.eval(), (1, 3, 56, 56)))  # run at batch 1 and 2
    fc1 = [layer for layer in r["layers"] if "mlp_fc1" in layer["name"]]
    assert fc1 and all(layer["channels_after"] < layer["channels_before"] for layer in fc1)


@pytest.mark.slow
def test_a_model_whose_channels_the_graph_mismaps_is_refused_as_unsupported_naming_the_layer():
    # MobileViTv2: the unfolded patches' residual add pairs channels Torch-Pruning maps through a reshape wrongly,
    # and the pruned copy no longer runs; said as the engine's limit (exit 6), not as an internal error
    from secateurs.pruning.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match=r"^pruning breaks this model at '.*transformer.*' \(The size"):
        prune(timm_onnx("mobilevitv2_050", 256), SPEC)
