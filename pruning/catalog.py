"""The signals a job may ask for: names, one-line descriptions, what each needs, and the taxonomy's axes.

Pure data, importable without torch, so the API can list signals and validate specs without the engine.
The implementations in `signals/` register against these names; a test checks both lists agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    compose: dict[str, object] | None = field(default=None)  # the taxonomy preset, when it is one

    @property
    def needs_data(self) -> bool:
        return any(n != NEEDS_WEIGHTS for n in self.needs)

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            "name": self.name,
            "description": self.description,
            "needs": list(self.needs),
            "needs_data": self.needs_data,
            "family": self.family,
        }
        if self.compose is not None:
            d["compose"] = dict(self.compose)
        return d


#: The taxonomy's axes: what is measured, and for each measure the reductions that make sense.
COMPOSE_AXES: dict[str, object] = {
    "measure": {
        "weight": {"reduce": ["l1", "l2"], "needs": [NEEDS_WEIGHTS],
                   "description": "weights of every layer coupled to the channel"},
        "bn_scale": {"reduce": ["abs"], "needs": [NEEDS_WEIGHTS],
                     "description": "BatchNorm scale (gamma) of the channel"},
        "activation": {"reduce": ["mean_abs", "mean", "l2", "var", "nonzero"], "needs": [NEEDS_ACTIVATIONS],
                       "description": "the feature map where the channel enters its consumers"},
        "gradient": {"reduce": ["l2"], "needs": [NEEDS_GRADIENTS],
                     "description": "gradient of the loss with respect to that feature map"},
        "activation_gradient": {"reduce": ["abs_mean", "l1", "fisher"], "needs": [NEEDS_GRADIENTS],
                                "description": "feature map times its gradient (first-order Taylor term)"},
        "random": {"reduce": ["uniform"], "needs": [NEEDS_WEIGHTS], "description": "random scores"},
    },
    "reduce": {
        "l1": "sum of absolute values", "l2": "Euclidean norm (root mean square for statistics)",
        "abs": "absolute value", "mean_abs": "mean absolute value", "mean": "absolute value of the mean",
        "var": "standard deviation", "nonzero": "fraction of non-zero values (1 - APoZ)",
        "abs_mean": "absolute value of the mean over samples and positions (Molchanov et al. 2017)",
        "fisher": "1/(2N) sum over samples of (sum over positions)^2 (Theis et al. 2018)",
        "uniform": "uniform random numbers",
    },
    "aggregate": {"sum": "add the coupled layers' values", "mean": "average them", "max": "take the largest",
                  "first": "use the group's first layer only"},
    "normalize": {"none": "raw values (comparable across layers only if the measure is)",
                  "mean": "divide by the group mean", "max": "divide by the group maximum",
                  "l2": "divide by the group's L2 norm", "sum": "divide by the group sum"},
    "coupling": {"count": "multiply by the number of conv/linear layers that lose the channel, over 2: a "
                          "channel of a residual stream leaves every block it runs through, so damage adds up",
                 "none": "leave the normalised score as it is"},
    "per_mac": "divide each channel's score by the MACs it costs relative to the model's mean channel "
               "(FLOP-aware ranking)",
}

COMPOSE_PRESETS: dict[str, dict[str, object]] = {
    "l1_norm": {"measure": "weight", "reduce": "l1", "aggregate": "mean", "normalize": "mean", "coupling": "count"},
    "l2_norm": {"measure": "weight", "reduce": "l2", "aggregate": "mean", "normalize": "mean", "coupling": "count"},
    "bn_scale": {"measure": "bn_scale", "reduce": "abs", "aggregate": "mean", "normalize": "mean", "coupling": "count"},
    "random": {"measure": "random", "reduce": "uniform", "aggregate": "first", "normalize": "none"},
    "activation_mean": {"measure": "activation", "reduce": "mean_abs", "aggregate": "sum", "normalize": "mean"},
    "apoz": {"measure": "activation", "reduce": "nonzero", "aggregate": "mean", "normalize": "mean"},
    "taylor": {"measure": "activation_gradient", "reduce": "abs_mean", "aggregate": "sum", "normalize": "l2"},
    "fisher": {"measure": "activation_gradient", "reduce": "fisher", "aggregate": "sum", "normalize": "none"},
}


def _needs(preset: dict[str, object]) -> tuple[str, ...]:
    measures = COMPOSE_AXES["measure"]
    assert isinstance(measures, dict)
    return tuple(measures[preset["measure"]]["needs"])


_DESCRIPTIONS = {
    "l1_norm": ("Sum of absolute weights of every layer coupled to the channel (group L1 magnitude).", "magnitude"),
    "l2_norm": ("Euclidean norm of the weights of every layer coupled to the channel (group L2 magnitude).",
                "magnitude"),
    "bn_scale": ("Absolute BatchNorm scale (gamma) of the channel, as in network slimming; needs unfolded "
                 "BatchNorm.", "batchnorm"),
    "random": ("Uniformly random scores: the baseline every other signal must beat.", "baseline"),
    "activation_mean": ("Mean absolute value of the channel's feature map over the calibration data.",
                        "activation"),
    "apoz": ("Average percentage of zeros of the channel after its activation (APoZ): mostly-zero channels go "
             "first.", "activation"),
    "taylor": ("First-order Taylor criterion (Molchanov et al. 2017): |mean of activation x gradient|, "
               "L2-normalised per layer; gradients from labels, else from the original model's own predictions.",
               "gradient"),
    "fisher": ("Fisher pruning (Theis et al. 2018): 1/(2N) sum over samples of (sum over positions of "
               "activation x gradient)^2; compose with per_mac for the FLOP-aware variant.", "gradient"),
}

SIGNALS: dict[str, SignalInfo] = {
    name: SignalInfo(name, _DESCRIPTIONS[name][0], _needs(preset), _DESCRIPTIONS[name][1], preset)
    for name, preset in COMPOSE_PRESETS.items()
}
SIGNALS.update(
    {
        s.name: s
        for s in (
            SignalInfo("fpgm", "Distance of the channel's filter to the geometric median of its layer (FPGM): "
                       "the most replaceable go first.", (NEEDS_WEIGHTS,), "magnitude"),
            SignalInfo("dead_units", "Channels whose feature map is (near-)constant or zero over the calibration "
                       "data are removed first, whatever the target, their constant folded into the next "
                       "layer's bias; the rest are ranked by the spread of their feature map.",
                       (NEEDS_ACTIVATIONS,), "activation"),
            SignalInfo("similarity", "Channel similarity (2019): channels whose feature maps carry the same "
                       "information are clustered hierarchically; all but one per cluster go first, their "
                       "contribution folded into the kept one.", (NEEDS_ACTIVATIONS,), "activation"),
            SignalInfo("lasso", "LASSO channel selection (He et al. 2017): the input channels that best "
                       "reconstruct the consumer layer's output on calibration data are kept; pair with "
                       "recovery reconstruct for the least-squares refit.", (NEEDS_ACTIVATIONS,), "reconstruction"),
            SignalInfo("bandit", "Combinatorial bandit channel execution: during a short fine-tune each step runs "
                       "only the channels with the highest upper confidence bound on their usefulness "
                       "(activation x gradient); the learned estimates score the channels.",
                       (NEEDS_GRADIENTS,), "gradient"),
        )
    }
)


def get_signal(name: str) -> SignalInfo | None:
    return SIGNALS.get(name)
