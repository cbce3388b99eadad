"""The budget search: fidelity.max_drop without a target finds the smallest model within it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from secateurs.pruning import PruneSpec, prune, search
from secateurs.pruning.data import Dataset
from secateurs.pruning.errors import FidelityError, SpecError

from tests.conftest import cifar_inputs, npz_bytes, shared


def _fake(drop_at: dict[float, float] | None = None, unreachable_below: float = 0.0, seconds: float = 1.0):  # type: ignore[no-untyped-def]
    """A probe whose drop is 40 x (1 - fraction) points (or as `drop_at` says), and a clock it advances."""
    now = [0.0]
    tried: list[float] = []

    def probe(fraction: float) -> search.Probe:
        tried.append(fraction)
        now[0] += seconds
        if fraction < unreachable_below:
            return search.Probe(fraction, False, seconds, reason="cannot be reached")
        drop = (drop_at or {}).get(fraction, 40 * (1 - fraction))
        return search.Probe(fraction, drop <= 10, seconds, drop_points=drop, result=f"model@{fraction}")

    return probe, tried, lambda: now[0]


def test_the_search_halves_then_bisects_to_the_smallest_fraction_within_the_budget():
    probe, tried, clock = _fake()  # holds (drop <= 10) from fraction 0.75 up
    out = search.run(probe, probes=10, seconds=1e9, clock=clock)
    assert tried[:3] == [0.5, 0.75, 0.625]
    assert out.best is not None and out.best.fraction == 0.75 and out.best.result == "model@0.75"
    assert out.stopped == "resolution" and all(p.result is None for p in out.probes if p is not out.best)


def test_the_search_stops_when_the_time_left_cannot_hold_another_probe_or_the_probes_run_out():
    probe, tried, clock = _fake(seconds=10.0)
    out = search.run(probe, probes=10, seconds=25.0, clock=clock)
    assert len(tried) == 2 and out.stopped == "time" and out.best is not None and out.best.fraction == 0.75
    probe, tried, clock = _fake()
    assert search.run(probe, probes=2, seconds=1e9, clock=clock).stopped == "probes" and len(tried) == 2


def test_an_unreachable_fraction_counts_as_a_miss_and_a_model_that_never_holds_gives_none():
    probe, tried, clock = _fake(unreachable_below=0.3, drop_at={0.5: 0.0, 0.25: 0.0})
    out = search.run(probe, probes=10, seconds=1e9, clock=clock)
    assert out.best is not None and 0.3 <= out.best.fraction <= 0.5 and tried[1] == 0.25
    probe, tried, clock = _fake(drop_at={f: 50.0 for f in (0.5, 0.75, 0.875, 0.9375, 0.96875)})
    out = search.run(probe, probes=10, seconds=1e9, clock=clock)
    assert out.best is None and out.stopped == "resolution"


def test_a_spec_with_max_drop_and_no_target_searches_and_one_with_neither_keeps_half_the_macs():
    assert PruneSpec.model_validate({"fidelity": {"max_drop": 1}}).searches
    spec = PruneSpec.model_validate({})
    assert not spec.searches and spec.target is not None and spec.target.macs == 0.5
    both = PruneSpec.model_validate({"target": {"macs": 0.7}, "fidelity": {"max_drop": 1}})
    assert not both.searches
    again = PruneSpec.model_validate(PruneSpec.model_validate({"fidelity": {"max_drop": 2}}).model_dump(mode="json"))
    assert again.searches, "a stored spec (API -> worker) still searches"


def test_max_drop_alone_finds_a_smaller_model_checked_on_data_the_search_never_saw(tmp_path):
    calib = tmp_path / "c.npz"
    x, y = cifar_inputs(200, split="train")
    calib.write_bytes(npz_bytes(x=x, y=y))
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "secateurs.cli", "prune", "--arch", "resnet20_cifar", "--weights",
                           str(shared("resnet20_cifar10.safetensors")), "-o", str(out), "--calib", str(calib),
                           "--max-drop", "5", "--recover", "bn_recalibrate", "--report", str(report), "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    s = r["search"]
    assert len(s["points"]) >= 3 and s["probe_data"] == "held-out calibration"
    # 200 samples: 40 held out for the final check, 32 of the rest for the probes, 128 for scoring and recovery
    assert (s["fit_samples"], s["probe_samples"], r["fidelity"]["samples"]) == (128, 32, 40)
    chosen = s["chosen_macs_fraction"]
    assert r["macs_kept"] <= chosen + 1e-6 < 1.0 and out.exists()
    assert all(p["macs_fraction"] < chosen for p in s["points"] if not p["held"]), "every miss is smaller"
    assert r["fidelity"]["held"] is True and r["target"] == {"max_drop": 5.0, "macs": chosen}
    assert f"budget search chose macs {chosen:g} of {len(s['points'])} tried" in proc.stdout


def test_the_search_reports_each_probe_as_it_goes_and_fails_when_nothing_holds(monkeypatch):
    from secateurs.pruning import pipeline

    real = pipeline._export

    def broken(net, example, loaded, spec):  # type: ignore[no-untyped-def]
        import torch

        with torch.no_grad():  # every pruned model answers one class whatever it is shown
            head = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
            head.weight.zero_()
            head.bias.copy_(torch.arange(head.bias.numel(), dtype=head.bias.dtype))
        return real(net, example, loaded, spec)

    monkeypatch.setattr(pipeline, "_export", broken)
    x, y = cifar_inputs(100, split="train")
    events: list[tuple[str, float, str, dict]] = []  # type: ignore[type-arg]
    spec = PruneSpec.model_validate({"fidelity": {"max_drop": 5, "search_probes": 3}, "measure": {"repeats": 3}})
    with pytest.raises(FidelityError, match="no compression tried stays within fidelity.max_drop 5") as caught:
        prune(shared("resnet20_cifar10.safetensors").read_bytes(), spec, arch="resnet20_cifar", num_classes=10,
              calibration=Dataset(x, y), progress=lambda *e: events.append(e))
    probes = [e for e in events if e[0] == "search"]
    assert [e[3]["macs_fraction"] for e in probes] == [0.5, 0.75, 0.875]
    assert all("drop_points" in e[3] and e[3]["held"] is False for e in probes)
    fractions = [e[1] for e in events]
    assert fractions == sorted(fractions), "a probe's progress stays inside its own share of the job's"
    assert caught.value.report["search"]["points"][0]["macs_fraction"] == 0.5
    assert "macs_before" in caught.value.report, "the closest probe's report comes with the failure"


def test_the_search_refuses_too_little_data_to_set_two_parts_apart():
    x, y = cifar_inputs(12, split="train")
    spec = PruneSpec.model_validate({"fidelity": {"max_drop": 1}})
    with pytest.raises(SpecError, match="needs evaluation data with at least 10 samples or at least 14 calibration"):
        prune(shared("resnet20_cifar10.safetensors").read_bytes(), spec, arch="resnet20_cifar", num_classes=10,
              calibration=Dataset(x, y))
