"""Errors of the model server. Each carries the gRPC / TF Serving status code it maps to, as
the code's name (``"NOT_FOUND"``), so the pure modules need no grpc import."""

from __future__ import annotations

from enum import StrEnum

from shared.errors import HarstreamError


class Code(StrEnum):
    """The subset of ``tensorflow.error.Code`` / ``grpc.StatusCode`` names the server returns."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


class ServingError(HarstreamError):
    """A request TF Serving would refuse; ``code`` says with which status."""

    code: Code = Code.INTERNAL

    def __init__(self, message: str, code: Code | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidArgumentError(ServingError):
    """The request does not match the signature (names, dtype, shape, output filter)."""

    code = Code.INVALID_ARGUMENT


class NotFoundError(ServingError):
    """Unknown model, or a version that is not being served."""

    code = Code.NOT_FOUND


class TensorConversionError(InvalidArgumentError):
    """A TensorProto cannot be turned into an array (unknown dtype, content size != shape)."""


class ModelLoadError(ServingError):
    """A version directory could not be loaded as a SavedModel."""

    code = Code.INTERNAL


class FailedPreconditionError(ServingError):
    """The server's state does not allow the request, e.g. a label assigned to a version that
    is not AVAILABLE (TF Serving's ``ServerCore::UpdateModelVersionLabelMap``)."""

    code = Code.FAILED_PRECONDITION


class UnimplementedError(ServingError):
    """Something TF Serving supports that this development server does not (e.g. a config
    listing several models)."""

    code = Code.UNIMPLEMENTED
