"""Errors of the ingest service."""

from __future__ import annotations

from shared.errors import HarstreamError


class IngestError(HarstreamError):
    """Base of the ingest service's errors."""


class RegistryError(IngestError):
    """A device registry operation failed."""


class RegistryConfigError(RegistryError):
    """The registry URL names no supported store."""


class RegistryUnavailableError(RegistryError):
    """The registry's store cannot be reached or answered with an error."""

    retriable = True


class DeviceExistsError(RegistryError):
    """The device id (or the given token) is already registered."""


class UnknownDeviceError(RegistryError):
    """No such device in the registry."""


class InvalidDeviceError(RegistryError):
    """A device id or token that cannot be registered."""


class GatewayExistsError(RegistryError):
    """The gateway id (or the given token) is already registered."""


class UnknownGatewayError(RegistryError):
    """No such gateway in the registry."""
