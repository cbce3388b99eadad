"""Recovery on real data: ResNet-20 with its pretrained weights, CIFAR-10 calibration and test images."""

import copy

import pytest
from secateurs.pruning import PruneSpec, prune
from secateurs.pruning.data import Dataset
from secateurs.pruning.errors import SpecError

from tests.conftest import cifar_inputs


@pytest.fixture(scope="module")
def data():
    xc, yc = cifar_inputs(512, "train")
    xe, ye = cifar_inputs(500, "test")
    return Dataset(xc, yc), Dataset(xe, ye)


@pytest.fixture(scope="module")
def baseline(resnet20_weights, data):
    cal, ev = data
    return _run(resnet20_weights, cal, ev, "none")


def _run(weights, cal, ev, method, **recovery):
    spec = PruneSpec.model_validate({
        "signal": "l2_norm", "target": {"macs": 0.5}, "recovery": {"method": method, **recovery},
        "calibration": {"samples": 512}, "measure": {"repeats": 3},
    })
    return prune(weights, spec, arch="resnet20_cifar", calibration=cal, evaluation=ev).report


@pytest.mark.parametrize("method,extra", [("bn_recalibrate", {}), ("reconstruct", {}),
                                          ("distill", {"epochs": 2, "precision": "fp32"}),
                                          ("finetune", {"epochs": 2})])
def test_each_recovery_wins_back_accuracy(resnet20_weights, data, baseline, method, extra):
    from secateurs.pruning.recovery import native_bf16

    cal, ev = data
    r = _run(resnet20_weights, cal, ev, method, **extra)
    assert r["recovery"]["method"] == method
    if method in ("distill", "finetune"):  # fp32 when asked; auto is bf16 exactly where the CPU has it natively
        assert r["recovery"]["precision"] == extra.get("precision", "bf16" if native_bf16(r["device"]) else "fp32")
    assert r["macs_kept"] <= 0.5
    # measured here: none ~0.16, bn_recalibrate ~0.45, reconstruct ~0.63, distill/finetune (2 epochs) ~0.5
    assert r["accuracy_after"] > baseline["accuracy_after"] + 0.15, (method, r["accuracy_after"], baseline["accuracy_after"])
    assert r["agreement"] > baseline["agreement"]


def test_reconstruct_refits_the_layers_whose_inputs_shrank(resnet20_weights, data):
    cal, ev = data
    r = _run(resnet20_weights, cal, ev, "reconstruct")
    pruned_inputs = sum(1 for layer in r["layers"] if layer["channels_after"] < layer["channels_before"])
    assert r["recovery"]["layers_refit"] >= pruned_inputs > 0


def test_finetune_without_labels_is_refused(resnet20_weights, data):
    cal, _ = data
    with pytest.raises(SpecError, match="labels"):
        _run(resnet20_weights, Dataset(cal.x, None), None, "finetune")


@pytest.mark.parametrize("signal", ["taylor", "fisher", "activation_mean", "apoz", "dead_units", "similarity",
                                    "lasso"])
def test_data_driven_signal_without_data_is_refused(resnet20_weights, signal):
    with pytest.raises(SpecError, match="calibration"):
        prune(resnet20_weights, PruneSpec(signal=signal, target={"macs": 0.5}), arch="resnet20_cifar")


def test_distill_respects_its_time_budget(resnet20_weights, data):
    cal, ev = data
    r = _run(resnet20_weights, cal, ev, "distill", epochs=1000, max_minutes=0.05)
    assert r["recovery"]["seconds"] < 3 + 6
    assert r["recovery"]["epochs"] < 1000
    # the cosine schedule followed the clock, so the run cut by time still ended annealed
    assert r["recovery"]["last_lr"] < 0.05 * r["recovery"]["lr"]


def test_augmentation_flips_and_crops_each_image_on_its_own():
    import torch
    import torch.nn.functional as F
    from secateurs.pruning.recovery import _augment

    x = torch.randn(64, 3, 32, 32)
    out = _augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    offsets = set()
    for i in range(len(x)):
        found = [
            (flip, dy, dx)
            for flip in (False, True)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(F.pad(x[i].flip(2) if flip else x[i], (4, 4, 4, 4))[:, dy : dy + 32, dx : dx + 32], out[i])
        ]
        assert len(found) == 1  # every output is exactly one flip and 4-pixel crop of its own input
        offsets.add(found[0])
    assert len(offsets) > 32  # offsets drawn per image, not one for the whole batch


def test_several_image_inputs_get_one_flip_and_crop_a_sample_and_other_inputs_none():
    import torch
    import torch.nn.functional as F
    from secateurs.pruning.recovery import _augment, _mix

    g = torch.Generator().manual_seed(0)
    left = torch.randn(32, 3, 32, 32)
    small = left[:, :, ::2, ::2].contiguous()  # another size: [32, 3, 16, 16]
    sizes, ids = torch.rand(32, 2), torch.arange(32)
    out = _augment((left, left.clone(), small, sizes, ids), g)
    assert torch.equal(out[0], out[1]) and not torch.equal(out[0], left)  # two views of one scene stay one
    flipped = [not torch.equal(o, s) for o, s in zip(out[2], small, strict=True)]
    assert all(torch.equal(o, s.flip(2) if f else s) for o, s, f in zip(out[2], small, flipped, strict=True))
    assert 0 < sum(flipped) < 32  # flipped or not, as the first input's samples are, and never cut
    for a, x, f in zip(out[0], left, flipped, strict=True):  # the same flip as the sample's full-size views
        assert any(torch.equal(F.pad(x.flip(2) if f else x, (4, 4, 4, 4))[:, dy:dy + 32, dx:dx + 32], a)
                   for dy in range(9) for dx in range(9))
    assert out[3] is sizes and out[4] is ids
    mixed = _mix((left, left.clone(), sizes, ids), g)
    assert torch.equal(mixed[0], mixed[1]) and mixed[2] is sizes and mixed[3] is ids


def test_the_distillation_teacher_runs_in_onnx_runtime_with_the_modules_outputs():
    import numpy as np
    import torch
    from secateurs.pruning.recovery import Teacher
    from secateurs.pruning.zoo import build

    torch.manual_seed(0)
    module = build("resnet20_cifar", 10).eval()
    example = torch.randn(8, 3, 32, 32)
    teacher = Teacher(module, example, "cpu")
    assert teacher.session is not None
    x = torch.randn(5, 3, 32, 32)  # another batch size than the example: the batch axis is dynamic
    with torch.no_grad():
        expected = module(x)
    (got,) = teacher(x)  # every output, in its own shape
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_the_teacher_falls_back_to_the_module_when_its_export_fails():
    import torch
    from secateurs.pruning.recovery import Teacher

    class Unexportable(torch.nn.Module):
        def forward(self, x):
            return torch.from_numpy(x.numpy() * 2)  # leaves the graph: the tracer cannot follow it

    teacher = Teacher(Unexportable(), torch.ones(2, 3), "cpu")
    assert teacher.session is None
    assert torch.equal(teacher(torch.ones(2, 3))[0], torch.full((2, 3), 2.0))


def test_auto_precision_is_bf16_exactly_on_cpus_with_native_bf16():
    from pathlib import Path

    from secateurs.pruning.recovery import resolve_precision

    # workers run Linux (the images, CI): the kernel's own list of the CPU's flags is the independent answer
    info = Path("/proc/cpuinfo").read_text().splitlines()
    flags = {f for line in info if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")


def test_an_explicit_precision_stands_and_an_unknown_one_is_refused():
    from secateurs.pruning.recovery import resolve_precision

    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(SpecError, match="precision"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision"):
        PruneSpec.model_validate({"recovery": {"method": "distill", "precision": "fp16"}})


@pytest.mark.parametrize("precision,dtype", [("fp32", "float32"), ("bf16", "bfloat16")])
def test_training_computes_in_its_precision_and_keeps_float32_weights(precision, dtype):
    import numpy as np
    import torch
    from secateurs.pruning.recovery import train
    from torch import nn

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 256)
    x = rng.normal(0, 0.2, (256, 2, 8, 8)).astype(np.float32)
    x[np.arange(256), y] += 1.0  # the label is the brighter channel: learnable in a few steps
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 2))
    seen: list[torch.dtype] = []
    # training passes only (the channels-last layout is first tried on two samples in eval mode)
    model[0].register_forward_hook(lambda m, i, out: seen.append(out.dtype) if m.training else None)
    data = Dataset(x, y.astype(np.int64))

    def correct() -> float:
        with torch.no_grad():
            return float((model.eval()(torch.from_numpy(x)).argmax(1).numpy() == y).mean())

    before = correct()
    seen.clear()
    stats = train(model, data, teacher=None, epochs=8, lr=0.1, batch_size=32, device="cpu", precision=precision)
    assert stats["precision"] == precision
    assert len(seen) == 8 * 256 // 32 and all(d == getattr(torch, dtype) for d in seen)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert correct() > max(before, 0.9)


def test_mixup_blends_pairs_of_the_batch_and_is_refused_without_a_teacher():
    import numpy as np
    import torch
    from secateurs.pruning.recovery import _mix, train
    from torch import nn

    x = torch.stack([torch.full((1, 2, 2), float(v)) for v in (0.0, 1.0, 10.0, 100.0)])
    out = _mix(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for img in out:  # constant images: each blend is constant, between two of the batch's values
        assert torch.all(img == img.flatten()[0])
        assert 0.0 <= float(img.flatten()[0]) <= 100.0
    assert not torch.equal(out, x)
    data = Dataset(np.zeros((8, 1, 2, 2), np.float32), np.zeros(8, np.int64))
    with pytest.raises(SpecError, match="mixup"):
        train(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), data, teacher=None, epochs=1, lr=0.1, batch_size=4,
              device="cpu", mixup=True)
    with pytest.raises(ValueError, match="mixup"):
        PruneSpec.model_validate({"recovery": {"method": "finetune", "mixup": True}})


def test_distill_with_mixup_wins_back_accuracy(resnet20_weights, data, baseline):
    cal, ev = data
    r = _run(resnet20_weights, cal, ev, "distill", epochs=2, mixup=True)
    assert r["recovery"]["mixup"] is True
    assert r["accuracy_after"] > baseline["accuracy_after"] + 0.15, (r["accuracy_after"], baseline["accuracy_after"])


def test_a_bf16_teacher_runs_the_module_and_answers_float32_close_to_float32():
    import torch
    from secateurs.pruning import zoo
    from secateurs.pruning.recovery import Teacher

    torch.manual_seed(0)
    module = zoo.build("resnet20_cifar", 10).eval()
    x = torch.randn(16, 3, 32, 32)
    (exact,) = Teacher(module, x, "cpu", "fp32")(x)
    teacher = Teacher(module, x, "cpu", "bf16")
    assert teacher.session is None  # ONNX Runtime computes in float32: the module runs, under autocast
    (got,) = teacher(x)
    assert got.dtype == torch.float32 and got.shape == exact.shape
    scale = float(exact.abs().max())
    assert torch.allclose(got, exact, atol=0.05 * scale), float((got - exact).abs().max()) / scale
    assert not torch.equal(got, exact)  # it did compute in bf16


def test_distillation_compares_outputs_in_their_own_terms():
    import torch
    import torch.nn.functional as F
    from secateurs.pruning.recovery import distill_loss

    # a sigmoid text map the student lost as a whole (0.5 where the teacher says 0.9): a softmax over the map's
    # values sees two uniform distributions and no loss; per-value cross-entropy sees it and pulls it back up
    teacher = torch.full((2, 64), 0.9)
    student = torch.full((2, 64), 0.5, requires_grad=True)
    loss = distill_loss(student, teacher)
    loss.backward()
    assert float(loss) > 0.1 and bool((student.grad < 0).all())
    assert float(distill_loss(teacher.clone(), teacher)) == pytest.approx(float(F.binary_cross_entropy(teacher, teacher)))

    # probabilities a softmax made: KL of their logs, zero at agreement
    p = torch.softmax(torch.randn(4, 10, generator=torch.Generator().manual_seed(0)), 1)
    assert float(distill_loss(p.clone(), p)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(torch.full_like(p, 0.1), p)) > 0.01

    # logits: KL at the temperature, scaled by its square
    z, w = torch.randn(4, 10) * 5, torch.randn(4, 10) * 5
    expected = F.kl_div(F.log_softmax(z / 4, 1), F.softmax(w / 4, 1), reduction="batchmean") * 16
    assert float(distill_loss(z, w)) == pytest.approx(float(expected))


def test_training_runs_channels_last_and_hands_back_the_usual_layout():
    import numpy as np
    import torch
    from secateurs.pruning.recovery import train
    from torch import nn

    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(0, 1, (64, 3, 16, 16)).astype(np.float32)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 4))
    teacher = copy.deepcopy(model).eval()
    layouts: list[bool] = []
    model[0].register_forward_hook(
        lambda m, i, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last)) if m.training else None)
    stats = train(model, Dataset(x, None), teacher=teacher, epochs=1, lr=0.01, batch_size=16, device="cpu",
                  precision="fp32")
    assert stats["channels_last"] and layouts and all(layouts)
    for m in (model, teacher):  # both back in the usual layout, for export and for the caller
        assert all(p.is_contiguous() for p in m.parameters())

    class Viewing(nn.Module):  # a forward pass that needs the usual strides: trains in them
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4 * 16 * 16, 4)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            y = self.conv(t)
            return self.head(y.view(y.shape[0], -1))

    viewing = Viewing()
    stats = train(viewing, Dataset(x, None), teacher=copy.deepcopy(viewing).eval(), epochs=1, lr=0.01, batch_size=16,
                  device="cpu", precision="fp32")
    assert "channels_last" not in stats and stats["steps"] == 4
