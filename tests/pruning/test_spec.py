import pytest
from pydantic import ValidationError
from secateurs.pruning.catalog import SIGNALS
from secateurs.pruning.spec import PruneSpec, Target


def test_spec_example_from_the_contract_validates():
    spec = PruneSpec.model_validate(
        {
            "signal": "l1_norm",
            "target": {"macs": 0.5},
            "scope": "global",
            "round_to": 8,
            "protect": ["classifier.*"],
            "schedule": {"steps": 1},
            "recovery": {"method": "none"},
            "calibration": {"dataset_id": None, "samples": 512},
            "evaluation": {"dataset_id": None},
            "export": {"opset": 17, "dynamic_batch": True},
        }
    )
    assert spec.target.kind == "macs" and spec.target.value == 0.5
    assert not spec.needs_data


@pytest.mark.parametrize(
    "target", [{}, {"macs": 0.5, "params": 0.5}, {"macs": 0}, {"macs": 1.5}, {"flops": 0.5}, {"macs": "x"}]
)
def test_target_needs_exactly_one_valid_budget(target):
    with pytest.raises(ValidationError):
        PruneSpec.model_validate({"target": target})


def test_unknown_signal_is_rejected_with_the_known_names():
    with pytest.raises(ValidationError) as e:
        PruneSpec.model_validate({"signal": "magic"})
    assert "l2_norm" in str(e.value)
    assert e.value.errors()[0]["loc"] == ("signal",)


def test_bad_protect_regex_is_rejected():
    with pytest.raises(ValidationError, match="protect"):
        PruneSpec.model_validate({"protect": ["("]})


def test_unknown_fields_are_rejected_not_ignored():
    with pytest.raises(ValidationError):
        PruneSpec.model_validate({"sgnal": "l1_norm"})


def test_cli_target_parsing():
    assert Target.parse_cli("params=0.25").params == 0.25
    with pytest.raises(ValueError):
        Target.parse_cli("macs")
    with pytest.raises(ValueError):
        Target.parse_cli("macs=half")


def test_every_catalogued_signal_is_implemented_and_vice_versa():
    from secateurs.pruning.signals import REGISTRY

    assert set(REGISTRY) == set(SIGNALS)
    for info in SIGNALS.values():
        assert info.description and info.needs
