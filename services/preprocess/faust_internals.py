"""Every private faust (and mode, aiokafka) internal the preprocess worker relies on, in one
place. faust is pinned (``faust-streaming==0.15.3`` in pyproject.toml);
``tests/unit/test_preprocess_faust_internals.py`` has a test per item here that fails loudly
when an upgrade changes what it relies on.

1. :func:`in_partition_of`: faust's ``_current_event`` context variable picks a table key's
   store partition and changelog partition.
2. :class:`ChangelogAcks`: the futures of the changelog records a table sends
   (``Collection.send_changelog``, called by ``Table.on_key_set``), so a batch can await them.
3. :func:`committed_offsets` / :func:`commit_offsets`: the consumer group's committed offsets,
   read and written from inside a table's recovery callback (before faust seeks the stream
   partitions to them).
4. :func:`fetch_only_active_partitions`: the partitions faust's consumer thread asks
   aiokafka's fetcher for.
5. :func:`shorten_fetch_wait`: aiokafka's fetch wait on the consumer faust creates.
6. :func:`bounded_worker`: mode's single entry point for SIGTERM/SIGINT, to bound a stop.
7. :func:`correct_highwaters`: the end offsets faust's table recovery reads to know where a
   changelog partition ends (``AIOKafkaConsumerThread._highwaters``).
8. :func:`before_tables_stop`: a step of faust's clean stop between the agents' last events
   and the tables' closing, where the preprocess worker writes its last checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from aiokafka import TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import KafkaTimeoutError  # type: ignore[import-untyped]
from faust.streams import _current_event
from faust.types import TP, EventT

logger = logging.getLogger(__name__)


@contextmanager
def in_partition_of(event: EventT[Any]) -> Iterator[None]:
    """Make ``event`` faust's current event while touching the table.

    Faust picks a table key's store partition and changelog partition from the *current
    event*; in a batch that is the batch's last event, of any partition. Each device's state
    must be read and written as if by its own message (same key, so same partition).
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class ChangelogAcks:
    """Collects the changelog records a faust table sends, so that they can be awaited.

    A table write goes to the local store at once and to the changelog topic through faust's
    ``ProducerBuffer`` (``send_soon``), drained by a background task. faust flushes that
    buffer before it commits source offsets, but ``ProducerBuffer.flush`` returns as soon as
    0.1 s pass without one message leaving the buffer (a stalled broker, or an event loop
    busy with a batch), and the message its drain task holds is in neither the buffer nor
    aiokafka's accumulator: the commit then runs ahead of the changelog. Awaiting these
    futures before a batch is acknowledged closes that window on any broker.

    Wraps the table's ``send_changelog`` (faust's ``Table.on_key_set`` calls it for every
    ``table[key] = value`` and returns nothing of it).
    """

    def __init__(self, table: Any) -> None:
        self._pending: list[asyncio.Future[Any]] = []
        send = table.send_changelog

        def send_changelog(*args: Any, **kwargs: Any) -> Any:
            future = send(*args, **kwargs)
            self._pending.append(future)
            return future

        table.send_changelog = send_changelog

    @property
    def pending(self) -> int:
        """Records sent since the last :meth:`wait`."""
        return len(self._pending)

    async def wait(self, timeout_s: float) -> None:
        """Wait until every record sent since the last call is acknowledged by the broker
        (``producer_acks``). Raises what a record failed with, or ``TimeoutError``."""
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.wait_for(asyncio.gather(*pending), timeout_s)


async def committed_offsets(consumer: Any) -> dict[TP, int | None]:
    """The group's committed offset of every partition assigned to ``consumer`` (faust's
    aiokafka ``Consumer``), read from the broker; ``None`` where nothing is committed.

    ``seek_to_committed`` also seeks the partitions there: harmless where it is used, in a
    table's recovery callback, since faust's ``Recovery.on_recovery_completed`` seeks every
    stream partition to its committed offset right after the callbacks anyway.
    """
    offsets: Mapping[TP, int] = await consumer.seek_to_committed()
    return {tp: offset if offset is not None and offset >= 0 else None
            for tp, offset in offsets.items()}  # fmt: skip


async def commit_offsets(consumer: Any, offsets: Mapping[TP, int]) -> bool:
    """Commit exactly ``offsets`` (lower ones included) for the group; False if the consumer
    refused (e.g. a rebalance started). faust's public ``commit`` only commits offsets of
    acknowledged messages, which cannot move a partition back."""
    return bool(await consumer._commit(offsets))


def fetch_only_active_partitions() -> None:
    """Make faust's consumer thread ask aiokafka for records of a *snapshot* of its active
    partitions, and for nothing when there is none.

    faust hands aiokafka's ``Fetcher.fetched_records`` its live set of active partitions,
    and aiokafka returns the records of *every* partition when that set is empty. When a
    table recovery ends, faust pauses the changelog partitions: the set becomes empty while a
    fetch waits on it, so the stream partitions' records that aiokafka prefetched during the
    recovery come back; faust skips them (not active) and aiokafka's position has moved past
    them. faust then seeks back to the committed offset only where one exists (and is > 0).
    Seen: restarts on a new disk with nothing committed yet lost their whole backlog in 4 of 8
    runs (positions jumped from 0 to the end while the recovery finished). Applies to every
    broker: the bug is in the client.
    """
    from faust.transport.drivers import aiokafka as driver  # noqa: PLC0415

    original = driver.AIOKafkaConsumerThread.getmany
    if getattr(original, "harstream_snapshot", False):
        return

    # faust's signature, timeout included (its fetch long-poll, not an asyncio timeout).
    async def getmany(self: Any, active_partitions: Any, timeout: float) -> Any:  # noqa: ASYNC109
        if active_partitions is None:  # a client-only app: every partition, as faust does
            return await original(self, None, timeout)
        snapshot = set(active_partitions)
        if not snapshot:
            return {}
        return await original(self, snapshot, timeout)

    getmany.harstream_snapshot = True  # type: ignore[attr-defined]
    setattr(driver.AIOKafkaConsumerThread, "getmany", getmany)  # noqa: B010


def shorten_fetch_wait(fetch_max_wait_ms: int) -> None:
    """Tansu profile only. faust hard-codes aiokafka's ``fetch_max_wait_ms=1500`` and Tansu
    holds a fetch for the whole wait when any fetched partition is empty, which added ~0.4 s
    per packet in the demo. aiokafka reads the attribute when the consumer starts, so it is
    set on the consumer faust creates. Apache Kafka answers fetches as soon as data is there:
    the production profile keeps faust's behaviour."""
    from faust.transport.drivers import aiokafka as driver  # noqa: PLC0415 - dev profile only

    original = driver.AIOKafkaConsumerThread._create_worker_consumer
    if getattr(original, "harstream_fetch_wait", None) == fetch_max_wait_ms:
        return
    original = getattr(original, "harstream_original", original)

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms
        return consumer

    create.harstream_fetch_wait = fetch_max_wait_ms  # type: ignore[attr-defined]
    create.harstream_original = original  # type: ignore[attr-defined]
    setattr(driver.AIOKafkaConsumerThread, "_create_worker_consumer", create)  # noqa: B010


def correct_highwaters() -> None:
    """Tansu profile only: make the high-water marks faust's table recovery reads right.

    Tansu's ListOffsets (aiokafka's ``end_offsets``, what faust asks) answers the *first*
    offset of a partition's last record batch + 1, so when that batch holds several records
    faust stops restoring a changelog partition early (a memory table lost updates) or finds
    RocksDB's persisted offset past the end (``ConsistencyError``, a crash loop on restart).
    Measured against Tansu 0.6.0: batches of 5, 1 and 7 records at offsets 0-12 gave
    ``end_offsets`` 7, while a Fetch from offset 6 returned offsets 6-12 and a high-water mark
    of 13, right (so were the Fetch high-water marks of partitions whose last batch held one
    record, and of an empty partition). So each reported end ``h > 0`` is checked by a fetch
    from ``h - 1`` (a record that exists, in the last batch) on a group-less consumer built
    as faust builds its own (same servers and credentials), and the Fetch response's
    high-water mark is taken. It costs one fetch per recovery (~7 ms for 4 partitions here).
    Apache Kafka's ListOffsets is right: the production profile keeps faust's behaviour.
    """
    from faust.transport.drivers import aiokafka as driver  # noqa: PLC0415 - dev profile only

    original = driver.AIOKafkaConsumerThread._highwaters
    if getattr(original, "harstream_fetched", False):
        return

    async def _highwaters(self: Any, partitions: list[TP]) -> Mapping[TP, int]:
        reported: Mapping[TP, int] = await original(self, partitions)
        if self.consumer.in_transaction:  # faust answers last stable offsets there, not these
            return reported
        # Under faust's own timeout for this step (after which it would carry on with
        # whatever high-water marks it has), so that a fetch that does not come back fails
        # the recovery instead.
        timeout_s = self.app.conf.broker_request_timeout / 2
        return await fetched_highwaters(
            lambda: self._create_client_consumer(self.transport), reported, timeout_s
        )

    _highwaters.harstream_fetched = True  # type: ignore[attr-defined]
    setattr(driver.AIOKafkaConsumerThread, "_highwaters", _highwaters)  # noqa: B010


async def fetched_highwaters(
    new_consumer: Callable[[], Any], reported: Mapping[TP, int], timeout_s: float
) -> dict[TP, int]:
    """The high-water mark of each partition of ``reported`` (its end offsets as ListOffsets
    answered them) from a Fetch at its last reported record; ``new_consumer`` builds an
    aiokafka consumer without a group, started and stopped here (only if a partition is
    not empty: a consumer built and never closed is an "Unclosed AIOKafkaConsumer" error
    in the log). A partition reported empty (0) is left as it is. Raises
    ``KafkaTimeoutError`` if a Fetch answer is missing after ``timeout_s``. The result is
    never below what was reported."""
    asked = {TopicPartition(tp.topic, tp.partition): tp for tp, end in reported.items() if end}
    if not asked:
        return dict(reported)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    consumer = new_consumer()
    await consumer.start()
    try:
        consumer.assign(list(asked))
        for tp, faust_tp in asked.items():
            consumer.seek(tp, reported[faust_tp] - 1)
        # aiokafka records a partition's high-water mark from each Fetch response for it.
        while missing := [tp for tp in asked if consumer.highwater(tp) is None]:
            left_ms = int((deadline - loop.time()) * 1000)
            if left_ms <= 0:
                raise KafkaTimeoutError(f"no Fetch answer for {missing} in {timeout_s:.0f} s")
            await consumer.getmany(*missing, timeout_ms=min(left_ms, 1000))
        fetched = {faust_tp: consumer.highwater(tp) for tp, faust_tp in asked.items()}
    finally:
        await consumer.stop()
    return {tp: max(end, fetched.get(tp, end)) for tp, end in reported.items()}


def before_tables_stop(app: Any, callback: Callable[[], Awaitable[None]]) -> None:
    """Await ``callback`` on a clean stop once the agents have finished the events in hand
    and before the tables close: faust's ``App._stop_consumer`` waits for the streams, then
    stops the tables, with no signal in between (``on_before_shutdown`` comes after the
    tables are closed). A failing callback is logged; the stop goes on."""
    tables = app.tables
    stop_tables = tables.stop

    async def stop() -> None:
        try:
            await callback()
        except Exception:
            logger.exception("before stopping the tables")
        await stop_tables()

    tables.stop = stop


def bounded_worker(worker_class: type[Any], on_signal: Callable[[], None]) -> type[Any]:
    """A subclass of faust's ``Worker`` that calls ``on_signal`` (e.g. arming a watchdog that
    ends the process if the stop hangs) when SIGTERM or SIGINT asks it to stop. mode
    routes both signals through ``Worker._schedule_shutdown`` (mode-streaming 0.7)."""

    class BoundedWorker(worker_class):  # type: ignore[misc]
        def _schedule_shutdown(self, signal: Any) -> None:
            on_signal()
            super()._schedule_shutdown(signal)

    return BoundedWorker
