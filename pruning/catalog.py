"""The signals a job may ask for: names, one-line descriptions and what each needs.

Pure data, importable without torch, so the API can list signals and validate specs without the engine.
The implementations in `signals/` register against these names; a test checks both lists agree.
"""

from __future__ import annotations

from dataclasses import dataclass

# What a signal reads. `weights` needs nothing but the model; the others need calibration data.
NEEDS_WEIGHTS = "weights"
NEEDS_ACTIVATIONS = "activations"
NEEDS_GRADIENTS = "gradients"
NEEDS_LABELS = "labels"


@dataclass(frozen=True)
class SignalInfo:
    name: str
    description: str
    needs: tuple[str, ...]
    family: str

    @property
    def needs_data(self) -> bool:
        return any(n != NEEDS_WEIGHTS for n in self.needs)

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "description": self.description,
            "needs": list(self.needs),
            "needs_data": self.needs_data,
            "family": self.family,
        }


SIGNALS: dict[str, SignalInfo] = {
    s.name: s
    for s in (
        SignalInfo(
            "l1_norm",
            "Sum of absolute weights of every layer coupled to the channel (group L1 magnitude).",
            (NEEDS_WEIGHTS,),
            "magnitude",
        ),
        SignalInfo(
            "l2_norm",
            "Euclidean norm of the weights of every layer coupled to the channel (group L2 magnitude).",
            (NEEDS_WEIGHTS,),
            "magnitude",
        ),
        SignalInfo(
            "bn_scale",
            "Absolute BatchNorm scale (gamma) of the channel, as in network slimming; needs unfolded BatchNorm.",
            (NEEDS_WEIGHTS,),
            "batchnorm",
        ),
        SignalInfo(
            "fpgm",
            "Distance of the channel's filter to the geometric median of its layer: the most replaceable go first.",
            (NEEDS_WEIGHTS,),
            "magnitude",
        ),
        SignalInfo(
            "random",
            "Uniformly random scores: the baseline every other signal must beat.",
            (NEEDS_WEIGHTS,),
            "baseline",
        ),
    )
}


def get_signal(name: str) -> SignalInfo | None:
    return SIGNALS.get(name)
