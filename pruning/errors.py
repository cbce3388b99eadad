"""Errors as types. The API maps `InputError` to 4xx problem+json and the CLI to one line, each in one place."""

from __future__ import annotations


class PruningError(Exception):
    """Base of everything the engine raises on purpose."""

    #: A short machine-readable code: the problem type's suffix in the API, a failed job's `error.type`. Raised
    #: as itself (not a subclass), it is an engine check that failed where the user can do nothing about it.
    code = "internal-error"


class InputError(PruningError):
    """The user's input is at fault: they can fix it by sending something else."""

    code = "invalid-input"


class UnsafeFormatError(InputError):
    """Pickles, TorchScript, .pt2 archives: formats we refuse to load because loading runs code."""

    code = "unsafe-format"


class BadModelError(InputError):
    """Not a model we can read: truncated, random, external data, inconsistent."""

    code = "invalid-model"


class UnsupportedModelError(InputError):
    """A readable model that we cannot prune (unknown op, nothing prunable, ...)."""

    code = "unsupported-model"


class BadDataError(InputError):
    """Calibration or evaluation data that cannot be used."""

    code = "invalid-data"


class SpecError(InputError):
    """A spec that cannot be satisfied for this model (e.g. a signal that needs data it does not have)."""

    code = "invalid-spec"


class TargetUnreachable(SpecError):
    """A size target below what the protected layers and the layer floor allow."""


class Cancelled(PruningError):
    """The cancel check said stop; raised between steps."""

    code = "cancelled"


class VerificationError(PruningError):
    """The exported ONNX disagrees with the pruned PyTorch model: never hand out a silently wrong model."""

    code = "verification-failed"


class FidelityError(PruningError):
    """The pruned model lost more against the original than the spec's fidelity.max_drop allows. It carries the
    full report, which is still written."""

    code = "fidelity-budget"

    def __init__(self, message: str, report: dict) -> None:  # type: ignore[type-arg]
        super().__init__(message)
        self.report = report
