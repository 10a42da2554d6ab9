"""The alerting worker's Kafka side with in-memory doubles: the stored backlog is published
page after page, and a dead letter too large for Kafka goes without its value."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from services.alerting import app
from services.alerting.app import AlertingService
from services.alerting.settings import AlertingSettings
from services.common.kafka.dead_letters import dead_letter
from shared.errors import SchemaError
from shared.messages import (
    Alert,
    AlertState,
    AlertType,
    DeadLetter,
    Prediction,
    RawPacket,
    Severity,
)
from shared.messages.raw import encode_bundle

SETTINGS = AlertingSettings(topic_prefix="unit")


class FakeStore:
    def __init__(self, events: int) -> None:
        self.events = {
            i: Alert(
                f"a{i}", "d", AlertType.INACTIVITY, AlertState.OPEN, Severity.INFO, "r", 1.0, 1.0
            )
            for i in range(events)
        }
        self.published: set[int] = set()

    def unpublished(self, limit: int = 500) -> list[tuple[int, Alert]]:
        return [(i, a) for i, a in self.events.items() if i not in self.published][:limit]

    def mark_published(self, event_ids: Sequence[int]) -> None:
        self.published.update(event_ids)


class FakeProducer:
    def __init__(self, max_bytes: int = 1 << 20) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.max_bytes = max_bytes

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[Any]:
        if len(value) > self.max_bytes:
            raise MessageSizeTooLargeError(f"The message is {len(value)} bytes")
        self.sent.append((topic, value))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> Any:
        return await (await self.send(topic, value, key))


def _service(store: FakeStore, producer: FakeProducer) -> AlertingService:
    service = AlertingService(SETTINGS, CollectorRegistry(), store=store)  # type: ignore[arg-type]
    service._producer = producer
    return service


def test_a_backlog_larger_than_a_page_is_published_entirely(monkeypatch: Any) -> None:
    monkeypatch.setattr(app, "PUBLISH_PAGE", 4)
    store, producer = FakeStore(10), FakeProducer()
    service = _service(store, producer)
    asyncio.run(service._publish_pending())
    assert store.published == set(range(10)) and len(producer.sent) == 10
    assert [Alert.from_bytes(v).alert_id for _, v in producer.sent] == [f"a{i}" for i in range(10)]
    assert not service._publish_backlog
    assert service.registry.get_sample_value("harstream_alert_events_published_total") == 10


def test_a_dead_letter_too_large_goes_without_the_value() -> None:
    producer = FakeProducer(max_bytes=2000)
    service = _service(FakeStore(0), producer)
    value = b"x" * 3000
    letter = dead_letter("alerting", SchemaError("bad"), "p", 2, 7, b"k", value)
    asyncio.run(service._send_dead_letters([letter]))
    [(topic, sent)] = producer.sent
    got = DeadLetter.from_bytes(sent)
    assert topic == SETTINGS.topics.dlq and got.value is None and got.key == b"k"
    assert (got.source_partition, got.source_offset) == (2, 7) and "3000 bytes" in got.reason


def test_a_poison_whose_error_quotes_it_still_fits_a_dead_letter() -> None:
    """The fuzz run's 3.2 MB non-UTF-8 prediction: its decoding error used to carry the whole
    value in the reason, so even the value-less dead letter was too large, forever."""
    producer = FakeProducer(max_bytes=6000)
    service = _service(FakeStore(0), producer)
    value = b"\xff" * 3_200_000
    try:
        Prediction.from_bytes(value)
    except SchemaError as exc:
        error = exc
    letter = dead_letter("alerting", error, "p", 2, 7, b"k" * 5000, value)
    assert len(letter.reason) < 300
    asyncio.run(service._send_dead_letters([letter]))
    [(_, sent)] = producer.sent
    got = DeadLetter.from_bytes(sent)
    assert got.value is None and got.key is None  # a 5,000-byte key is no device id
    assert "source key of 5000 bytes" in got.reason and "invalid UTF-8" in got.reason


def test_dead_letter_reasons_are_bounded() -> None:
    letter = dead_letter("alerting", ValueError("x" * 100_000), "p", 0, 1, None, b"v")
    assert len(letter.reason) < 1100
    assert letter.reason.endswith("[100000 characters]")


class _Record:
    def __init__(self, key: bytes | None, value: bytes) -> None:
        self.key, self.value = key, value


def test_device_traffic_is_read_from_single_packets_and_bundles() -> None:
    service = _service(FakeStore(0), FakeProducer())
    frames = {
        d: RawPacket(d, 1, 100.0, 50.0, np.zeros((50, 6)), received_at=100.0).to_bytes()
        for d in ("a", "b", "c", "x")
    }
    records = [
        _Record(b"a", frames["a"]),
        _Record(None, encode_bundle([frames["b"], frames["c"]], partition=3)),
        _Record(None, encode_bundle([frames["x"]], partition=1)),  # built for another partition
        _Record(b"y", frames["x"]),  # keyed by another device
        _Record(None, b"HB\x01" + bytes(4)),  # not a bundle
    ]
    service._traffic(TopicPartition("unit.raw.v1", 3), records, now=101.0)  # type: ignore[arg-type]
    assert service._device_partition == {"a": 3, "b": 3, "c": 3}
    assert service.registry.get_sample_value("harstream_alerting_raw_records_skipped_total") == 3
