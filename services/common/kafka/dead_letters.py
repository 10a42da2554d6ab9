"""Dead letters: building one from a failed message, and fitting it under the size limits.
Pure (no I/O); :func:`services.common.kafka.send.send_acked` sends them.

A message that cannot be processed goes to the dead-letter topic with the reason; it never
crashes a worker. A dead letter carries its source record's value base64-encoded inside
JSON (~1.33×), so a source record near the broker's size limit (``message.max.bytes``, 1 MB
by default) gives a dead letter above it. That error is not retriable: retrying the same
record forever would stall its partition. So a dead letter over
:data:`MAX_DEAD_LETTER_BYTES` is sent without the value from the start (:func:`fitted`),
and one the broker still refuses as too large (a lower broker limit) is sent again without
it (:func:`without_value`): the original size is in the reason, and the source
topic/partition/offset to fetch the value from.
"""

from __future__ import annotations

import time
from dataclasses import replace

from aiokafka.errors import (  # type: ignore[import-untyped]
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)

from services.common.kafka.errors import DeadLetterTooLargeError
from shared.messages import DeadLetter

#: Longest reason kept in a dead letter: enough for any message of ours, and bounded, so
#: an exception that quotes its input cannot make the dead letter too large to produce.
MAX_REASON_CHARS = 1000


def dead_letter(
    service: str,
    error: BaseException,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
) -> DeadLetter:
    """The dead letter of the message at ``topic[partition]@offset`` that failed in
    ``service`` with ``error``; produce it keyed by its ``key``."""
    reason = str(error) or type(error).__name__
    if len(reason) > MAX_REASON_CHARS:
        reason = f"{reason[:MAX_REASON_CHARS]}… [{len(reason)} characters]"
    return DeadLetter(
        service=service,
        reason=reason,
        error_type=type(error).__name__,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        key=key,
        value=value,
        failed_at=time.time(),
    )


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
