"""The bridge's packet handling: the same verdicts as HTTP ingest's validation, the topic's
device as the sender, the raw record ingest writes."""

from __future__ import annotations

import json
from typing import Any

import msgpack  # type: ignore[import-untyped]
import numpy as np
import pytest

from services.ingest.body import BodyFormat, parse_body
from services.ingest.validation import Invalid, PacketLimits, Reason, validate_packet
from services.mqtt_bridge.errors import PacketRefused
from services.mqtt_bridge.packets import (
    accept,
    device_topic,
    payload_format,
    raw_record,
    shared_filter,
    topic_device,
)
from shared.messages.raw import RawPacket

LIMITS = PacketLimits()
NOW = 1_800_000_000.0


def body(device_id: str = "dev-1", **changes: Any) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "device_id": device_id,
        "seq": 3,
        "first_sample_time": NOW - 10,
        "sample_rate_hz": 50.0,
        "samples": rng.normal(0, 1, (50, 6)).tolist(),
        **changes,
    }


def accept_json(document: Any, topic: str = device_topic("dev-1")) -> Any:
    return accept(topic, json.dumps(document).encode(), None, LIMITS, 1 << 20, NOW, None)


def test_topics() -> None:
    assert device_topic("dev-1") == "harstream/v1/devices/dev-1/packets"
    assert topic_device("harstream/v1/devices/dev-1/packets") == "dev-1"
    assert topic_device("harstream/v1/devices/a/b/packets") is None
    assert topic_device("other/dev-1/packets") is None
    assert shared_filter("g") == "$share/g/harstream/v1/devices/+/packets"


def test_format_from_content_type_or_first_byte() -> None:
    assert payload_format(b"{}", None) is BodyFormat.JSON
    assert payload_format(msgpack.packb({"a": 1}), None) is BodyFormat.MSGPACK
    assert payload_format(b"", None) is BodyFormat.JSON
    assert payload_format(b"{}", "application/msgpack") is BodyFormat.MSGPACK
    assert payload_format(b"{}", "application/json; charset=utf-8") is BodyFormat.JSON
    assert payload_format(b"{}", "text/plain") is None


def test_a_valid_packet_gives_the_record_http_ingest_writes() -> None:
    document = body()
    packet = accept_json(document)
    key, value = raw_record(packet, received_at=NOW)
    assert key == b"dev-1"
    expected = RawPacket(
        "dev-1", 3, NOW - 10, 50.0, np.asarray(document["samples"]), received_at=NOW
    ).to_bytes()
    assert value == expected


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ([1, 2], Reason.MALFORMED),
        (body(seq="3"), Reason.MALFORMED),
        (body(sample_rate_hz=1000.0), Reason.BAD_RATE),
        (body(first_sample_time=NOW + 3600), Reason.BAD_TIMESTAMP),
        (body(samples=[[0.0] * 5]), Reason.INVALID_SHAPE),
        (body(samples=[[99.0, 0, 0, 0, 0, 0]]), Reason.OUT_OF_RANGE),
        (body(device_id="bad id"), Reason.INVALID_FIELD),
    ],
)
def test_refusals_are_ingests(document: Any, reason: Reason) -> None:
    with pytest.raises(PacketRefused) as refused:
        accept_json(document)
    raw = json.dumps(document).encode()
    expected = validate_packet(parse_body(raw, BodyFormat.JSON)[0], LIMITS, NOW)
    assert isinstance(expected, Invalid)
    assert refused.value.reason is reason is expected.reason
    assert refused.value.detail == expected.detail
    assert str(refused.value) == f"{reason.value}: {expected.detail}"


def test_not_json_and_too_large_and_unsupported_type() -> None:
    topic = device_topic("dev-1")
    with pytest.raises(PacketRefused, match=r"^malformed: body is not valid JSON"):
        accept(topic, b"{nope", None, LIMITS, 1 << 20, NOW, None)
    with pytest.raises(PacketRefused, match=r"^too_large"):
        accept(topic, b"x" * 2048, None, LIMITS, 1024, NOW, None)
    with pytest.raises(PacketRefused, match=r"^unsupported_media_type"):
        accept(topic, b"{}", "text/plain", LIMITS, 1 << 20, NOW, None)


def test_the_topic_names_the_sender() -> None:
    with pytest.raises(PacketRefused, match=r"^unauthenticated: the packet names device 'dev-2'"):
        accept_json(body("dev-2"))
    with pytest.raises(PacketRefused, match=r"^invalid_field: topic"):
        accept_json(body(), topic="harstream/v1/devices/bad id/packets")


def test_packed_msgpack_samples() -> None:
    samples = np.random.default_rng(1).normal(0, 1, (20, 6)).astype("<f4")
    payload = msgpack.packb({**body(), "samples": samples.tobytes()})
    packet = accept(device_topic("dev-1"), payload, None, LIMITS, 1 << 20, NOW, None)
    assert np.array_equal(packet.samples, samples.astype(np.float64))
