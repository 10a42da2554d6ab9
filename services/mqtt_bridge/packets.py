"""An MQTT message → the raw record HTTP ingest writes for the same packet, or the reason
it is refused. Pure: no MQTT, no Kafka.

Validation is ingest's own code, called as ``POST /v1/packets`` calls it
(``services.ingest.app.IngestService._validated``): :func:`~services.ingest.body.parse_body`,
:func:`~services.ingest.validation.validate_packet`, and for a refused JSON packet the same
validation again on :func:`~services.ingest.body.parse_exact`'s document, so the reason is
worded from what ``json.loads`` reads. The record is :class:`~shared.messages.raw.RawPacket`
keyed by the device id, as :mod:`services.ingest.app` writes it.

Who sent a message is the topic's device id: the broker authenticated the device and lets
it publish to its own topic only. A packet naming another device is refused like HTTP
ingest refuses a token that does not belong to the packet's device (``unauthenticated``).
"""

from __future__ import annotations

import re
from typing import Any

from services.ingest.body import BodyError, BodyFormat, body_format, parse_body, parse_exact
from services.ingest.validation import (
    DEVICE_ID_RE,
    Invalid,
    LastAccepted,
    PacketLimits,
    Reason,
    ValidPacket,
    validate_packet,
)
from services.mqtt_bridge.errors import PacketRefused
from shared.messages.raw import RawPacket

#: Where device ``<id>`` publishes; ``+`` matches exactly one topic level (one device id).
TOPIC_FILTER = "harstream/v1/devices/+/packets"
_TOPIC_RE = re.compile(r"harstream/v1/devices/([^/]*)/packets")

#: First bytes of a MessagePack map (fixmap, map16, map32): a packet is a map. A JSON
#: packet starts with ``{`` (or whitespace); anything else is parsed as JSON and refused in
#: JSON's words.
_MSGPACK_MAP_STARTS = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}


def device_topic(device_id: str) -> str:
    """The topic device ``device_id`` publishes its packets to."""
    return f"harstream/v1/devices/{device_id}/packets"


def shared_filter(group: str) -> str:
    """The shared subscription of bridge group ``group``: the broker hands each message to
    one bridge of the group."""
    return f"$share/{group}/{TOPIC_FILTER}"


def topic_device(topic: str) -> str | None:
    """The device id of a packets topic, or None if ``topic`` is not one."""
    match = _TOPIC_RE.fullmatch(topic)
    return match.group(1) if match else None


def payload_format(payload: bytes, content_type: str | None) -> BodyFormat | None:
    """The body format of ``payload``: from MQTT 5's content type when the device sent one
    (as HTTP's ``Content-Type``; None: unsupported), else from its first byte."""
    if content_type:
        return body_format(content_type.partition(";")[0].strip().lower())
    if payload[:1] and payload[0] in _MSGPACK_MAP_STARTS:
        return BodyFormat.MSGPACK
    return BodyFormat.JSON


def accept(
    topic: str,
    payload: bytes,
    content_type: str | None,
    limits: PacketLimits,
    max_bytes: int,
    now: float,
    last: LastAccepted | None,
) -> ValidPacket:
    """The packet in ``payload`` published to ``topic``, validated as HTTP ingest validates
    a body (``now``: server Unix time; ``last``: the device's last accepted packet).

    Raises:
        PacketRefused: the reason and ingest's detail, for the dead letter.
    """
    device_id = topic_device(topic)
    if device_id is None or not DEVICE_ID_RE.fullmatch(device_id):
        raise PacketRefused(Reason.INVALID_FIELD, f"topic {topic[:200]!r} names no device")
    if len(payload) > max_bytes:
        raise PacketRefused(
            Reason.TOO_LARGE, f"message of {len(payload)} bytes exceeds {max_bytes} bytes"
        )
    fmt = payload_format(payload, content_type)
    if fmt is None:
        raise PacketRefused(
            Reason.UNSUPPORTED_MEDIA_TYPE,
            f"content type must be application/json or application/msgpack, got "
            f"{(content_type or '')[:100]!r}",
        )
    try:
        body, exact = parse_body(payload, fmt)
    except BodyError as exc:
        raise PacketRefused(Reason.MALFORMED, str(exc)) from None
    claimed = body.get("device_id") if isinstance(body, dict) else None
    if isinstance(claimed, str) and claimed != device_id and DEVICE_ID_RE.fullmatch(claimed):
        raise PacketRefused(
            Reason.UNAUTHENTICATED,
            f"the packet names device {claimed!r} but was published by {device_id!r}",
        )
    result = _validated(body, exact, payload, limits, now, last)
    if isinstance(result, Invalid):
        raise PacketRefused(result.reason, result.detail)
    return result


def _validated(
    body: Any,
    exact: bool,
    payload: bytes,
    limits: PacketLimits,
    now: float,
    last: LastAccepted | None,
) -> ValidPacket | Invalid:
    result = validate_packet(body, limits, now, last)
    if isinstance(result, Invalid) and not exact:
        # Refusals are worded from the document json.loads reads (see ingest.body).
        try:
            result = validate_packet(parse_exact(payload), limits, now, last)
        except BodyError as exc:
            raise PacketRefused(Reason.MALFORMED, str(exc)) from None
    return result


def raw_record(packet: ValidPacket, received_at: float) -> tuple[bytes, bytes]:
    """``(key, value)`` of ``packet``'s raw-topic record, accepted at ``received_at`` (Unix
    seconds): the record HTTP ingest writes."""
    value = RawPacket(
        device_id=packet.device_id,
        seq=packet.seq,
        first_sample_time=packet.first_sample_time,
        sample_rate_hz=packet.sample_rate_hz,
        samples=packet.samples,
        received_at=received_at,
    ).to_bytes()
    return packet.device_id.encode(), value
