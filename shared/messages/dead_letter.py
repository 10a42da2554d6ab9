"""Dead letters: messages a worker could not decode or process, kept with why and whence."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from shared.errors import SchemaError
from shared.messages.codec import decode_json, encode_json, field, number

SCHEMA = "harstream.dead_letter"
VERSION = 1


@dataclass(frozen=True)
class DeadLetter:
    """Enough to find, understand and replay the original message."""

    #: Which worker gave up on it (``preprocess``, ``inference``, ``alerting``).
    service: str
    #: Why, for a human ("schema version 9 of b'HW' is not one of (1,)").
    reason: str
    #: Exception class name, to group dead letters on a dashboard.
    error_type: str
    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None
    value: bytes | None
    #: Unix seconds.
    failed_at: float

    def to_bytes(self) -> bytes:
        return encode_json(
            SCHEMA,
            VERSION,
            {
                "service": self.service,
                "reason": self.reason,
                "error_type": self.error_type,
                "source_topic": self.source_topic,
                "source_partition": self.source_partition,
                "source_offset": self.source_offset,
                "key_b64": _b64(self.key),
                "value_b64": _b64(self.value),
                "failed_at": self.failed_at,
            },
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> DeadLetter:
        body = decode_json(data, SCHEMA, (VERSION,))
        return cls(
            service=field(body, "service", str),
            reason=field(body, "reason", str),
            error_type=field(body, "error_type", str),
            source_topic=field(body, "source_topic", str),
            source_partition=field(body, "source_partition", int),
            source_offset=field(body, "source_offset", int),
            key=_unb64(body.get("key_b64")),
            value=_unb64(body.get("value_b64")),
            failed_at=number(body, "failed_at"),
        )


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _unb64(text: object) -> bytes | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise SchemaError("base64 field must be a string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII characters in a str
        raise SchemaError(f"bad base64: {exc}") from exc
