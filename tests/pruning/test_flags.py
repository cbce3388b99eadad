"""The flags that make a job spec, shared by `secateurs prune` and `secateurs submit`."""

from __future__ import annotations

import json

import pytest
from secateurs.cli import _parser
from secateurs.pruning.flags import FlagError, spec_from_flags


def test_flags_override_the_spec_file_and_merge_into_its_sections(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"signal": "fpgm", "recovery": {"method": "distill", "epochs": 3},
                                "schedule": {"steps": 2}, "measure": {"repeats": 3}}))
    for command in (["prune", "m.onnx", "-o", "p.onnx"], ["submit", "m.onnx"]):
        args = _parser().parse_args([*command, "--spec", str(path), "--recover", "reconstruct", "--steps", "4",
                                     "--target", "params=0.5", "--input-shape", "1x3x32x32"])
        assert spec_from_flags(args) == {
            "signal": "fpgm", "target": {"params": 0.5}, "recovery": {"method": "reconstruct", "epochs": 3},
            "schedule": {"steps": 4}, "measure": {"repeats": 3}, "input_shape": [1, 3, 32, 32]}


@pytest.mark.parametrize("flags, needle", [
    (["--target", "flops=0.5"], "--target: flops"),
    (["--target", "macs"], "--target: target must look like macs=0.5"),
    (["--input-shape", "1,3,big"], "--input-shape must look like"),
    (["--spec", "absent.json"], "cannot read spec absent.json"),
])
def test_a_bad_flag_is_named_in_the_error(flags, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FlagError) as e:
        spec_from_flags(_parser().parse_args(["submit", "m.onnx", *flags]))
    assert needle in str(e.value)


def test_a_spec_file_that_is_not_an_object_is_refused(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text("[1, 2]")
    with pytest.raises(FlagError, match="must hold a JSON object"):
        spec_from_flags(_parser().parse_args(["prune", "m.onnx", "-o", "p.onnx", "--spec", str(path)]))
