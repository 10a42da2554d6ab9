"""Dead letters the broker refuses because of their size.

A dead letter carries its source record's value base64-encoded inside JSON (~1.33×), so a
source record near the broker's size limit (``message.max.bytes``, 1 MB by default) gives a
dead letter above it. That error is not retriable: retrying the same record forever would
stall its partition. The worker produces the dead letter again without the value, the
original size in the reason, and the source topic/partition/offset to fetch it from.
"""

from __future__ import annotations

from dataclasses import replace

from aiokafka.errors import (  # type: ignore[import-untyped]
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)

from shared.messages import DeadLetter

#: Produce errors that a smaller record avoids (client-side max_request_size check, or the
#: broker's MESSAGE_TOO_LARGE / RECORD_LIST_TOO_LARGE).
TOO_LARGE_ERRORS: tuple[type[Exception], ...] = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)


def is_too_large(error: BaseException) -> bool:
    """Whether producing failed because the record is too large for the producer or broker."""
    return isinstance(error, TOO_LARGE_ERRORS)


#: A source key longer than this is left out with the value (keys are device ids: short).
MAX_KEPT_KEY_BYTES = 1024


#: A dead letter larger than this is produced without its source value from the start: it
#: stays well under the producers' 1 MB request limit and Kafka's default message.max.bytes,
#: and the value can still be read from its source topic/partition/offset.
MAX_DEAD_LETTER_BYTES = 512 * 1024


class DeadLetterTooLargeError(Exception):
    """A dead letter's encoding exceeds :data:`MAX_DEAD_LETTER_BYTES`."""


def fitted(letter: DeadLetter) -> DeadLetter:
    """``letter``, or :func:`without_value` of it if its encoding is too large to produce."""
    size = len(letter.to_bytes())
    if size <= MAX_DEAD_LETTER_BYTES or not can_shrink(letter):
        return letter
    return without_value(letter, DeadLetterTooLargeError(f"{size} bytes > {MAX_DEAD_LETTER_BYTES}"))


def size_error(error: BaseException) -> BaseException | None:
    """The too-large error ``error`` is or was raised from, if any (faust wraps aiokafka's
    errors in its ``ProducerSendError``)."""
    seen: BaseException | None = error
    while seen is not None:
        if is_too_large(seen):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def can_shrink(letter: DeadLetter) -> bool:
    """Whether :func:`without_value` would make ``letter`` smaller."""
    return letter.value is not None or (
        letter.key is not None and len(letter.key) > MAX_KEPT_KEY_BYTES
    )


def without_value(letter: DeadLetter, error: BaseException) -> DeadLetter:
    """``letter`` without the source value (and without a source key too long to be a
    device id), their sizes and ``error`` in the reason. Produce it keyed by its ``key``."""
    size = len(letter.value) if letter.value is not None else 0
    key = letter.key
    left_out = f"source value of {size} bytes"
    if key is not None and len(key) > MAX_KEPT_KEY_BYTES:
        left_out += f" and source key of {len(key)} bytes"
        key = None
    return replace(
        letter,
        value=None,
        key=key,
        reason=(
            f"{letter.reason} [{left_out} left out: the dead letter was too large to produce "
            f"({type(error).__name__}); read it from "
            f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}]"
        ),
    )
