"""The asyncio bridge of the Kafka sink and its producer supervision, with fake kafka-python
clients (no broker; tests/integration/test_ingest_producer_health.py wedges a real one)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import threading
import time
from typing import Any, ClassVar

import pytest
from kafka.errors import KafkaTimeoutError
from kafka.partitioner.default import murmur2

from services.common.kafka.errors import BrokerUnavailableError
from services.ingest.producer import BACKOFF, KafkaPacketSink
from services.ingest.settings import IngestSettings
from shared.messages import Heartbeat
from shared.messages.raw import split_raw


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
    #: Per-instance ack delays, taken in creation order before falling back to ack_delay_s.
    ack_delays: ClassVar[list[float | None]] = []
    close_blocks_s = 0.0
    error: Exception | None = None
    instances: ClassVar[list[FakeProducer]] = []

    def __init__(self, **config: Any) -> None:
        if FakeProducer.failures_left > 0:
            FakeProducer.failures_left -= 1
            raise KafkaTimeoutError("Unable to bootstrap")
        self.config = config
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.partitions_sent: list[int | None] = []
        self.flushed = self.closed = False
        self.close_timeout: float | None = None
        self.ack_delay_s = (
            FakeProducer.ack_delays.pop(0) if FakeProducer.ack_delays else FakeProducer.ack_delay_s
        )
        FakeProducer.instances.append(self)

    def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2} if topic.endswith("heartbeats.v1") else {0}

    def send(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None = None
    ) -> FakeFuture:
        assert threading.current_thread() is not threading.main_thread()  # off the loop
        self.sent.append((topic, key, value))
        self.partitions_sent.append(partition)
        return FakeFuture(self.ack_delay_s, FakeProducer.error)

    def flush(self, timeout: float) -> None:
        self.flushed = True

    def close(self, timeout: float) -> None:
        time.sleep(FakeProducer.close_blocks_s)  # a close stuck on a dead broker
        self.close_timeout = timeout
        self.closed = True


class FakeAdmin:
    topics: ClassVar[list[str]] = []
    calls = 0
    down = False
    #: How long list_topics hangs first (a probe stuck on a paused broker).
    answer_after_s = 0.0
    instances: ClassVar[list[FakeAdmin]] = []

    def __init__(self, **config: Any) -> None:
        self.closed = False
        FakeAdmin.instances.append(self)

    def list_topics(self) -> list[str]:
        FakeAdmin.calls += 1
        time.sleep(FakeAdmin.answer_after_s)
        if FakeAdmin.down:
            raise KafkaTimeoutError("no answer")
        return FakeAdmin.topics

    def close(self) -> None:
        self.closed = True


@pytest.fixture(autouse=True)
def reset() -> None:
    FakeProducer.failures_left = 0
    FakeProducer.ack_delay_s = 0.01
    FakeProducer.ack_delays = []
    FakeProducer.close_blocks_s = 0.0
    FakeProducer.error = None
    FakeProducer.instances = []
    FakeAdmin.topics = []
    FakeAdmin.calls = 0
    FakeAdmin.down = False
    FakeAdmin.answer_after_s = 0.0
    FakeAdmin.instances = []


def sink(**overrides: Any) -> KafkaPacketSink:
    values: dict[str, Any] = {
        "topic_prefix": "t",
        "produce_timeout_s": 0.3,
        "heartbeat_interval_s": 0.0,  # tests of heartbeats turn them on
        **overrides,
    }
    settings = IngestSettings(**values)
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
        await s.close(time.monotonic() + 2.0)
        # closed with (at most) what is left of the deadline, never an unbounded flush
        assert producer.closed and not producer.flushed
        assert producer.close_timeout is not None and 0 < producer.close_timeout <= 2.0

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
        await s.close(time.monotonic() + 0.5)

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


async def until(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_a_producer_that_gets_no_acks_while_the_broker_answers_is_replaced() -> None:
    FakeProducer.ack_delays = [None]  # the first producer is wedged; the next one works
    FakeAdmin.topics = ["t.raw.v1"]

    async def scenario() -> None:
        s = sink()
        await connected(s)
        with pytest.raises(BrokerUnavailableError, match="acknowledge"):
            await s.send(b"k", b"v")
        # readiness says so (not only when the topic is missing), until it is replaced
        problem = await s.check()
        while problem is None:
            await asyncio.sleep(0.01)
            problem = await s.check()
        assert "no acknowledgement" in problem
        assert s.replacements == 0
        await until(lambda: s.replacements == 1 and s.connected)
        assert len(FakeProducer.instances) == 2
        await until(lambda: FakeProducer.instances[0].closed)  # the wedged one is closed
        await s.send(b"k", b"v2")
        assert FakeProducer.instances[1].sent == [("t.raw.v1", b"k", b"v2")]
        s._probe = None
        assert await s.check() is None
        await s.close(time.monotonic() + 0.5)

    asyncio.run(scenario())


def test_no_replacement_while_the_broker_does_not_answer() -> None:
    FakeProducer.ack_delay_s = None
    FakeAdmin.down = True

    async def scenario() -> None:
        s = sink()
        await connected(s)
        with pytest.raises(BrokerUnavailableError):
            await s.send(b"k", b"v")
        await asyncio.sleep(0.9)  # three produce timeouts: a new producer would not help
        assert s.replacements == 0 and len(FakeProducer.instances) == 1
        problem = await s.check()
        assert problem is not None and "broker is not answering" in problem
        FakeAdmin.down = False  # the broker is back, the producer still silent: replaced
        await until(lambda: s.replacements == 1)
        await s.close(time.monotonic() + 0.5)

    asyncio.run(scenario())


def test_replacements_back_off_while_new_producers_stay_silent() -> None:
    FakeProducer.ack_delay_s = None  # no producer ever gets an ack (a broken cluster)
    FakeAdmin.topics = ["t.raw.v1"]

    async def scenario() -> None:
        s = sink()
        await connected(s)
        replaced_at: list[float] = []
        started = time.monotonic()
        while time.monotonic() - started < 3.0:
            with contextlib.suppress(BrokerUnavailableError, TimeoutError):
                await asyncio.wait_for(s.send(b"k", b"v"), 0.05)
            if s.replacements > len(replaced_at):
                replaced_at.append(time.monotonic())
        assert len(replaced_at) >= 2
        # the n-th replacement without an ack in between waits BACKOFF.delay(n) at least
        for n, (before, after) in enumerate(itertools.pairwise(replaced_at), start=1):
            assert after - before >= BACKOFF.base_delay(n) * (1 - BACKOFF.jitter) - 0.02
        await s.close(time.monotonic() + 0.5)

    asyncio.run(scenario())


def test_close_is_bounded_by_the_deadline() -> None:
    FakeProducer.ack_delay_s = None
    FakeProducer.close_blocks_s = 5.0  # kafka-python's close stuck on a paused broker

    async def scenario() -> None:
        s = sink()
        await connected(s)
        with pytest.raises(BrokerUnavailableError):
            await s.send(b"k", b"v")
        t0 = time.monotonic()
        await s.close(t0 + 0.5)
        assert time.monotonic() - t0 < 1.0
        # the stuck close runs on a daemon thread: it cannot hold the interpreter at exit
        workers = [t for t in threading.enumerate() if t.name.startswith("ingest-producer")]
        assert workers and all(t.daemon for t in workers)

    asyncio.run(scenario())


def test_close_waits_for_the_probe_client_to_close() -> None:
    async def scenario() -> None:
        s = sink()
        await connected(s)
        await s.check()  # the probe client now exists
        await s.close()
        # closed before close() returned: no probe I/O thread outlives a stopped sink
        assert [a.closed for a in FakeAdmin.instances] == [True]

    asyncio.run(scenario())


def test_the_probe_client_closes_while_unacknowledged_records_take_the_deadline() -> None:
    FakeProducer.ack_delay_s = None  # the broker never acknowledges

    async def scenario() -> None:
        s = sink()
        await connected(s)
        await s.check()
        sending = asyncio.create_task(s.send(b"k", b"v"))
        await until(lambda: bool(FakeProducer.instances[0].sent))
        t0 = time.monotonic()
        await s.close(t0 + 0.5)  # the drain waits for the record until the deadline
        assert [a.closed for a in FakeAdmin.instances] == [True]
        assert time.monotonic() - t0 < 1.0
        await asyncio.gather(sending, return_exceptions=True)
        # closing again is a no-op, not another wait for the deadline
        t1 = time.monotonic()
        await s.close(t1 + 5.0)
        assert time.monotonic() - t1 < 0.5

    asyncio.run(scenario())


def test_a_probe_stuck_on_the_broker_does_not_hold_close_past_the_deadline() -> None:
    FakeAdmin.answer_after_s = 3.0

    async def scenario() -> None:
        s = sink()
        await connected(s)
        probe = asyncio.create_task(s.check())
        await until(lambda: FakeAdmin.calls == 1)  # the probe is hanging on the worker
        t0 = time.monotonic()
        await s.close(t0 + 0.5)
        assert time.monotonic() - t0 < 1.0
        assert not FakeAdmin.instances[0].closed  # still queued behind the stuck probe
        probe.cancel()
        await asyncio.gather(probe, return_exceptions=True)

    asyncio.run(scenario())


def test_heartbeats_go_to_every_partition_of_their_topic_through_the_producer() -> None:
    async def scenario() -> None:
        s = sink(heartbeat_interval_s=0.05)
        await connected(s)
        deadline = time.monotonic() + 5
        while s.heartbeats_sent < 6:
            assert time.monotonic() < deadline, "no heartbeats"
            await asyncio.sleep(0.01)
        await s.close()
        (producer,) = FakeProducer.instances
        beats = [
            (Heartbeat.from_bytes(value), partition)
            for (topic, key, value), partition in zip(
                producer.sent, producer.partitions_sent, strict=True
            )
            if topic == "t.heartbeats.v1" and key is None
        ]
        assert len(beats) >= 6
        assert {p for _, p in beats[:3]} == {0, 1, 2}
        assert all(b.source.startswith("ingest@") for b, _ in beats)
        assert s.heartbeat_failures == 0

    asyncio.run(scenario())


def test_heartbeats_that_fail_are_counted_and_do_not_stop() -> None:
    async def scenario() -> None:
        FakeProducer.ack_delay_s = None  # never acknowledged
        s = sink(heartbeat_interval_s=0.05, produce_timeout_s=0.1)
        await connected(s)
        deadline = time.monotonic() + 5
        while s.heartbeat_failures < 2:
            assert time.monotonic() < deadline, "failures not counted"
            await asyncio.sleep(0.01)
        await s.close(time.monotonic() + 0.5)
        assert s.heartbeats_sent == 0

    asyncio.run(scenario())


def test_no_heartbeat_is_stamped_while_the_previous_round_may_still_be_written() -> None:
    """A round stuck in a paused broker is written when it resumes: heartbeats stamped in the
    meantime would be written late too and claim the pipeline worked during the outage."""

    async def scenario() -> None:
        # Acknowledgements come later than the produce timeout: requests answer 503, but
        # the records are still written.
        FakeProducer.ack_delay_s = 0.6
        s = sink(heartbeat_interval_s=0.05, produce_timeout_s=0.4)
        await connected(s)
        deadline = time.monotonic() + 5
        while s.heartbeats_sent < 3:
            assert time.monotonic() < deadline, "no heartbeats"
            await asyncio.sleep(0.01)
        await s.close()
        for producer in FakeProducer.instances:
            stamps = sorted(
                {
                    Heartbeat.from_bytes(value).sent_at
                    for topic, _, value in producer.sent
                    if topic == "t.heartbeats.v1"
                }
            )
            # One round per acknowledgement (0.6 s), not one per produce timeout (0.4 s).
            assert all(b - a >= 0.55 for a, b in itertools.pairwise(stamps)), stamps

    asyncio.run(scenario())


class DoneFuture:
    """A record kafka-python completed before the callbacks were added: it calls them at
    once, on the thread that adds them (the producer's worker)."""

    def __init__(self) -> None:
        self.done = True

    def add_callback(self, fn: Any) -> None:
        fn("metadata")

    def add_errback(self, fn: Any) -> None:
        pass


class InstantProducer(FakeProducer):
    """Acknowledges every record before send() returns."""

    def send(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None = None
    ) -> Any:
        super().send(topic, key, value, partition)
        return DoneFuture()


class RefusingProducer(FakeProducer):
    def send(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None = None
    ) -> Any:
        raise KafkaTimeoutError("Failed to update metadata after 0.3 secs.")


def test_concurrent_sends_share_worker_calls_and_the_health_stays_consistent() -> None:
    async def scenario() -> None:
        settings = IngestSettings(topic_prefix="t", produce_timeout_s=2.0, heartbeat_interval_s=0.0)
        s = KafkaPacketSink(settings, producer_factory=InstantProducer, admin_factory=FakeAdmin)
        await connected(s)
        current = s._current
        assert current is not None
        calls = 0
        call = current.worker.call

        def counting(fn: Any) -> None:
            nonlocal calls
            calls += 1
            call(fn)

        current.worker.call = counting  # type: ignore[method-assign]
        values = [f"v{i}".encode() for i in range(300)]
        acks = await asyncio.gather(*(s.send(b"dev", v) for v in values))
        assert len(acks) == 300 and all(a >= 0 for a in acks)
        producer = FakeProducer.instances[0]
        assert [v for _, _, v in producer.sent] == values  # in the order they were handed over
        assert calls < 300  # the hand-offs were batched
        # Acknowledged before the loop heard they were handed over, yet counted in order.
        assert current.health.outstanding == 0 and current.health.acknowledged == 300
        assert current.drained.is_set()
        await s.close()

    asyncio.run(scenario())


def test_a_record_refused_at_once_is_broker_unavailable_and_never_outstanding() -> None:
    async def scenario() -> None:
        settings = IngestSettings(topic_prefix="t", produce_timeout_s=1.0, heartbeat_interval_s=0)
        s = KafkaPacketSink(settings, producer_factory=RefusingProducer, admin_factory=FakeAdmin)
        await connected(s)
        with pytest.raises(BrokerUnavailableError, match="refused"):
            await s.send(b"k", b"v")
        current = s._current
        assert current is not None
        assert (current.health.outstanding, current.health.failed) == (0, 0)
        assert current.drained.is_set()
        await s.close()

    asyncio.run(scenario())


class FourPartitions(FakeProducer):
    def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2} if topic.endswith("heartbeats.v1") else {0, 1, 2, 3}


def bundling(linger_ms: int, **overrides: Any) -> KafkaPacketSink:
    settings = IngestSettings(
        topic_prefix="t",
        produce_timeout_s=overrides.pop("produce_timeout_s", 2.0),
        heartbeat_interval_s=0.0,
        raw_bundle_linger_ms=linger_ms,
        **overrides,
    )
    return KafkaPacketSink(settings, producer_factory=FourPartitions, admin_factory=FakeAdmin)


def test_a_packet_for_an_idle_partition_goes_at_once_and_alone() -> None:
    FakeProducer.ack_delay_s = 0.2

    async def scenario() -> None:
        s = bundling(1000)  # a linger a lone packet must not wait for
        await connected(s)
        started = time.monotonic()
        assert await s.send(b"dev", b"v") >= 0
        assert time.monotonic() - started < 0.9
        [(_, key, value)] = FakeProducer.instances[0].sent
        assert key is None and split_raw(value).frames == (b"v",)
        await s.close()

    asyncio.run(scenario())


def test_packets_that_come_while_a_bundle_is_in_flight_go_together_where_their_keys_hash() -> None:
    FakeProducer.ack_delay_s = 0.05

    async def scenario() -> None:
        s = bundling(1000)  # the acknowledgement sends the next bundle, not the linger
        await connected(s)
        keys = [f"dev-{i}".encode() for i in range(40)]
        started = time.monotonic()
        acks = await asyncio.gather(*(s.send(k, b"frame-" + k) for k in keys))
        assert all(a >= 0 for a in acks) and time.monotonic() - started < 0.9
        producer = FakeProducer.instances[0]
        # Per partition with packets: the first alone, then the rest, which came during its
        # acknowledgement, as one.
        assert len(producer.sent) <= 8
        assert max(len(split_raw(value).frames) for _, _, value in producer.sent) > 1
        seen = []
        for (_, key, value), partition in zip(producer.sent, producer.partitions_sent, strict=True):
            raw = split_raw(value)
            assert key is None and raw.partition == partition
            for frame in raw.frames:
                device = frame.removeprefix(b"frame-")
                assert partition == (murmur2(device) & 0x7FFFFFFF) % 4  # Kafka's default
                seen.append(device)
        assert sorted(seen) == sorted(keys)
        assert s._current is not None and s._current.bundles_in_flight == {}
        await s.close()

    asyncio.run(scenario())


def test_a_bundle_waiting_for_one_that_is_never_acknowledged_goes_after_the_linger() -> None:
    FakeProducer.ack_delay_s = None

    async def scenario() -> None:
        s = bundling(50, produce_timeout_s=5.0)
        await connected(s)
        first = asyncio.ensure_future(s.send(b"dev", b"v0"))
        second = asyncio.ensure_future(s.send(b"dev", b"v1"))
        producer = FakeProducer.instances[0]
        await until(lambda: len(producer.sent) == 2)
        assert [split_raw(v).frames for _, _, v in producer.sent] == [(b"v0",), (b"v1",)]
        assert s._current is not None and list(s._current.bundles_in_flight.values()) == [2]
        first.cancel()
        second.cancel()
        await asyncio.gather(first, second, return_exceptions=True)
        await s.close(deadline=time.monotonic())

    asyncio.run(scenario())


def test_a_replacement_producer_sends_bundles_at_once_and_the_wedged_ones_are_refused() -> None:
    FakeProducer.ack_delays = [None]  # the first producer is wedged; the next one works
    FakeAdmin.topics = ["t.raw.v1"]

    async def scenario() -> None:
        s = bundling(1000, produce_timeout_s=0.3)
        await connected(s)
        ahead = asyncio.ensure_future(s.send(b"dev", b"ahead"))
        await until(lambda: len(FakeProducer.instances[0].sent) == 1)
        behind = asyncio.ensure_future(s.send(b"dev", b"behind"))  # waits for "ahead"
        for request in (ahead, behind):
            with pytest.raises(BrokerUnavailableError, match="acknowledge"):
                await request
        await until(lambda: s.replacements == 1 and s.connected)
        # The new producer has nothing in flight: a packet goes at once, not behind the
        # wedged producer's bundle.
        assert await s.send(b"dev", b"fresh") >= 0
        assert [split_raw(v).frames for _, _, v in FakeProducer.instances[1].sent] == [(b"fresh",)]
        await s.close(time.monotonic() + 0.5)

    asyncio.run(scenario())


def test_a_failed_bundle_refuses_each_of_its_packets() -> None:
    FakeProducer.error = KafkaTimeoutError("Batch expired")

    async def scenario() -> None:
        s = bundling(20)
        await connected(s)
        results = await asyncio.gather(
            *(s.send(b"dev", b"v%d" % i) for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, BrokerUnavailableError) for r in results)
        # The first alone; the two that waited for it went when it failed.
        assert [split_raw(v).frames for _, _, v in FakeProducer.instances[0].sent] == [
            (b"v0",),
            (b"v1", b"v2"),
        ]
        await s.close()

    asyncio.run(scenario())


def test_a_packet_whose_request_timed_out_before_its_bundle_went_is_not_written() -> None:
    FakeProducer.ack_delay_s = None  # the bundle ahead of it is never acknowledged

    async def scenario() -> None:
        s = bundling(400, produce_timeout_s=0.1)
        await connected(s)
        ahead = asyncio.ensure_future(s.send(b"dev", b"ahead"))
        await until(lambda: len(FakeProducer.instances[0].sent) == 1)
        with pytest.raises(BrokerUnavailableError, match=r"acknowledge within 0\.1 s"):
            await s.send(b"dev", b"late")
        await until(lambda: not s._bundles)  # the linger is over: the bundle was flushed
        with pytest.raises(BrokerUnavailableError):
            await ahead
        current = s._current
        assert current is not None  # and it handed only the packet ahead to the producer
        assert [split_raw(v).frames for _, _, v in FakeProducer.instances[0].sent] == [(b"ahead",)]
        assert (current.outbox, current.flush_queued) == (collections.deque(), False)
        await s.close(deadline=time.monotonic())

    asyncio.run(scenario())


def test_close_sends_the_bundles_being_filled_and_their_requests_are_answered() -> None:
    FakeProducer.ack_delay_s = 0.3

    async def scenario() -> None:
        s = bundling(1000)
        await connected(s)
        ahead = asyncio.ensure_future(s.send(b"dev", b"v0"))
        pending = asyncio.ensure_future(s.send(b"dev", b"v1"))
        await until(lambda: bool(s._bundles))  # v1 waits for v0's acknowledgement
        await s.close()
        assert await ahead >= 0 and await pending >= 0
        assert [split_raw(v).frames for _, _, v in FakeProducer.instances[0].sent] == [
            (b"v0",),
            (b"v1",),
        ]

    asyncio.run(scenario())
