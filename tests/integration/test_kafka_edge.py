"""The Kafka edge's acknowledged send against the real local broker (Tansu): records and dead
letters written once, a dead letter too large for the producer written without its value,
and a broker paused mid-send ridden out by retries with nothing lost.

Tansu enforces no record size limit of its own (neither the 1 MB default nor a topic's
``max.message.bytes``: a 2 MB record was accepted), so the too-large case here is the
producer's ``max_request_size`` check; the broker's refusal of an acknowledgement is
covered with an in-memory producer in tests/unit/test_kafka_edge.py."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Iterator

import pytest
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

from services.common.broker import EmbeddedBroker
from services.common.kafka.backoff import BackoffPolicy
from services.common.kafka.clients import aiokafka_producer_kwargs
from services.common.kafka.dead_letters import dead_letter
from services.common.kafka.send import Record, send_acked
from services.common.kafka.topics import create_topics
from shared.errors import SchemaError
from shared.messages import DeadLetter
from shared.settings import StreamSettings
from tests.integration.kafka_reading import read_topic

pytestmark = pytest.mark.integration

FAST = BackoffPolicy(initial_s=0.05, max_s=0.2)


def _records(topic: str, count: int) -> list[Record]:
    return [Record(topic, f"record-{i}".encode(), f"dev-{i % 3}".encode()) for i in range(count)]


async def _with_producer(settings: StreamSettings, **options: object) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(**aiokafka_producer_kwargs(settings, **options))
    await producer.start()
    return producer


def test_records_and_dead_letters_are_written_and_a_too_large_letter_goes_without_its_value(
    stream_settings: Callable[..., StreamSettings],
) -> None:
    settings = stream_settings()
    topics = settings.topics
    small = dead_letter("edge-test", SchemaError("bad"), topics.raw, 1, 7, b"dev-1", b"v" * 10)
    # Under the 512 KiB a dead letter may have, over this producer's 64 KiB requests.
    large = dead_letter("edge-test", SchemaError("bad"), topics.raw, 2, 9, b"dev-2", b"v" * 100_000)

    async def scenario() -> list[DeadLetter]:
        producer = await _with_producer(settings, max_request_size=64 * 1024)
        try:
            sent = await send_acked(
                producer,
                _records(topics.predictions, 20),
                [small, large],
                dlq_topic=topics.dlq,
                backoff=FAST,
            )
        finally:
            await producer.stop()
        return sent.dead_letters

    written = asyncio.run(scenario())
    assert written[0] == small and written[1].value is None
    assert "source value of 100000 bytes left out" in written[1].reason
    predictions = read_topic(settings, topics.predictions, 20)
    assert sorted(value for _, value in predictions) == sorted(
        r.value for r in _records(topics.predictions, 20)
    )  # each once: nothing was sent twice
    letters = {
        DeadLetter.from_bytes(value).source_offset: (key, DeadLetter.from_bytes(value))
        for key, value in read_topic(settings, topics.dlq, 2)
    }
    assert letters[7] == (b"dev-1", small)
    assert letters[9][0] == b"dev-2" and letters[9][1].value is None
    assert letters[9][1].reason == written[1].reason


class _Signal(logging.Handler):
    """Sets an asyncio event when the edge logs that a round was not acknowledged."""

    def __init__(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        super().__init__(logging.WARNING)
        self._loop, self._event = loop, event

    def emit(self, record: logging.LogRecord) -> None:
        if "not acknowledged" in record.getMessage():
            self._loop.call_soon_threadsafe(self._event.set)


@pytest.fixture
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A broker of this test's own, since it is paused (the session's serves the others)."""
    with EmbeddedBroker(log_path=tmp_path_factory.mktemp("broker") / "tansu.log") as running:
        yield running
        if running.pid is not None:
            os.kill(running.pid, signal.SIGCONT)


def test_a_paused_broker_is_ridden_out_and_nothing_is_lost(own_broker: EmbeddedBroker) -> None:
    settings = StreamSettings(
        kafka_bootstrap_servers=own_broker.bootstrap_servers,
        kafka_profile="tansu",
        topic_prefix="edge-pause",
        topic_partitions=2,
    )
    create_topics(settings)
    topic = settings.topics.predictions
    assert own_broker.pid is not None
    pid = own_broker.pid

    async def scenario() -> None:
        # Requests time out after 1 s, so the paused broker shows as failed rounds.
        producer = await _with_producer(settings, request_timeout_ms=1000)
        failed_round = asyncio.Event()
        handler = _Signal(asyncio.get_running_loop(), failed_round)
        logging.getLogger("services.common.kafka.send").addHandler(handler)
        try:
            await send_acked(producer, _records(topic, 5), backoff=FAST)  # metadata warm
            os.kill(pid, signal.SIGSTOP)
            sending = asyncio.ensure_future(
                send_acked(producer, _records(topic, 30)[5:], backoff=FAST)
            )
            await asyncio.wait_for(failed_round.wait(), 30.0)
            assert not sending.done()
            os.kill(pid, signal.SIGCONT)
            await asyncio.wait_for(sending, 60.0)
        finally:
            logging.getLogger("services.common.kafka.send").removeHandler(handler)
            os.kill(pid, signal.SIGCONT)
            await producer.stop()

    asyncio.run(scenario())
    found = {value for _, value in read_topic(settings, topic, 30)}
    # At least once: a record whose request timed out may also have been written.
    assert found == {r.value for r in _records(topic, 30)}
