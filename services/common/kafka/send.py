"""Producing a batch's records and dead letters and awaiting every acknowledgement, retrying
what is retriable: the one way a worker's output goes to Kafka.

A worker commits its input offsets only after :func:`send_acked` returned (at-least-once):
every record was acknowledged (``acks="all"``, see
:func:`~services.common.kafka.clients.aiokafka_producer_kwargs`). Records not acknowledged
are sent again after a backoff while their errors are retriable
(:func:`~services.common.kafka.errors.is_retriable`); the acknowledged ones are not sent
again, so a retry duplicates nothing that was written (a record whose acknowledgement was
lost may still be written twice: consumers deduplicate by id). A dead letter the broker
refuses as too large goes again at once without its source value
(:mod:`~services.common.kafka.dead_letters`): retrying it as it is would stall the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, Protocol

from services.common.kafka.backoff import BackoffPolicy
from services.common.kafka.dead_letters import can_shrink, fitted, size_error, without_value
from services.common.kafka.errors import SendAbandonedError, is_retriable
from shared.messages import DeadLetter

logger = logging.getLogger(__name__)

__all__ = ["Outgoing", "Producer", "Record", "Sent", "TopicProducer", "send_acked"]


class Record(NamedTuple):
    """One record to produce."""

    #: Topic name.
    topic: str
    #: Encoded value.
    value: bytes
    #: Partitioning key (a device id: a device's records stay in order in one partition).
    key: bytes | None = None


#: A record, or a function that builds it when it is sent (e.g. to stamp its send time).
Outgoing = Record | Callable[[], Record]


class Producer(Protocol):
    """What :func:`send_acked` needs of a producer: ``send`` hands one record over (it may
    wait for metadata or buffer space, or refuse the record at once) and returns the future
    of its acknowledgement. aiokafka's ``AIOKafkaProducer`` is one."""

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> Awaitable[Any]:
        """Hand one record over; the returned awaitable resolves when it is acknowledged."""
        ...


class SendingTopic(Protocol):
    """A topic object that produces to itself, as faust's ``Topic`` does."""

    def get_topic_name(self) -> str:
        """The topic's name."""
        ...

    async def send(self, *, key: bytes | None, value: bytes) -> Awaitable[Any]:
        """Hand one record over; the returned awaitable resolves when it is acknowledged."""
        ...


class TopicProducer:
    """A :class:`Producer` over topic objects that produce to themselves (faust's
    ``Topic``: its ``send`` buffers the record in faust's producer and returns the future
    of its acknowledgement), so a faust agent sends through :func:`send_acked` too."""

    def __init__(self, *topics: SendingTopic) -> None:
        self._topics = {topic.get_topic_name(): topic for topic in topics}

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> Awaitable[Any]:
        return await self._topics[topic].send(key=key, value=value)


class Sent(NamedTuple):
    """What :func:`send_acked` delivered."""

    #: Wall-clock time (Unix seconds) when the last acknowledgement arrived.
    acked_at: float
    #: The dead letters as they were written (without their source value where they were
    #: too large), in the order given.
    dead_letters: list[DeadLetter]


class _Unsent:
    """Marks a record a round did not hand over (a record before it was refused)."""


_UNSENT = _Unsent()
#: Jitter source when the caller does not bring one (tests do, for determinism).
_RNG = random.Random()


async def send_acked(
    producer: Producer,
    records: Sequence[Outgoing] = (),
    dead_letters: Sequence[DeadLetter] = (),
    *,
    dlq_topic: str = "",
    backoff: BackoffPolicy,
    attempts: int | None = None,
    stop: asyncio.Event | None = None,
    rng: random.Random | None = None,
    what: str = "records",
) -> Sent:
    """Produce ``records``, then ``dead_letters`` to ``dlq_topic`` (keyed by their source
    key), and wait until every one is acknowledged.

    Dead letters too large to produce go without their source value (at once if their
    encoding is, again when the producer or broker refuses them as too large). Records not
    acknowledged with a retriable error are sent again after ``backoff.delay(n)``, for at
    most ``attempts`` rounds in all (None: until acknowledged or stopped).

    Args:
        what: the records in words, for the log (``"predictions"``).

    Raises:
        SendAbandonedError: ``stop`` was set while records waited to be sent again.
        Exception: the first error that is not retriable, or the last retriable one after
            ``attempts`` rounds, as the producer raised it.
    """
    if dead_letters and not dlq_topic:
        raise ValueError("dead letters need a dlq_topic")
    letters = [fitted(letter) for letter in dead_letters]
    first_letter = len(records)

    def build(index: int) -> Record:
        if index >= first_letter:
            letter = letters[index - first_letter]
            return Record(dlq_topic, letter.to_bytes(), letter.key)
        item = records[index]
        return item if isinstance(item, Record) else item()

    pending = list(range(len(records) + len(letters)))
    failed_rounds = 0
    while pending:
        outcomes = await _send_round(producer, [build(i) for i in pending])
        retry_error: BaseException | None = None
        left: list[int] = []
        for index, outcome in zip(pending, outcomes, strict=True):
            if outcome is None:
                continue
            left.append(index)
            if isinstance(outcome, _Unsent):
                continue
            too_large = size_error(outcome)
            if index >= first_letter and too_large is not None:
                letter = letters[index - first_letter]
                if can_shrink(letter):
                    logger.error(
                        "dead letter of %s[%d]@%d too large to produce (%s); producing it "
                        "without the source value",
                        letter.source_topic,
                        letter.source_partition,
                        letter.source_offset,
                        too_large,
                    )
                    letters[index - first_letter] = without_value(letter, too_large)
                    continue
            if not is_retriable(outcome):
                raise outcome
            retry_error = retry_error or outcome
        pending = left
        if retry_error is None:
            continue  # only made smaller, or not handed over yet: again at once
        failed_rounds += 1
        if attempts is not None and failed_rounds >= attempts:
            raise retry_error
        delay = backoff.delay(failed_rounds, rng or _RNG)
        logger.warning(
            "%d of %d %s / %d dead letters not acknowledged (%s): retry %d in %.2f s",
            len(pending),
            len(records),
            what,
            len(letters),
            _describe(retry_error),
            failed_rounds,
            delay,
        )
        if await _stopped_within(stop, delay):
            raise SendAbandonedError(
                f"stopping while {len(pending)} of {len(records)} {what} / {len(letters)} dead "
                f"letters were not acknowledged"
            ) from retry_error
    return Sent(time.time(), letters)


async def _send_round(
    producer: Producer, batch: list[Record]
) -> list[BaseException | _Unsent | None]:
    """Hand ``batch`` to ``producer`` in order, then await the acknowledgements. Per record:
    None (acknowledged), its error, or :data:`_UNSENT`.

    A record refused at once (``send`` raised: too large for the client, or no metadata
    within the producer's timeout) ends the handing over: the records after it would each
    wait for the same timeout, one after another, so they wait for the next round."""
    acks: list[Awaitable[Any]] = []
    refused: BaseException | None = None
    for record in batch:
        try:
            acks.append(await producer.send(record.topic, record.value, key=record.key))
        except Exception as exc:  # judged by the caller like a failed delivery
            refused = exc
            break
    results = await asyncio.gather(*acks, return_exceptions=True)
    outcomes: list[BaseException | _Unsent | None] = [
        result if isinstance(result, BaseException) else None for result in results
    ]
    if refused is not None:
        outcomes.append(refused)
        outcomes += [_UNSENT] * (len(batch) - len(outcomes))
    return outcomes


def _describe(error: BaseException) -> str:
    """``error`` in words with its type once (aiokafka's errors name it themselves)."""
    text = str(error)
    name = type(error).__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name


async def _stopped_within(stop: asyncio.Event | None, delay_s: float) -> bool:
    """Wait ``delay_s`` seconds, less if ``stop`` is set meanwhile; whether it is set."""
    if stop is None:
        await asyncio.sleep(delay_s)
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay_s)
    return stop.is_set()
