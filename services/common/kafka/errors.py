"""Errors of the Kafka edge, and which Kafka errors are worth retrying."""

from __future__ import annotations

from aiokafka.errors import KafkaTimeoutError  # type: ignore[import-untyped]

from shared.errors import HarstreamError


class KafkaEdgeError(HarstreamError):
    """Base of the errors the Kafka edge raises."""


class BrokerUnavailableError(KafkaEdgeError):
    """Kafka cannot be reached."""

    retriable = True


class SendAbandonedError(KafkaEdgeError):
    """Stop was requested while records waited to be sent again; some may not be written."""


class DeadLetterTooLargeError(KafkaEdgeError):
    """A dead letter's encoding exceeds the size a dead letter may have."""


def is_retriable(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from, is marked retriable (faust wraps
    aiokafka's errors in its ``ProducerSendError``).

    aiokafka marks its ``KafkaTimeoutError`` not retriable, yet it is what a broker that
    is paused or restarting gives (no answer in time): here it is retriable. Errors about
    the record itself (too large, invalid) or about permissions are not: the same record
    would fail the same way forever.

    Only explicit causes (``raise ... from``) are followed: an error raised while handling
    a timeout is an error of its own."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, KafkaTimeoutError) or getattr(seen, "retriable", False) is True:
            return True
        seen = seen.__cause__
    return False
