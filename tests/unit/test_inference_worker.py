"""The worker loop with in-memory Kafka doubles: commit only after acks, in order; an outage
retries without committing; stop abandons without committing (publisher included); dead
letters too large are produced without their value; latency is measured to the ack."""

from __future__ import annotations

import asyncio
import time
from collections import namedtuple
from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import MessageSizeTooLargeError
from prometheus_client import CollectorRegistry

from services.common.kafka.backoff import BackoffPolicy
from services.common.shutdown import stop_quietly
from services.inference.batching import MicroBatcher
from services.inference.main import InferenceWorker, stop_worker
from services.inference.metrics import create
from services.inference.processing import BatchProcessor, Consumed
from services.inference.settings import InferenceSettings
from shared.messages import DeadLetter, Prediction
from tests.unit.inference_helpers import FakeModel, make_window, unavailable

Record = namedtuple("Record", "topic partition offset key value")
SETTINGS = InferenceSettings(topic_prefix="unit", batch_max_size=4, batch_max_wait_ms=5)
TOPIC = SETTINGS.topics.windows


class FakeConsumer:
    def __init__(self, records: list[Record]) -> None:
        self.pending = list(records)
        self.commits: list[dict[TopicPartition, int]] = []
        self.acked_when_committed: list[int] = []
        self.producer: FakeProducer | None = None

    async def getmany(
        self, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[Record]]:
        if not self.pending:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        taken, self.pending = self.pending[:max_records], self.pending[max_records:]
        out: dict[TopicPartition, list[Record]] = {}
        for r in taken:
            out.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
        return out

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(TOPIC, p) for p in range(4)}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self.producer is not None
        self.acked_when_committed.append(self.producer.acked)
        self.commits.append(dict(offsets))


class FakeProducer:
    def __init__(self, ack_delay_s: float = 0.0) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []
        self.acked = 0
        self.ack_delay_s = ack_delay_s

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[Any]:
        self.sent.append((topic, value, key))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def ack() -> None:
            self.acked += 1
            future.set_result(None)

        asyncio.get_running_loop().call_later(self.ack_delay_s, ack)
        return future


def _records(count: int, bad: set[int] | None = None) -> list[Record]:
    out = []
    for i in range(count):
        value = b"garbage" if i in (bad or set()) else make_window("d", 64 * i, seed=i).to_bytes()
        out.append(Record(TOPIC, 0, i, b"d", value))
    return out


async def _run_until(worker: InferenceWorker, done: Any, timeout_s: float = 5.0) -> None:
    task = asyncio.ensure_future(worker.run())
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not done():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)
    worker.request_stop()
    await asyncio.wait_for(task, 5.0)


def _worker(
    model: FakeModel,
    consumer: FakeConsumer,
    producer: FakeProducer,
    registry: CollectorRegistry | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> InferenceWorker:
    consumer.producer = producer
    metrics = create(registry or CollectorRegistry(), "har")
    fast = BackoffPolicy(0.005, 0.01)
    batcher: MicroBatcher[Consumed] = MicroBatcher(4, 0.005, asyncio.get_running_loop().time)
    processor = BatchProcessor(model, "har", fast, metrics, wall_clock=wall_clock)
    return InferenceWorker(SETTINGS, consumer, producer, processor, batcher, metrics, fast)


def test_every_window_predicted_and_commits_follow_acks() -> None:
    async def scenario() -> None:
        consumer = FakeConsumer(_records(10, bad={6}))
        producer = FakeProducer(ack_delay_s=0.01)
        worker = _worker(FakeModel(), consumer, producer)
        await _run_until(
            worker,
            lambda: (
                consumer.commits
                and not consumer.pending
                and producer.acked == 10
                and len(consumer.commits) == 3
            ),
        )
        predictions = [
            Prediction.from_bytes(v)
            for t, v, _ in producer.sent
            if t == SETTINGS.topics.predictions
        ]
        letters = [
            DeadLetter.from_bytes(v) for t, v, _ in producer.sent if t == SETTINGS.topics.dlq
        ]
        assert sorted(p.start_index for p in predictions) == [64 * i for i in range(10) if i != 6]
        assert [d.source_offset for d in letters] == [6]
        # Batches of 4, 4, 2: each committed after all its records were acknowledged.
        tp = TopicPartition(TOPIC, 0)
        assert [c[tp] for c in consumer.commits] == [4, 8, 10]
        assert consumer.acked_when_committed == [4, 8, 10]

    asyncio.run(scenario())


def test_outage_delays_but_commits_only_after_success() -> None:
    async def scenario() -> None:
        consumer = FakeConsumer(_records(4))
        producer = FakeProducer()
        model = FakeModel(predict_failures=[unavailable()] * 5)
        worker = _worker(model, consumer, producer)
        await _run_until(worker, lambda: consumer.commits)
        assert model.predict_batches == [4] * 6
        assert len(producer.sent) == 4
        assert consumer.commits == [{TopicPartition(TOPIC, 0): 4}]

    asyncio.run(scenario())


def test_stop_during_an_outage_commits_nothing() -> None:
    async def scenario() -> None:
        consumer = FakeConsumer(_records(4))
        producer = FakeProducer()
        model = FakeModel(predict_failures=[unavailable()] * 10_000)
        worker = _worker(model, consumer, producer)
        await _run_until(worker, lambda: len(model.predict_batches) >= 3)
        assert producer.sent == [] and consumer.commits == []

    asyncio.run(scenario())


def test_stop_after_the_grace_cancels_the_publisher_too() -> None:
    async def scenario() -> None:
        consumer = FakeConsumer(_records(4))
        producer = FakeProducer(ack_delay_s=3600)  # the broker never acknowledges
        worker = _worker(FakeModel(), consumer, producer)
        task = asyncio.ensure_future(worker.run())
        deadline = time.monotonic() + 5.0
        while len(producer.sent) < 4:
            assert time.monotonic() < deadline, "the batch was never produced"
            await asyncio.sleep(0.01)
        await stop_worker(worker, task, grace_s=0.05)
        assert task.done() and worker._publisher is not None and worker._publisher.done()
        sent = len(producer.sent)
        await asyncio.sleep(0.05)  # nothing left running that could produce or commit
        assert len(producer.sent) == sent and consumer.commits == []

    asyncio.run(scenario())


class SizeLimitedProducer(FakeProducer):
    """Refuses records above ``max_bytes`` like aiokafka's max_request_size check."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        self.max_bytes = max_bytes

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[Any]:
        if len(value) > self.max_bytes:
            raise MessageSizeTooLargeError(f"The message is {len(value)} bytes")
        return await super().send(topic, value, key)


def test_a_dead_letter_too_large_goes_again_without_the_value() -> None:
    async def scenario() -> None:
        big = b"\xff" * 6000  # undecodable; its dead letter (base64) exceeds the limit
        records = [*_records(3), Record(TOPIC, 0, 3, b"d", big)]
        consumer = FakeConsumer(records)
        producer = SizeLimitedProducer(max_bytes=7000)
        worker = _worker(FakeModel(), consumer, producer)
        await _run_until(worker, lambda: consumer.commits)
        [letter] = [
            DeadLetter.from_bytes(v) for t, v, _ in producer.sent if t == SETTINGS.topics.dlq
        ]
        assert letter.value is None and letter.source_offset == 3
        assert "6000 bytes" in letter.reason and "MessageSizeTooLargeError" in letter.reason
        assert consumer.commits == [{TopicPartition(TOPIC, 0): 4}]

    asyncio.run(scenario())


def test_latency_is_measured_to_the_ack_and_produced_at_stamped_at_send() -> None:
    async def scenario() -> None:
        now = time.time()
        windows = [make_window("d", 64 * i, seed=i, ingested_at=now) for i in range(4)]
        consumer = FakeConsumer(
            [Record(TOPIC, 0, i, b"d", w.to_bytes()) for i, w in enumerate(windows)]
        )
        producer = FakeProducer(ack_delay_s=0.3)
        registry = CollectorRegistry()
        worker = _worker(FakeModel(), consumer, producer, registry, wall_clock=lambda: 0.0)
        await _run_until(worker, lambda: consumer.commits)
        predictions = [
            Prediction.from_bytes(v)
            for t, v, _ in producer.sent
            if t == SETTINGS.topics.predictions
        ]
        # Stamped when produced, not when predicted (the processor's clock says 0).
        assert all(now <= p.produced_at <= time.time() for p in predictions)
        count = registry.get_sample_value("harstream_end_to_end_latency_seconds_count")
        total = registry.get_sample_value("harstream_end_to_end_latency_seconds_sum")
        assert count == 4 and total is not None and total / 4 >= 0.3  # includes the ack wait

    asyncio.run(scenario())


def test_stop_quietly_survives_a_client_leaking_its_internal_cancellation() -> None:
    async def leaky_stop() -> None:
        inner = asyncio.ensure_future(asyncio.sleep(10))
        inner.cancel()
        await inner  # like aiokafka's Fetcher.close with the broker gone

    async def scenario() -> list[str]:
        stopped: list[str] = []

        async def fine() -> None:
            stopped.append("producer")

        await stop_quietly("consumer", leaky_stop)
        await stop_quietly("producer", fine)
        return stopped

    assert asyncio.run(scenario()) == ["producer"]
