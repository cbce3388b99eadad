"""The engine end to end: real models in, pruned ONNX out, checked in ONNX Runtime."""

import numpy as np
import onnx
import pytest
from secateurs.pruning import PruneSpec, prune
from secateurs.pruning.data import load_npz
from secateurs.pruning.errors import SpecError
from secateurs.pruning.onnx_tools import run, session, stats

from tests.conftest import torchvision_onnx


def _spec(**kw):
    kw.setdefault("measure", {"repeats": 5})
    return PruneSpec.model_validate(kw)


def _runs_at_batches(data: bytes, shape: list[int], classes: int) -> None:
    sess = session(data)
    for batch in (1, 4):
        out = run(sess, np.random.default_rng(1).standard_normal([batch, *shape[1:]]).astype(np.float32))
        assert out.shape == (batch, classes)


def test_resnet20_cifar_meets_the_macs_target_and_reports_it(resnet20_weights, cifar_eval_npz):
    spec = _spec(signal="l2_norm", target={"macs": 0.6})
    result = prune(resnet20_weights, spec, arch="resnet20_cifar", evaluation=load_npz(cifar_eval_npz.read_bytes()))
    r = result.report
    assert 0.57 <= r["macs_kept"] <= 0.6, r["macs_kept"]
    assert r["target_met"] is True
    # the report's MACs are the downloaded file's MACs
    assert r["macs_after"] == stats(result.onnx, [1, 3, 32, 32]).macs
    assert r["params_after"] < r["params_before"]
    assert r["max_abs_diff"] < 1e-3
    assert r["accuracy_before"] > 0.85 and 0 <= r["accuracy_after"] <= 1 and 0 <= r["agreement"] <= 1
    assert set(r["stage_seconds"]) >= {"import", "analyse", "score", "plan", "export", "verify", "report"}
    stem = {layer["name"]: layer for layer in r["layers"]}
    assert stem["linear"]["channels_after"] == 10  # the classifier keeps its classes
    assert any(layer["channels_after"] < layer["channels_before"] for layer in r["layers"])
    for layer in r["layers"][:-1]:  # default rounding: 16 from 64 channels, 4 from 16
        assert layer["channels_after"] % (16 if layer["channels_before"] >= 64 else 4) == 0, layer
    for layer in r["layers"]:  # `cut` marks exactly the channels that went, no more, no fewer
        bits = "".join(f"{int(d, 16):04b}" for d in layer["cut"])
        assert len(layer["cut"]) == -(-layer["channels_before"] // 4) and set(bits[layer["channels_before"]:]) <= {"0"}
        assert bits.count("1") == layer["channels_before"] - layer["channels_after"], layer
    _runs_at_batches(result.onnx, [1, 3, 32, 32], 10)
    model = onnx.load_model_from_string(result.onnx)
    assert model.graph.input[0].name == "input"


@pytest.mark.parametrize("signal", ["l1_norm", "l2_norm", "fpgm", "bn_scale", "random"])
def test_every_data_free_signal_prunes_resnet20(resnet20_weights, signal):
    result = prune(resnet20_weights, _spec(signal=signal, target={"macs": 0.7}), arch="resnet20_cifar")
    assert 0.66 <= result.report["macs_kept"] <= 0.7


def test_a_callers_loaded_model_is_left_whole(resnet20_weights):
    from secateurs.pruning.loading import load_model

    loaded = load_model(resnet20_weights, arch="resnet20_cifar")
    widths = [m.out_channels for m in loaded.module.modules() if hasattr(m, "out_channels")]
    result = prune(loaded, _spec(target={"macs": 0.5}))
    assert result.report["macs_kept"] <= 0.5
    assert [m.out_channels for m in loaded.module.modules() if hasattr(m, "out_channels")] == widths
    assert [m.out_channels for m in result.model.modules() if hasattr(m, "out_channels")] != widths


@pytest.mark.parametrize("kind,value", [("params", 0.5), ("channels", 0.6)])
def test_params_and_channels_targets(resnet20_weights, kind, value):
    result = prune(resnet20_weights, _spec(target={kind: value}), arch="resnet20_cifar")
    if kind == "params":
        assert result.report["params_kept"] <= value
        assert result.report["params_kept"] >= value - 0.05
    else:
        before = sum(layer["channels_before"] for layer in result.report["layers"][:-1])
        after = sum(layer["channels_after"] for layer in result.report["layers"][:-1])
        assert after / before <= value + 0.02


def test_local_scope_prunes_every_layer_alike(resnet20_weights):
    result = prune(resnet20_weights, _spec(target={"channels": 0.5}, scope="local"), arch="resnet20_cifar")
    inner = [layer for layer in result.report["layers"] if layer["name"].endswith("conv1") and "layer" in layer["name"]]
    # the same fraction everywhere, up to one rounding step (4 channels under 64, else 16)
    for layer in inner:
        half, step = layer["channels_before"] / 2, (16 if layer["channels_before"] >= 64 else 4)
        assert half - step <= layer["channels_after"] <= half, layer


def test_round_to_keeps_channel_counts_at_multiples(resnet20_weights):
    result = prune(resnet20_weights, _spec(target={"macs": 0.6}, round_to=4), arch="resnet20_cifar")
    for layer in result.report["layers"][:-1]:
        assert layer["channels_after"] % 4 == 0, layer


def test_default_rounding_steps_by_16_from_64_channels_and_by_4_from_16():
    """torchvision ResNet-18: groups of 64-512 channels land on multiples of 16 (ONNX Runtime's AVX-512
    block), none on a count its NCHWc kernels refuse."""
    data = torchvision_onnx("resnet18", size=64)
    result = prune(data, _spec(target={"macs": 0.5}))
    assert result.report["macs_kept"] <= 0.5
    changed = 0
    for layer in result.report["layers"][:-1]:
        before, after = layer["channels_before"], layer["channels_after"]
        assert after % 16 == 0, layer
        changed += after < before
    assert changed >= 4


def test_protected_layers_keep_their_channels(resnet20_weights):
    result = prune(resnet20_weights, _spec(target={"macs": 0.7}, protect=[r"^layer1\."]), arch="resnet20_cifar")
    for layer in result.report["layers"]:
        if layer["name"].startswith("layer1.") and layer["name"].endswith("conv1"):
            assert layer["channels_after"] == layer["channels_before"]


def test_iterative_schedule_reaches_the_same_target(resnet20_weights):
    result = prune(resnet20_weights, _spec(target={"macs": 0.5}, schedule={"steps": 3}), arch="resnet20_cifar")
    assert 0.47 <= result.report["macs_kept"] <= 0.5


def test_no_layer_is_emptied_even_at_tiny_targets(resnet20_weights):
    with pytest.raises(SpecError, match="cannot be reached"):
        prune(resnet20_weights, _spec(target={"macs": 0.001}), arch="resnet20_cifar")


def test_bn_scale_on_an_exported_model_explains_the_folding():
    with pytest.raises(SpecError, match="folds BatchNorm"):
        prune(torchvision_onnx("resnet18", size=32), _spec(signal="bn_scale", target={"macs": 0.6}))


def test_progress_and_cancel_hooks(resnet20_weights):
    from secateurs.pruning.errors import Cancelled

    seen = []
    prune(resnet20_weights, _spec(), arch="resnet20_cifar", progress=lambda s, f, m, x: seen.append((s, f)))
    stages = [s for s, _ in seen]
    assert stages[0] == "import" and stages[-1] == "done"
    assert [f for _, f in seen] == sorted(f for _, f in seen)
    calls = []

    def cancel_after_analysis():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        prune(resnet20_weights, _spec(), arch="resnet20_cifar", should_cancel=cancel_after_analysis)


def test_latency_target_is_searched_by_measuring_candidates():
    from secateurs.pruning.onnx_tools import latency

    data = torchvision_onnx("resnet18", size=64)
    original_ms = latency(data, data, [1, 3, 64, 64], batch=1, threads=1, repeats=20)[0]
    target = 0.6 * original_ms
    result = prune(data, _spec(target={"latency_ms": target}, measure={"repeats": 20}))
    r = result.report
    search = r["latency_search"]
    assert r["latency_target_ms"] == target and search["tried"]
    chosen = [t for t in search["tried"] if t["macs_fraction"] == search["macs_fraction"]][0]
    assert chosen["latency_ms"] <= target  # every accepted candidate was measured under the budget
    assert r["macs_kept"] < 0.9
