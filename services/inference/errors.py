"""Errors of the inference worker."""

from __future__ import annotations

from shared.errors import HarstreamError


class InferenceError(HarstreamError):
    """Base of the inference worker's errors."""


class StartupError(InferenceError):
    """The model server does not serve what this worker needs; the worker refuses to start."""


class InvalidWindowError(InferenceError):
    """A decoded window the model cannot take (wrong shape, non-finite values)."""


class FingerprintMismatchError(InferenceError):
    """The window was made by other preprocessing than the served model was trained on."""


class ModelResponseError(InferenceError):
    """The model server answered, but not with the outputs the signature promises."""


class ModelServerError(InferenceError):
    """A model-server call failed with a gRPC status; ``code`` is its name (``UNAVAILABLE``)."""

    def __init__(self, code: str, details: str, retriable: bool) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details
        self.retriable = retriable
