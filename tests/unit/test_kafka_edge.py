"""The Kafka edge without a broker: the backoff policy, the client settings of each profile,
which errors are retried, and the acknowledged send (retries, stop, dead letters too large)
against an in-memory producer. The same send against the real broker:
tests/integration/test_kafka_edge.py."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import faust
import pytest
from aiokafka.errors import (  # type: ignore[import-untyped]
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
)

from services.common.kafka.backoff import BackoffPolicy
from services.common.kafka.clients import (
    aiokafka_consumer_kwargs,
    aiokafka_producer_kwargs,
    faust_options,
    kafka_python_producer_kwargs,
    profile,
)
from services.common.kafka.dead_letters import MAX_DEAD_LETTER_BYTES, dead_letter
from services.common.kafka.errors import SendAbandonedError, is_retriable
from services.common.kafka.send import Record, TopicProducer, send_acked
from shared.errors import SchemaError
from shared.messages import DeadLetter
from shared.settings import StreamSettings

FAST = BackoffPolicy(initial_s=0.001, max_s=0.002)

# -- backoff --------------------------------------------------------------------------------


def test_base_delay_doubles_up_to_the_cap() -> None:
    policy = BackoffPolicy(initial_s=0.2, max_s=10.0)
    assert [policy.base_delay(n) for n in range(1, 9)] == pytest.approx(
        [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    )
    assert policy.base_delay(10_000) == 10.0  # no overflow however long the outage


def test_jitter_stays_within_its_band_and_varies() -> None:
    policy = BackoffPolicy(initial_s=1.0, max_s=8.0, jitter=0.5)
    rng = random.Random(7)
    delays = [policy.delay(3, rng) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert max(delays) - min(delays) > 1.0  # spread, so replicas do not retry in lock-step


def test_no_jitter_is_deterministic() -> None:
    policy = BackoffPolicy(initial_s=0.5, max_s=4.0, jitter=0.0)
    assert policy.delay(2, random.Random()) == 1.0
    delays = policy.delays(random.Random())
    assert [next(delays) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_servers_retry_after_wins_within_the_cap() -> None:
    policy = BackoffPolicy(initial_s=1.0, max_s=300.0, jitter=0.5)
    rng = random.Random(3)
    assert policy.delay_or_retry_after(1, rng, 42.0) == 42.0
    assert policy.delay_or_retry_after(1, rng, 9999.0) == 300.0
    assert policy.delay_or_retry_after(1, rng, -5.0) == 0.0
    assert 4.0 <= policy.delay_or_retry_after(4, rng, None) <= 8.0


@pytest.mark.parametrize(
    "kwargs",
    [{"initial_s": 0.0}, {"initial_s": 2.0, "max_s": 1.0}, {"multiplier": 0.5}, {"jitter": 1.5}],
)
def test_rejects_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(**kwargs)


def test_attempts_are_one_based() -> None:
    with pytest.raises(ValueError):
        BackoffPolicy().base_delay(0)


# -- client settings per profile ------------------------------------------------------------


def test_group_consumers_get_the_profiles_timeouts_and_commit_by_hand() -> None:
    tansu = StreamSettings(kafka_profile="tansu")
    kwargs = aiokafka_consumer_kwargs(tansu, group_id="g", auto_offset_reset="earliest")
    assert kwargs["group_id"] == "g" and kwargs["enable_auto_commit"] is False
    assert (kwargs["session_timeout_ms"], kwargs["heartbeat_interval_ms"]) == (6000, 1000)
    assert kwargs["fetch_max_wait_ms"] == 50 and kwargs["auto_offset_reset"] == "earliest"
    apache = aiokafka_consumer_kwargs(StreamSettings(), group_id="g")
    assert (apache["session_timeout_ms"], apache["fetch_max_wait_ms"]) == (30_000, 500)
    # Without a group, no group timeouts; any option can still be overridden.
    reader = aiokafka_consumer_kwargs(tansu, group_id=None, fetch_max_wait_ms=10)
    assert "session_timeout_ms" not in reader and reader["fetch_max_wait_ms"] == 10


def test_producers_wait_for_all_replicas_and_only_kafka_python_is_idempotent() -> None:
    settings = StreamSettings()
    aio = aiokafka_producer_kwargs(settings, linger_ms=5)
    assert (aio["acks"], aio["enable_idempotence"], aio["linger_ms"]) == ("all", False, 5)
    kp = kafka_python_producer_kwargs(settings, produce_timeout_s=5.0, client_id="x")
    assert (kp["acks"], kp["enable_idempotence"], kp["client_id"]) == ("all", True, "x")
    assert kp["max_block_ms"] == 5000 and kp["delivery_timeout_ms"] == 30_000


def test_producers_on_the_local_broker_linger_longer_in_bigger_batches() -> None:
    """Tansu lists every stored batch of a partition on each fetch: fewer batches there,
    each service's own linger and the libraries' batch sizes on Apache Kafka."""
    apache, tansu = StreamSettings(), StreamSettings(kafka_profile="tansu")
    assert aiokafka_producer_kwargs(apache, linger_ms=0)["linger_ms"] == 0
    assert aiokafka_producer_kwargs(apache)["max_batch_size"] == 16384
    assert kafka_python_producer_kwargs(apache, produce_timeout_s=1, linger_ms=5)["linger_ms"] == 5
    local = aiokafka_producer_kwargs(tansu, linger_ms=0)
    assert (local["linger_ms"], local["max_batch_size"]) == (25, 256 * 1024)
    kp = kafka_python_producer_kwargs(tansu, produce_timeout_s=1, linger_ms=5)
    assert (kp["linger_ms"], kp["batch_size"]) == (25, 256 * 1024)
    # A service asking for more than the floor keeps it.
    assert aiokafka_producer_kwargs(tansu, linger_ms=100)["linger_ms"] == 100


def test_faust_gets_short_groups_and_its_patches_only_on_the_local_broker() -> None:
    assert faust_options(StreamSettings(kafka_profile="tansu")) == {
        "broker_session_timeout": 6.0,
        "broker_heartbeat_interval": 1.0,
        "broker_rebalance_timeout": 6.0,
    }
    assert faust_options(StreamSettings(kafka_profile="apache")) == {
        "broker_session_timeout": 30.0,
        "broker_heartbeat_interval": 3.0,
    }
    tansu, apache = profile(StreamSettings(kafka_profile="tansu")), profile(StreamSettings())
    assert (tansu.faust_fetch_max_wait_ms, tansu.faust_fetched_highwaters) == (50, True)
    assert (apache.faust_fetch_max_wait_ms, apache.faust_fetched_highwaters) == (None, False)


# -- which errors are retried ---------------------------------------------------------------


def test_outage_errors_are_retriable_and_record_errors_are_not() -> None:
    assert is_retriable(KafkaTimeoutError())  # aiokafka says no; a paused broker gives it
    assert is_retriable(KafkaConnectionError())
    assert not is_retriable(MessageSizeTooLargeError())
    assert not is_retriable(TopicAuthorizationFailedError())
    assert not is_retriable(SchemaError("bad"))

    class WrapperError(Exception):
        pass

    try:
        try:
            raise KafkaConnectionError()
        except KafkaConnectionError as exc:
            raise WrapperError("send failed") from exc  # as faust wraps aiokafka's errors
    except WrapperError as wrapped:
        assert is_retriable(wrapped)
    try:
        try:
            raise KafkaConnectionError()
        except KafkaConnectionError:
            raise WrapperError("a bug while handling it")  # noqa: B904 - the case tested
    except WrapperError as unrelated:
        assert not is_retriable(unrelated)


# -- acknowledged sends ---------------------------------------------------------------------

#: What the fake producer does with one ``send``: None acknowledges; ``("refuse", error)``
#: raises from ``send`` itself; ``("fail", error)`` fails the acknowledgement.
Plan = Callable[[int, Record], tuple[str, BaseException] | None]


class FakeProducer:
    """aiokafka's ``send`` contract: hand over (or refuse at once), ack future later."""

    def __init__(self, plan: Plan | None = None) -> None:
        self.plan = plan or (lambda _n, _r: None)
        self.calls: list[Record] = []
        self.acked: list[Record] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[Any]:
        record = Record(topic, value, key)
        self.calls.append(record)
        outcome = self.plan(len(self.calls), record)
        if outcome is not None and outcome[0] == "refuse":
            raise outcome[1]
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if outcome is None:
            self.acked.append(record)
            asyncio.get_running_loop().call_soon(future.set_result, None)
        else:
            asyncio.get_running_loop().call_soon(future.set_exception, outcome[1])
        return future


def _records(n: int) -> list[Record]:
    return [Record("out", f"r{i}".encode(), b"dev") for i in range(n)]


def _letter(value_bytes: int, key: bytes = b"dev") -> DeadLetter:
    return dead_letter("svc", SchemaError("bad"), "in", 3, 42, key, b"v" * value_bytes)


def test_every_record_is_sent_once_and_built_when_it_is_sent() -> None:
    built: list[int] = []

    def build(i: int) -> Record:
        built.append(i)
        return Record("out", f"late{i}".encode())

    async def scenario() -> None:
        producer = FakeProducer()
        sent = await send_acked(
            producer,
            [*_records(2), lambda: build(7)],
            [_letter(10)],
            dlq_topic="dlq",
            backoff=FAST,
        )
        assert [r.value for r in producer.acked[:3]] == [b"r0", b"r1", b"late7"]
        assert producer.acked[3].topic == "dlq" and producer.acked[3].key == b"dev"
        assert DeadLetter.from_bytes(producer.acked[3].value) == sent.dead_letters[0]
        assert len(producer.calls) == 4 and built == [7]

    asyncio.run(scenario())


def test_only_the_unacknowledged_records_go_again() -> None:
    def plan(n: int, record: Record) -> tuple[str, BaseException] | None:
        # r1's first two acknowledgements fail as in a leader election.
        if record.value == b"r1" and n <= 4:
            return ("fail", KafkaConnectionError("leader moved"))
        return None

    async def scenario() -> None:
        producer = FakeProducer(plan)
        await send_acked(producer, _records(3), backoff=FAST, rng=random.Random(1))
        assert [r.value for r in producer.calls] == [b"r0", b"r1", b"r2", b"r1", b"r1"]
        assert sorted(r.value for r in producer.acked) == [b"r0", b"r1", b"r2"]

    asyncio.run(scenario())


def test_a_record_refused_at_once_ends_the_round_and_the_rest_follow() -> None:
    def plan(n: int, _record: Record) -> tuple[str, BaseException] | None:
        return ("refuse", KafkaTimeoutError()) if n == 2 else None

    async def scenario() -> None:
        producer = FakeProducer(plan)
        await send_acked(producer, _records(4), backoff=FAST)
        # r1 refused (no metadata in time): r2 and r3 were not handed over behind it.
        assert [r.value for r in producer.calls] == [b"r0", b"r1", b"r1", b"r2", b"r3"]

    asyncio.run(scenario())


def test_an_error_that_is_not_retriable_is_raised_at_once() -> None:
    def plan(_n: int, _record: Record) -> tuple[str, BaseException] | None:
        return ("fail", TopicAuthorizationFailedError())

    async def scenario() -> None:
        producer = FakeProducer(plan)
        with pytest.raises(TopicAuthorizationFailedError):
            await send_acked(producer, _records(2), backoff=FAST)
        assert len(producer.calls) == 2

    asyncio.run(scenario())


def test_after_the_last_attempt_the_last_error_is_raised() -> None:
    def plan(_n: int, _record: Record) -> tuple[str, BaseException] | None:
        return ("fail", KafkaConnectionError("down"))

    async def scenario() -> None:
        producer = FakeProducer(plan)
        with pytest.raises(KafkaConnectionError):
            await send_acked(producer, _records(1), backoff=FAST, attempts=3)
        assert len(producer.calls) == 3

    asyncio.run(scenario())


def test_stop_cuts_the_backoff_short() -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def plan(_n: int, _record: Record) -> tuple[str, BaseException] | None:
            loop.call_soon(stop.set)  # requested while the round fails
            return ("fail", KafkaTimeoutError())

        producer = FakeProducer(plan)
        hour = BackoffPolicy(initial_s=3600.0, max_s=3600.0)
        sending = send_acked(producer, _records(1), backoff=hour, stop=stop)
        with pytest.raises(SendAbandonedError) as raised:
            await asyncio.wait_for(sending, 5.0)  # not the hour's wait
        assert isinstance(raised.value.__cause__, KafkaTimeoutError)
        assert len(producer.calls) == 1

    asyncio.run(scenario())


def test_a_dead_letter_the_client_refuses_as_too_large_goes_without_its_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def plan(_n: int, record: Record) -> tuple[str, BaseException] | None:
        if len(record.value) > 2000:
            return ("refuse", MessageSizeTooLargeError(f"{len(record.value)} bytes"))
        return None

    async def scenario() -> None:
        producer = FakeProducer(plan)
        sent = await send_acked(
            producer, _records(1), [_letter(3000), _letter(5)], dlq_topic="dlq", backoff=FAST
        )
        [shrunk, small] = sent.dead_letters
        assert shrunk.value is None and "3000 bytes" in shrunk.reason and small.value == b"v" * 5
        written = [DeadLetter.from_bytes(r.value) for r in producer.acked if r.topic == "dlq"]
        assert written == [shrunk, small]  # in order: the small one waited for the next round
        assert [r.value for r in producer.acked if r.topic == "out"] == [b"r0"]

    asyncio.run(scenario())
    assert "not acknowledged" not in caplog.text  # sent again at once, not after a backoff


def test_a_dead_letter_the_broker_refuses_as_too_large_goes_without_its_value() -> None:
    def plan(_n: int, record: Record) -> tuple[str, BaseException] | None:
        if len(record.value) > 2000:
            return ("fail", MessageSizeTooLargeError())
        return None

    async def scenario() -> None:
        producer = FakeProducer(plan)
        sent = await send_acked(
            producer, dead_letters=[_letter(3000)], dlq_topic="dlq", backoff=FAST
        )
        [letter] = sent.dead_letters
        assert letter.value is None and (letter.source_partition, letter.source_offset) == (3, 42)
        assert len(producer.calls) == 2 and len(producer.acked) == 1

    asyncio.run(scenario())


def test_a_dead_letter_over_the_limit_never_tries_with_its_value() -> None:
    async def scenario() -> None:
        producer = FakeProducer()
        sent = await send_acked(
            producer, dead_letters=[_letter(MAX_DEAD_LETTER_BYTES)], dlq_topic="dlq", backoff=FAST
        )
        assert sent.dead_letters[0].value is None and len(producer.calls) == 1

    asyncio.run(scenario())


def test_a_too_large_record_that_is_not_a_dead_letter_is_raised() -> None:
    def plan(_n: int, _record: Record) -> tuple[str, BaseException] | None:
        return ("refuse", MessageSizeTooLargeError())

    async def scenario() -> None:
        with pytest.raises(MessageSizeTooLargeError):
            await send_acked(FakeProducer(plan), _records(1), backoff=FAST)

    asyncio.run(scenario())


def test_faust_topics_send_through_the_same_helper() -> None:
    """preprocess produces through faust's topics: :class:`TopicProducer` finds a record's
    topic object by its name (faust's own ``get_topic_name``) and hands it the record."""
    app = faust.App("edge-unit", broker="kafka://127.0.0.1:1", autodiscover=False)
    sent: list[tuple[str, bytes | None, bytes]] = []

    def topic(name: str) -> Any:
        real = app.topic(name, key_type=bytes, value_type=bytes)

        async def send(*, key: bytes | None, value: bytes) -> Any:
            # faust's own send needs a started app and broker: record and acknowledge.
            sent.append((name, key, value))
            acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            acked.set_result(None)
            return acked

        real.send = send
        return real

    producer = TopicProducer(topic("out"), topic("dlq"))
    letters = [_letter(5)]
    asyncio.run(send_acked(producer, _records(2), letters, dlq_topic="dlq", backoff=FAST))
    assert [(name, key, value) for name, key, value in sent[:2]] == [
        ("out", b"dev", b"r0"),
        ("out", b"dev", b"r1"),
    ]
    assert sent[2][:2] == ("dlq", b"dev") and DeadLetter.from_bytes(sent[2][2]) == letters[0]
