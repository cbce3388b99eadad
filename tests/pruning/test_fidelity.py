"""The pruned model is checked against the ORIGINAL on data no signal or recovery step saw, in the terms of what
each output is, and a model that lost more than the budget is never handed back."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from secateurs.pruning import PruneSpec, prune
from secateurs.pruning import fidelity as fid
from secateurs.pruning.data import Dataset
from secateurs.pruning.errors import FidelityError

from tests.conftest import cifar_inputs, npz_bytes, shared, torchvision_onnx
from tests.pruning.exporters import DBNet, crnn_onnx, small_classifier, torch_onnx

QUICK = {"signal": "l2_norm", "target": {"macs": 0.6}, "measure": {"repeats": 3}}


def _spec(**extra) -> PruneSpec:  # type: ignore[no-untyped-def]
    return PruneSpec.model_validate({**QUICK, **extra})


def _images(n: int, shape: tuple[int, ...], seed: int = 0) -> Dataset:
    return Dataset(np.random.default_rng(seed).standard_normal([n, *shape]).astype(np.float32), None)


def test_a_classifier_is_measured_on_held_out_calibration_data_the_recovery_never_saw(monkeypatch):
    from secateurs.pruning import recovery

    seen: list[int] = []
    real = recovery.bn_recalibrate

    def spy(net, data, **kw):  # type: ignore[no-untyped-def]
        seen.append(len(data))
        return real(net, data, **kw)

    monkeypatch.setattr(recovery, "bn_recalibrate", spy)
    x, y = cifar_inputs(100, split="train")
    r = prune(shared("resnet20_cifar10.safetensors").read_bytes(), _spec(recovery={"method": "bn_recalibrate"}),
              arch="resnet20_cifar", num_classes=10, calibration=Dataset(x, y)).report
    f = r["fidelity"]
    assert f["measured"] and f["data"] == "held-out calibration" and f["samples"] == 20
    assert seen and set(seen) == {80}, "recovery saw only the 80 samples not held out"
    (out,) = f["outputs"]
    assert out["kind"] == "classes" and out["metric"] == "top1_agreement" and out["samples"] == 20
    assert 0 <= out["value"] <= 1 and out["kl"] >= 0 and out["accuracy_before"] > 0.8
    assert r["agreement"] == out["value"] and r["evaluated_on"] == "held-out calibration"


def test_the_split_is_seeded_disjoint_and_leaves_small_sets_whole():
    data = _images(50, (3, 4, 4))
    keep, held = fid.split(data)
    assert held is not None and len(held) == 10 and len(keep) == 40
    rows = {tuple(v.ravel()[:3]) for v in keep.x} & {tuple(v.ravel()[:3]) for v in held.x}
    assert not rows
    assert fid.split(_images(9, (3, 4, 4)))[1] is None


def test_a_probability_map_is_judged_by_iou_and_a_blank_one_fails_the_budget(monkeypatch):
    from secateurs.pruning import pipeline

    data = torch_onnx(DBNet(), (1, 3, 64, 64), fold=False).SerializeToString()
    calib = _images(40, (3, 64, 64))
    ok = prune(data, _spec(target={"macs": 0.9}), calibration=calib).report["fidelity"]
    (out,) = ok["outputs"]
    assert out["kind"] == "map" and out["metric"] == "iou" and "psnr" in out and out["samples"] == 8

    real = pipeline._export

    def blank(net, example, loaded, spec):  # type: ignore[no-untyped-def]
        import torch

        with torch.no_grad():  # a head that lost its way: every pixel the same
            last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
            last.weight.zero_()
            last.bias.fill_(-5.0)
        return real(net, example, loaded, spec)

    monkeypatch.setattr(pipeline, "_export", blank)
    with pytest.raises(FidelityError, match=r"lost 100.00 points of iou on output 'y'") as caught:
        prune(data, _spec(target={"macs": 0.9}, fidelity={"max_drop": 10}), calibration=calib)
    f = caught.value.report["fidelity"]
    assert f["held"] is False and f["outputs"][0]["value"] == 0.0


def test_a_ctc_recognizer_is_judged_by_exact_decodes():
    data = crnn_onnx()
    r = prune(data, _spec(target={"macs": 0.95}), calibration=_images(20, (1, 32, 64))).report
    (out,) = r["fidelity"]["outputs"]
    assert out["kind"] == "sequence" and out["metric"] == "exact_match" and out["samples"] == 4
    assert 0 <= out["step_agreement"] <= 1 and 0 <= out["value"] <= 1


def test_ctc_decoding_collapses_repeats_and_drops_blanks():
    assert fid._ctc_decode(np.array([0, 3, 3, 0, 3, 5, 5, 0])) == (3, 3, 5)


def test_segmentation_maps_are_judged_by_mean_iou():
    kind = fid.OutputKind("out", "segmentation", None)
    before = np.zeros([2, 3, 4, 4])
    before[:, 1, :2] = 1.0  # class 1 on the top half, class 0 below
    after = before.copy()
    after[:, 1, 1] = 0.0  # one row of class 1 lost to class 0
    r = fid.compare(kind, before, after, None)
    assert r["value"] == pytest.approx((4 / 8 + 8 / 12) / 2) and r["pixel_agreement"] == pytest.approx(0.75)


def test_no_data_says_fidelity_was_not_measured_and_a_budget_without_data_is_refused(tmp_path):
    src = tmp_path / "m.onnx"
    src.write_bytes(torchvision_onnx("resnet18", size=32))
    proc = subprocess.run([sys.executable, "-m", "secateurs.cli", "prune", str(src), "-o", str(tmp_path / "o.onnx"),
                           "--target", "macs=0.6", "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "fidelity not measured: no data" in proc.stderr and "fidelity not measured" in proc.stdout
    refused = subprocess.run([sys.executable, "-m", "secateurs.cli", "prune", str(src), "-o", str(tmp_path / "p.onnx"),
                              "--max-drop", "1", "--quiet"], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "fidelity.max_drop needs data" in refused.stderr


def test_max_drop_missed_exits_3_writes_the_report_and_not_the_model(tmp_path):
    calib = tmp_path / "c.npz"
    x, y = cifar_inputs(50, split="train")
    calib.write_bytes(npz_bytes(x=x, y=y))
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "secateurs.cli", "prune", "--arch", "resnet20_cifar", "--weights",
                           str(shared("resnet20_cifar10.safetensors")), "-o", str(out), "--calib", str(calib),
                           "--target", "macs=0.3", "--max-drop", "1", "--report", str(report), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    r = json.loads(report.read_text())
    assert r["fidelity"]["outputs"][0]["drop_points"] > 1, "ResNet-20 at 30% of its MACs without recovery"
    assert proc.returncode == 3, proc.stderr
    assert "fidelity budget missed" in proc.stderr and not out.exists()
    assert r["fidelity"]["held"] is False and r["fidelity"]["max_drop"] == 1


def _boxes(*rows):  # type: ignore[no-untyped-def]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def test_map50_is_one_for_the_same_boxes_and_falls_when_a_box_moves_or_is_lost():
    truth = [(_boxes([0, 0, 10, 10], [20, 20, 30, 30]), np.array([0.9, 0.8]), np.array([0, 1]))]
    assert fid.map50(truth, truth) == 1.0
    moved = [(_boxes([0, 0, 10, 10], [26, 26, 36, 36]), np.array([0.9, 0.8]), np.array([0, 1]))]
    assert fid.map50(truth, moved) == pytest.approx(0.5)  # class 1's box overlaps its truth by IoU 0.09
    lost = [(_boxes([0, 0, 10, 10]), np.array([0.9]), np.array([0]))]
    assert fid.map50(truth, lost) == pytest.approx(0.5)
    assert fid.map50([(_boxes(), np.zeros(0), np.zeros(0))], [(_boxes(), np.zeros(0), np.zeros(0))]) == 1.0


def test_nms_keeps_one_of_two_overlapping_boxes_of_a_class_and_both_of_two_classes():
    # rows: cx, cy, w, h, then two class scores; three anchors
    head = np.array([[5, 5.5, 50], [5, 5, 50], [10, 10, 10], [10, 10, 10],
                     [0.9, 0.8, 0.1], [0.0, 0.0, 0.7]])
    boxes, scores, labels = fid.detect(head, (4, 6))
    assert sorted(zip(labels.tolist(), scores.tolist(), strict=True)) == [(0, 0.9), (1, 0.7)]


def test_a_yolo_style_head_is_judged_by_map50_and_a_detector_that_finds_nothing_fails(monkeypatch):
    from secateurs.pruning import pipeline

    from tests.pruning.exporters import AnchorHead

    data = torch_onnx(AnchorHead(), (1, 3, 64, 64), fold=False).SerializeToString()
    calib = Dataset(np.random.default_rng(0).uniform(0, 1, [20, 3, 64, 64]).astype(np.float32), None)
    (near,) = prune(data, _spec(target={"macs": 0.9}), calibration=calib).report["fidelity"]["outputs"]
    assert near["kind"] == "detection" and near["metric"] == "map50" and near["boxes_before"] > 0
    assert near["value"] >= 0.9

    real = pipeline._export

    def blind(net, example, loaded, spec):  # type: ignore[no-untyped-def]
        import torch

        with torch.no_grad():  # every class score far under the confidence threshold
            net.get_submodule(next(n for n, m in net.named_modules() if n.startswith("cls"))).bias.fill_(-10.0)
        return real(net, example, loaded, spec)

    monkeypatch.setattr(pipeline, "_export", blind)
    with pytest.raises(FidelityError, match=r"lost 100.00 points of map50") as caught:
        prune(data, _spec(target={"macs": 0.9}, fidelity={"max_drop": 5}), calibration=calib)
    (out,) = caught.value.report["fidelity"]["outputs"]
    assert out["boxes_after"] == 0 and out["value"] == 0.0


def test_a_garbled_recognizer_fails_the_budget(monkeypatch):
    """A recognizer whose alphabet came out of pruning shuffled reads every step: per-step agreement is what it
    is, but no decoded string survives, and the job fails."""
    from secateurs.pruning import pipeline

    data = crnn_onnx()
    calib = _images(20, (1, 32, 64))
    kept = prune(data, _spec(target={"macs": 1.0}, fidelity={"max_drop": 5}), calibration=calib).report
    assert kept["fidelity"]["held"] and kept["fidelity"]["outputs"][0]["value"] == 1.0
    real = pipeline._export

    def garbled(net, example, loaded, spec):  # type: ignore[no-untyped-def]
        import torch

        with torch.no_grad():  # the last layer's letters rolled by one: every decode reads other letters
            fc = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
            fc.weight.copy_(fc.weight.roll(1, 0))
            fc.bias.copy_(fc.bias.roll(1, 0))
        return real(net, example, loaded, spec)

    monkeypatch.setattr(pipeline, "_export", garbled)
    with pytest.raises(FidelityError, match=r"points of exact_match on output 'logp'") as caught:
        prune(data, _spec(target={"macs": 1.0}, fidelity={"max_drop": 5}), calibration=calib)
    (out,) = caught.value.report["fidelity"]["outputs"]
    assert out["kind"] == "sequence" and out["value"] < 0.95 and out["step_agreement"] < 0.5


def test_a_budget_that_could_not_be_checked_fails_instead_of_passing():
    from secateurs.pruning.errors import SpecError

    from tests.pruning.exporters import fix_batch

    data = fix_batch(torch_onnx(small_classifier(), (8, 3, 32, 32), outputs=("prob",)), 8).SerializeToString()
    # 10 samples: 2 held out, fewer than the model's fixed batch of 8, so nothing can be measured
    with pytest.raises(SpecError, match="fidelity.max_drop could not be checked: fewer samples than"):
        prune(data, _spec(fidelity={"max_drop": 1}), calibration=_images(10, (3, 32, 32)))


def test_a_forced_metric_that_does_not_fit_the_output_is_refused():
    from secateurs.pruning.errors import SpecError

    data = torch_onnx(small_classifier(), (1, 3, 32, 32), outputs=("prob",)).SerializeToString()
    with pytest.raises(SpecError, match="fidelity.metric 'exact_match' does not fit output 'prob'"):
        prune(data, _spec(fidelity={"metric": "exact_match"}), calibration=_images(20, (3, 32, 32)))


def test_identical_maps_have_no_psnr_figure_rather_than_infinity():
    kind = fid.OutputKind("y", "map", "sigmoid")
    same = np.random.default_rng(0).uniform(0, 1, [2, 1, 4, 4])
    r = fid.compare(kind, same, same, None)
    assert r["value"] == 1.0 and r["psnr"] is None
    json.dumps(r, allow_nan=False)


def test_the_engines_own_verdicts_are_never_relabelled_as_the_memory_limit():
    from secateurs.pruning.errors import SpecError
    from secateurs.pruning.pipeline import _Run

    class Hit:
        def hit(self) -> bool:
            return True

    run = _Run(None, None, PruneSpec.model_validate({}))
    run.cap = Hit()  # type: ignore[assignment]
    assert not run.memory_ran_out(FidelityError("missed", {}))
    assert not run.memory_ran_out(SpecError("bad"))
    assert run.memory_ran_out(RuntimeError("Failed to serialize proto"))


def test_a_fixed_batch_recognizer_is_judged_along_its_own_batch_axis():
    import io
    import warnings

    import torch

    from tests.pruning.exporters import CRNN

    torch.manual_seed(0)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a batch of 2 fixed everywhere: the output is [16, 2, 11], batch on axis 1
        torch.onnx.export(CRNN().eval(), torch.randn(2, 1, 32, 64), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logp"], do_constant_folding=False)
    r = prune(buf.getvalue(), _spec(target={"macs": 0.95}), calibration=_images(20, (1, 32, 64))).report
    (out,) = r["fidelity"]["outputs"]
    assert out["kind"] == "sequence" and out["samples"] == 4, out  # 4 held-out images, not 16 steps x 2 batches


def test_a_normalised_embedding_is_judged_by_cosine_and_class_scores_by_agreement():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Model(nn.Module):
        def __init__(self, head: str) -> None:
            super().__init__()
            self.head = head
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                                      nn.ReLU())
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc, self.fc2 = nn.Linear(32, 10), nn.Linear(32, 10)
            self.squeeze = nn.Conv2d(32, 10, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.body(x)
            if self.head == "normalised":
                return F.normalize(self.pool(f), dim=1)
            if self.head == "squeezenet":  # class scores pooled from a 1x1 conv
                return self.pool(torch.relu(self.squeeze(f)))
            if self.head == "two heads":  # DeiT-distilled: the mean of two heads, a Div by a constant
                return (self.fc(self.pool(f)) + self.fc2(self.pool(f))) / 2
            return self.fc(self.pool(f))

    calib = _images(20, (3, 16, 16))
    for head, kind in (("normalised", "values"), ("linear", "classes"), ("squeezenet", "classes"),
                       ("two heads", "classes")):
        data = torch_onnx(Model(head), (1, 3, 16, 16)).SerializeToString()
        (out,) = prune(data, _spec(target={"macs": 0.9}), calibration=calib).report["fidelity"]["outputs"]
        assert out["kind"] == kind, (head, out)
