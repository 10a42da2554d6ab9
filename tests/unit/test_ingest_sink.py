"""The asyncio bridge of the Kafka sink, with fake kafka-python clients (no broker)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, ClassVar

import pytest
from kafka.errors import KafkaTimeoutError

from services.common.kafka import BrokerUnavailableError
from services.ingest.producer import KafkaPacketSink
from services.ingest.settings import IngestSettings


class FakeFuture:
    """kafka-python's FutureRecordMetadata: callbacks run on the producer's I/O thread."""

    def __init__(self, delay_s: float | None, error: Exception | None = None) -> None:
        self._callbacks: list[Any] = []
        self._errbacks: list[Any] = []
        if delay_s is not None:
            threading.Timer(delay_s, self._complete, args=(error,)).start()

    def add_callback(self, fn: Any) -> None:
        self._callbacks.append(fn)

    def add_errback(self, fn: Any) -> None:
        self._errbacks.append(fn)

    def _complete(self, error: Exception | None) -> None:
        for fn in self._errbacks if error else self._callbacks:
            fn(error if error else "metadata")


class FakeProducer:
    failures_left = 0
    ack_delay_s: float | None = 0.01
    error: Exception | None = None
    instances: ClassVar[list[FakeProducer]] = []

    def __init__(self, **config: Any) -> None:
        if FakeProducer.failures_left > 0:
            FakeProducer.failures_left -= 1
            raise KafkaTimeoutError("Unable to bootstrap")
        self.config = config
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.flushed = self.closed = False
        FakeProducer.instances.append(self)

    def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def send(self, topic: str, key: bytes, value: bytes) -> FakeFuture:
        assert threading.current_thread() is not threading.main_thread()  # off the loop
        self.sent.append((topic, key, value))
        return FakeFuture(FakeProducer.ack_delay_s, FakeProducer.error)

    def flush(self, timeout: float) -> None:
        self.flushed = True

    def close(self, timeout: float) -> None:
        self.closed = True


class FakeAdmin:
    topics: ClassVar[list[str]] = []
    calls = 0

    def __init__(self, **config: Any) -> None:
        pass

    def list_topics(self) -> list[str]:
        FakeAdmin.calls += 1
        return FakeAdmin.topics

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def reset() -> None:
    FakeProducer.failures_left = 0
    FakeProducer.ack_delay_s = 0.01
    FakeProducer.error = None
    FakeProducer.instances = []
    FakeAdmin.topics = []
    FakeAdmin.calls = 0


def sink(**overrides: Any) -> KafkaPacketSink:
    settings = IngestSettings(topic_prefix="t", produce_timeout_s=0.3, **overrides)
    return KafkaPacketSink(settings, producer_factory=FakeProducer, admin_factory=FakeAdmin)


async def connected(s: KafkaPacketSink) -> None:
    await s.start()
    deadline = time.monotonic() + 5
    while not s.connected:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


def test_idempotent_all_acks_config_and_send() -> None:
    async def scenario() -> None:
        s = sink()
        await connected(s)
        ack_s = await s.send(b"dev", b"payload")
        assert 0.005 < ack_s < 0.3
        producer = FakeProducer.instances[0]
        assert producer.sent == [("t.raw.v1", b"dev", b"payload")]
        assert producer.config["acks"] == "all"
        assert producer.config["enable_idempotence"] is True
        await s.close()
        assert producer.flushed and producer.closed

    asyncio.run(scenario())


def test_connect_is_retried_until_the_broker_answers() -> None:
    FakeProducer.failures_left = 2

    async def scenario() -> None:
        s = sink()
        await s.start()
        with pytest.raises(BrokerUnavailableError):
            await s.send(b"k", b"v")  # not connected yet: refused at once
        problem = await s.check()
        assert problem is not None and "producer" in problem
        await connected(s)
        await s.send(b"k", b"v")
        await s.close()

    asyncio.run(scenario())


def test_no_ack_within_the_timeout_is_broker_unavailable() -> None:
    FakeProducer.ack_delay_s = None  # never acknowledged

    async def scenario() -> None:
        s = sink()
        await connected(s)
        t0 = time.monotonic()
        with pytest.raises(BrokerUnavailableError, match="acknowledge"):
            await s.send(b"k", b"v")
        assert 0.25 < time.monotonic() - t0 < 1.0
        await s.close()

    asyncio.run(scenario())


def test_delivery_error_is_broker_unavailable() -> None:
    FakeProducer.error = KafkaTimeoutError("expired")

    async def scenario() -> None:
        s = sink()
        await connected(s)
        with pytest.raises(BrokerUnavailableError, match="refused"):
            await s.send(b"k", b"v")
        await s.close()

    asyncio.run(scenario())


def test_readiness_checks_the_topic_and_caches_the_answer() -> None:
    async def scenario() -> None:
        s = sink()
        await connected(s)
        problem = await s.check()
        assert problem is not None and "t.raw.v1 does not exist" in problem
        FakeAdmin.topics = ["t.raw.v1"]
        assert await s.check() == problem  # cached for a second
        assert FakeAdmin.calls == 1
        s._probe = None  # expire the cache
        assert await s.check() is None
        await s.close()

    asyncio.run(scenario())
