"""A consumer loop that stores its state, THEN commits the offsets that state covers.

The alerting and history workers read a batch, change in-memory state (device monitors,
segment builders), and only every ``commit_interval_s`` (and before partitions are revoked,
and on a clean stop) store what changed in one transaction and commit the offsets read up
to it. The stored state so never lags the committed offsets: after a crash the replay
starts at the last commit and every replayed record is one the restored state already
counts (a duplicate) or has not seen yet.

What is the same in both lives here: the loop (:func:`consume`), which records of a batch
may be handled (:func:`restored_batches`), the offsets handled but not committed yet and
the store-then-commit step (:class:`Checkpoints`, :func:`checkpoint_quietly`), the
rebalance listener that hands assignments to the worker (:class:`Rebalance`), and the
store calls retried until they answer while partitions are restored (:func:`retry_store`). What is
stored, and how a partition's devices are restored, stays with each worker.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from typing import Any, Protocol, TypeVar

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from aiokafka.structs import ConsumerRecord  # type: ignore[import-untyped]

from services.common.kafka.backoff import BackoffPolicy

logger = logging.getLogger(__name__)

T = TypeVar("T")

Batches = dict[TopicPartition, list[ConsumerRecord[Any, Any]]]


class PartitionOwner(Protocol):
    async def partitions_revoked(self, revoked: set[TopicPartition]) -> None: ...

    async def partitions_assigned(self, assigned: set[TopicPartition]) -> None: ...


class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands aiokafka's rebalance callbacks to the worker (aiokafka fetches for new
    partitions only after ``partitions_assigned`` returned)."""

    def __init__(self, owner: PartitionOwner) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._owner.partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._owner.partitions_assigned(assigned)


async def consume(
    consumer: AIOKafkaConsumer,
    stop: asyncio.Event,
    max_records: int,
    handle: Callable[[Batches], Awaitable[None]],
    checkpoint_due: Callable[[], bool],
    checkpoint: Callable[[], Awaitable[None]],
) -> None:
    """Read batches until ``stop`` is set: ``handle`` each, and ``checkpoint`` whenever
    ``checkpoint_due()`` (asked after every read, also an empty one). A broker error on the
    read is logged and the read tried again a second later; any other error propagates (the
    worker stops: a worker that no longer consumes must not look alive)."""
    while not stop.is_set():
        try:
            batches = await consumer.getmany(timeout_ms=500, max_records=max_records)
        except KafkaError as exc:
            logger.warning("consumer: %s", exc)
            await asyncio.sleep(1.0)
            continue
        if batches:
            await handle(batches)
        if checkpoint_due():
            await checkpoint()


def restored_batches(
    consumer: AIOKafkaConsumer, batches: Batches, restored: Collection[int]
) -> Iterator[tuple[TopicPartition, list[ConsumerRecord[Any, Any]]]]:
    """The records of ``batches`` the worker may handle now. Those of a partition no longer
    assigned are skipped: fetched before a rebalance took it away, its new owner (which
    restored the stored state) reads them from the committed offset. A partition assigned
    but whose devices are not restored yet (not in ``restored``: a rebalance under way) is
    rewound to its first record, to be read again once they are."""
    owned = consumer.assignment()
    for tp, records in batches.items():
        if tp not in owned:
            continue
        if tp.partition not in restored:
            consumer.seek(tp, records[0].offset)
            continue
        yield tp, records


class Checkpoints:
    """Offsets handled (their dead letters acknowledged) but not committed yet, and when the
    last checkpoint stored the state that covers them."""

    def __init__(self) -> None:
        self.uncommitted: dict[TopicPartition, int] = {}
        self.last = time.monotonic()

    def due(self, interval_s: float, changed: bool = False) -> bool:
        """Time for a checkpoint: something to commit (or ``changed`` state to store) and
        ``interval_s`` since the last one."""
        return (bool(self.uncommitted) or changed) and time.monotonic() - self.last >= interval_s

    def handled(self, offsets: Mapping[TopicPartition, int], partitions: Collection[int]) -> None:
        """``offsets`` (next offset per topic partition) are committable with the next
        checkpoint; those of partitions no longer in ``partitions`` are the new owner's."""
        for tp, offset in offsets.items():
            if tp.partition in partitions:
                self.uncommitted[tp] = offset

    def revoked(self, revoked: Collection[TopicPartition]) -> None:
        for tp in revoked:
            self.uncommitted.pop(tp, None)

    async def checkpoint(
        self,
        consumer: AIOKafkaConsumer,
        lock: asyncio.Lock,
        persist: Callable[[], Awaitable[None]],
        store_error: type[Exception],
        partitions: Callable[[], Collection[int]],
    ) -> None:
        """Under ``lock``, ``persist()`` what changed; THEN commit the offsets it covers.

        A ``store_error`` from ``persist`` puts the offsets back (the next checkpoint tries
        again) and propagates. The commit runs outside the lock: it can hang on a broker
        that is away, and the worker's API must not wait for Kafka. A failed commit
        (typically a rebalance: the new owner replays those records, and they are
        duplicates) keeps the offsets of partitions still owned (``partitions()``) for the
        next checkpoint."""
        async with lock:
            offsets, self.uncommitted = self.uncommitted, {}
            try:
                await persist()
            except store_error:
                self.uncommitted = {**offsets, **self.uncommitted}
                raise
            self.last = time.monotonic()
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            logger.warning("offset commit failed: %s", exc)
            owned = consumer.assignment()
            for tp, offset in offsets.items():
                if tp in owned and tp.partition in partitions():
                    self.uncommitted.setdefault(tp, offset)


async def checkpoint_quietly(
    checkpoint: Callable[[], Awaitable[None]], store_error: type[Exception]
) -> None:
    """A last ``checkpoint()`` (a clean stop, partitions about to be revoked), so the next
    reader replays nothing. Best effort: a store or broker that is gone (``store_error``,
    :class:`KafkaError`) only means a longer replay, and is logged."""
    try:
        await checkpoint()
    except (store_error, KafkaError) as exc:
        logger.warning("last checkpoint not completed (a restart replays more): %s", exc)


async def retry_store(
    what: str,
    call: Callable[[], T],
    backoff: BackoffPolicy,
    stop: asyncio.Event,
    store_error: type[Exception],
    rng: random.Random,
) -> T:
    """``call()`` in a thread until the store answers (``store_error`` is retried after
    ``backoff``'s delays): a partition's devices must never be restored from nothing because
    the store was briefly away. Raises only once ``stop`` is set."""
    for delay in backoff.delays(rng):
        try:
            return await asyncio.to_thread(call)
        except store_error as exc:
            if stop.is_set():
                raise
            logger.error("cannot %s yet, retrying in %.1f s: %s", what, delay, exc)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable: the delays never end")
