"""The job spec: one pydantic model shared by the engine, the API, the worker and the client.

It imports nothing heavier than pydantic so that the light client validates a spec before any upload.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .catalog import COMPOSE_AXES, NEEDS_WEIGHTS, SIGNALS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Target(_Strict):
    """Exactly one budget. Fractions are what is *kept* of the original; `latency_ms` is absolute."""

    macs: float | None = Field(None, gt=0, le=1, description="Fraction of the original MACs kept at most.")
    params: float | None = Field(None, gt=0, le=1, description="Fraction of the original parameters kept.")
    channels: float | None = Field(None, gt=0, le=1, description="Fraction of prunable channels kept.")
    latency_ms: float | None = Field(None, gt=0, description="ONNX Runtime latency budget in milliseconds.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Target:
        given = [k for k in ("macs", "params", "channels", "latency_ms") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of macs, params, channels, latency_ms (got "
                + (", ".join(given) or "none")
                + ")"
            )
        return self

    @property
    def kind(self) -> str:
        for k in ("macs", "params", "channels", "latency_ms"):
            if getattr(self, k) is not None:
                return k
        raise AssertionError("validated target has one field")

    @property
    def value(self) -> float:
        return float(getattr(self, self.kind))

    @classmethod
    def parse_cli(cls, text: str) -> Target:
        """`macs=0.5` -> Target(macs=0.5)."""
        key, sep, value = text.partition("=")
        if not sep:
            raise ValueError(f"target must look like macs=0.5, got {text!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"target value must be a number, got {value!r}") from None
        return cls.model_validate({key.strip(): number})


class Compose(_Strict):
    """A signal from the taxonomy's axes (see `GET /v1/signals`)."""

    measure: Literal["weight", "bn_scale", "activation", "gradient", "activation_gradient", "random"]
    reduce: str
    aggregate: Literal["sum", "mean", "max", "first"] = "mean"
    normalize: Literal["none", "mean", "max", "l2", "sum"] = "mean"
    coupling: Literal["count", "none"] = "none"
    per_mac: bool = False

    @model_validator(mode="after")
    def _reduce_fits_measure(self) -> Compose:
        allowed = COMPOSE_AXES["measure"][self.measure]["reduce"]  # type: ignore[index]
        if self.reduce not in allowed:
            raise ValueError(f"reduce {self.reduce!r} does not apply to measure {self.measure!r}; use one of {allowed}")
        return self

    @property
    def needs(self) -> list[str]:
        return list(COMPOSE_AXES["measure"][self.measure]["needs"])  # type: ignore[index]


class ComposedSignal(_Strict):
    compose: Compose


class SignalOptions(_Strict):
    """Knobs of particular signals; each is ignored by the others."""

    similarity_threshold: float = Field(0.9, gt=0, le=1, description="|correlation| that makes channels alike.")
    bandit_epochs: float = Field(1.0, gt=0, le=100, description="Length of the bandit's fine-tune.")
    bandit_keep: float | None = Field(
        None, gt=0, le=1, description="Fraction of each group's channels executed per step (default from target)."
    )
    bandit_exploration: float = Field(0.5, ge=0, le=10, description="Weight of the UCB exploration bonus.")


class Schedule(_Strict):
    steps: int = Field(1, ge=1, le=50, description="Prune in this many rounds, re-scoring between them.")


class Recovery(_Strict):
    method: Literal["none", "bn_recalibrate", "reconstruct", "distill", "finetune"] = "none"
    epochs: float | None = Field(
        None, gt=0, le=1000, description="Passes over the calibration data (distill, finetune); null: sized to the "
        "data (at least 200 steps and one epoch, within 10 minutes unless max_minutes says otherwise).")
    lr: float | None = Field(None, gt=0, le=10, description="null: distill with validation data tries 0.01, 0.03 "
                             "and 0.1 for a tenth of the run each and goes on with the best; otherwise 0.01.")
    batch_size: int = Field(64, ge=1, le=4096)
    temperature: float = Field(4.0, gt=0, le=100, description="Distillation temperature.")
    max_minutes: float | None = Field(None, gt=0, le=10080, description="Stop training after this long.")
    reconstruct_first: bool = Field(
        False, description="Refit the layers by least squares before distill/finetune: a better starting point."
    )
    mixup: bool = Field(
        False, description="distill only: blend each batch's images pairwise at random ratios, teacher and student "
        "seeing the same blend (matches the teacher between the calibration images; pays off over long runs).",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Arithmetic of distill/finetune training: bf16 (autocast) where the worker's device "
        "has native bfloat16 when auto; weights and the output stay float32.",
    )

    @model_validator(mode="after")
    def _mixup_is_for_distill(self) -> Recovery:
        if self.mixup and self.method != "distill":
            raise ValueError(f"recovery.mixup needs method distill (blended images have no labels), not {self.method!r}")
        return self


class DataRef(_Strict):
    dataset_id: str | None = None
    samples: int = Field(512, ge=1, le=1_000_000)


class EvalRef(_Strict):
    dataset_id: str | None = None
    samples: int = Field(10_000, ge=1, le=1_000_000, description="Evaluate on at most this many examples.")


class Fidelity(_Strict):
    """How the pruned model is checked against the original (pruning/fidelity.py)."""

    metric: Literal["auto", "top1_agreement", "iou", "miou", "exact_match", "map50", "cosine"] = Field(
        "auto", description="auto: per output from its shape and last op; a metric name: that metric for every "
        "output.")
    max_drop: float | None = Field(
        None, ge=0, le=100, description="The most the model may lose against the original, in points of each "
        "output's metric (1 = one point of top-1 agreement, or IoU 0.99); past it the job fails with the report. "
        "Given without a target, the engine searches the smallest model that stays within it.")
    search_minutes: float = Field(
        30.0, gt=0, le=10080, description="The budget search's wall time (max_drop without a target): no probe "
        "starts that the time left cannot hold.")
    search_probes: int = Field(6, ge=2, le=20, description="The most compressions the budget search tries.")


#: The stages of a job, as progress reports them and `limits.stage_minutes` caps them.
Stage = Literal["import", "plan", "analyse", "score", "recover", "export", "verify", "report", "fidelity"]


class Limits(_Strict):
    """What one job may use; past either it fails with the stage and the figure reached (pruning/limits.py)."""

    memory_gb: float | None = Field(
        None, gt=0, le=4096,
        description="Address space the job may add to its process, in GiB; null: the configured default "
        "(SECATEURS_JOB_MEMORY_GB), else 60% of the machine's memory.")
    minutes: float | None = Field(None, gt=0, le=7 * 24 * 60, description="Wall time for the whole job; null: "
                                  "no limit of its own (the service's job time limit still applies).")
    stage_minutes: dict[Stage, float] | None = Field(
        None, description="Wall time of each pass through a stage, e.g. {\"analyse\": 5}; null: the configured "
        "caps (SECATEURS_STAGE_MINUTES), else 20 minutes for analyse (dependency tracing) and none for the others.")

    @field_validator("stage_minutes")
    @classmethod
    def _positive(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for stage, minutes in (v or {}).items():
            if not 0 < minutes <= 7 * 24 * 60:
                raise ValueError(f"stage_minutes.{stage} must be more than 0 and at most {7 * 24 * 60}")
        return v


class Export(_Strict):
    opset: int = Field(17, ge=13, le=21)
    # None keeps the original's batch dimension as it was (fixed or symbolic); True makes a fixed one symbolic,
    # False fixes a symbolic one at the batch the model was traced with.
    dynamic_batch: bool | None = None


class Measure(_Strict):
    """How latency is measured in ONNX Runtime, before and after, interleaved."""

    batch: int = Field(1, ge=1, le=1024)
    threads: int = Field(1, ge=1, le=256)
    repeats: int = Field(30, ge=3, le=10_000)


class PruneSpec(_Strict):
    signal: str | ComposedSignal = "l2_norm"
    target: Target | None = Field(
        None, description="The budget kept. Null: macs 0.5, or with fidelity.max_drop, the smallest model within it "
        "(a search).")
    scope: Literal["global", "local"] = "global"
    round_to: int | None = Field(
        None,
        ge=1,
        le=512,
        description="Keep channel counts at multiples of this; null picks per group: 16 for groups of 64 "
        "channels or more, 4 from 16, else 1.",
    )
    layer_floor: float = Field(
        0.1, gt=0, le=1, description="Fraction of each layer's channels that is always kept."
    )
    protect: list[str] = Field(default_factory=list, description="Regexes of layer names never pruned.")
    schedule: Schedule = Field(default_factory=Schedule)
    recovery: Recovery = Field(default_factory=Recovery)
    calibration: DataRef = Field(default_factory=DataRef)
    evaluation: EvalRef = Field(default_factory=EvalRef)
    signal_options: SignalOptions = Field(default_factory=SignalOptions)
    export: Export = Field(default_factory=Export)
    measure: Measure = Field(default_factory=Measure)
    limits: Limits = Field(default_factory=Limits)
    fidelity: Fidelity = Field(default_factory=Fidelity)
    input_shape: list[int] | None = Field(
        None,
        min_length=2,
        max_length=6,
        description="One input's shape including batch, when the model does not fix it (e.g. [1,3,224,224]).",
    )

    @model_validator(mode="after")
    def _default_target(self) -> PruneSpec:
        # Without a target, max_drop is the budget (a search); without either, half the MACs.
        if self.target is None and self.fidelity.max_drop is None:
            self.target = Target(macs=0.5)
        return self

    @property
    def searches(self) -> bool:
        """Whether the job searches the smallest model within fidelity.max_drop (no target given)."""
        return self.target is None

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, v: str | ComposedSignal) -> str | ComposedSignal:
        if isinstance(v, str) and v not in SIGNALS:
            raise ValueError(f"unknown signal {v!r}; known: {', '.join(sorted(SIGNALS))}")
        return v

    @field_validator("protect")
    @classmethod
    def _regexes(cls, v: list[str]) -> list[str]:
        if len(v) > 1000 or any(len(pattern) > 1000 for pattern in v):
            raise ValueError("at most 1000 protect patterns of at most 1000 characters each")
        for pattern in v:
            try:
                re.compile(pattern)
            except (re.error, RecursionError, OverflowError) as e:  # deep nesting exhausts the regex parser's stack
                raise ValueError(f"protect pattern {pattern[:100]!r} is not a valid regex: {str(e)[:200]}") from None
        return v

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if any(d < 1 or d > 65536 for d in v):
                raise ValueError("input_shape dimensions must be between 1 and 65536")
            total = 1
            for d in v:
                total *= d
            if total > 2**28:
                raise ValueError("input_shape is too large (more than 2^28 elements)")
        return v

    @property
    def signal_name(self) -> str:
        return self.signal if isinstance(self.signal, str) else "compose"

    @property
    def signal_needs(self) -> list[str]:
        if isinstance(self.signal, ComposedSignal):
            return self.signal.compose.needs
        return list(SIGNALS[self.signal].needs)

    @property
    def needs_data(self) -> bool:
        """Whether the job needs calibration data: a data-driven signal, or any recovery."""
        return any(n != NEEDS_WEIGHTS for n in self.signal_needs) or self.recovery.method != "none"

    @property
    def needs_labels(self) -> bool:
        return self.recovery.method == "finetune"
