"""One test per private faust/mode/aiokafka internal in services/preprocess/faust_internals.py:
each fails loudly if an upgrade changes what the worker relies on. No broker: a faust app
pointed at a closed port builds its table, producer buffer and consumer objects without
connecting."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any

import faust
import pytest
from aiokafka.errors import KafkaTimeoutError
from faust.streams import current_event
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as driver
from faust.types import TP

from services.preprocess import faust_internals
from services.preprocess.faust_internals import (
    ChangelogAcks,
    before_tables_stop,
    bounded_worker,
    commit_offsets,
    committed_offsets,
    correct_highwaters,
    fetch_only_active_partitions,
    fetched_highwaters,
    in_partition_of,
    shorten_fetch_wait,
)


class _Message:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset


class _Event:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.message = _Message(topic, partition, offset)


@pytest.fixture
def app() -> Iterator[faust.App]:
    app = faust.App(
        "internals-test",
        broker="kafka://127.0.0.1:1",  # never contacted
        store="memory://",
        web_enabled=False,
        autodiscover=False,
    )
    yield app


def test_in_partition_of_sets_fausts_current_event() -> None:
    event = _Event("raw", 3, 17)
    assert current_event() is None
    with in_partition_of(event):  # type: ignore[arg-type]
        assert current_event() is event
        with in_partition_of(_Event("raw", 1, 2)):  # type: ignore[arg-type]
            assert current_event().message.partition == 1  # type: ignore[union-attr]
        assert current_event() is event
    assert current_event() is None


def test_a_table_write_goes_through_send_changelog_in_the_events_partition(
    app: faust.App,
) -> None:
    """faust's ``Table.__setitem__`` -> ``on_key_set`` -> ``self.send_changelog``: the
    wrapper sees every changelog record, in the partition of the current event."""

    async def run() -> None:
        table = app.Table("t", key_type=bytes, value_type=bytes, partitions=4)
        acks = ChangelogAcks(table)
        with in_partition_of(_Event("raw", 2, 5)):  # type: ignore[arg-type]
            table[b"device"] = b"state"
        assert acks.pending == 1
        (future,) = acks._pending
        assert future.message.partition == 2
        assert future.message.channel.get_topic_name() == "internals-test-t-changelog"
        assert future.message.value == b"state"
        # Not acknowledged: the wait times out (the worker then ends without acking).
        with pytest.raises(TimeoutError):
            await acks.wait(0.05)
        assert acks.pending == 0
        # Acknowledged (faust resolves the FutureMessage when aiokafka's send completes).
        with in_partition_of(_Event("raw", 2, 6)):  # type: ignore[arg-type]
            table[b"device"] = b"state 2"
        acks._pending[0].set_result(None)
        await acks.wait(1.0)
        # A failed record fails the wait.
        with in_partition_of(_Event("raw", 2, 7)):  # type: ignore[arg-type]
            table[b"device"] = b"state 3"
        acks._pending[0].set_exception(RuntimeError("broker said no"))
        with pytest.raises(RuntimeError, match="broker said no"):
            await acks.wait(1.0)

    asyncio.run(run())


def test_recovery_calls_table_callbacks_before_seeking_to_committed_offsets() -> None:
    """The rewind commits from a table's ``on_recover`` callback; faust must seek the stream
    partitions to their committed offsets only after those callbacks (Recovery in 0.15)."""
    source = inspect.getsource(Recovery.on_recovery_completed)
    callbacks = source.index("table.on_recovery_completed(")
    waited = source.index("await asyncio.wait(callback_coros)")
    seek = source.index("consumer.perform_seek()")
    assert callbacks < waited < seek
    assert "await self.call_recover_callbacks()" in inspect.getsource(
        faust.Table.on_recovery_completed
    )


def test_the_consumer_reads_and_commits_explicit_offsets(app: faust.App) -> None:
    """``seek_to_committed`` returns the committed offsets of the assignment and
    ``_commit`` commits a mapping as given (the aiokafka driver's consumer thread)."""
    consumer = app.consumer
    assert isinstance(consumer, driver.Consumer)
    assert inspect.iscoroutinefunction(consumer.seek_to_committed)
    assert inspect.iscoroutinefunction(consumer._commit)
    assert list(inspect.signature(consumer._commit).parameters) == ["offsets"]
    thread_commit = inspect.getsource(driver.AIOKafkaConsumerThread._commit)
    assert "OffsetAndMetadata(offset" in thread_commit and "consumer.commit(" in thread_commit

    class Delegate:
        def __init__(self) -> None:
            self.calls: list[tuple[str, Any]] = []

        async def seek_to_committed(self) -> dict[TP, int]:
            self.calls.append(("seek_to_committed", None))
            return {TP("raw", 0): 12, TP("raw", 1): -1}

        async def commit(self, offsets: dict[TP, int]) -> bool:
            self.calls.append(("commit", offsets))
            return True

    delegate = Delegate()
    consumer._thread = delegate  # type: ignore[assignment]
    committed = asyncio.run(committed_offsets(consumer))
    assert committed == {TP("raw", 0): 12, TP("raw", 1): None}
    assert asyncio.run(commit_offsets(consumer, {TP("raw", 0): 3}))
    assert delegate.calls == [("seek_to_committed", None), ("commit", {TP("raw", 0): 3})]


def test_fetches_ask_for_a_snapshot_of_the_active_partitions(app: faust.App) -> None:
    """The bug: aiokafka returns every partition's records for an empty partition set, and
    faust passes its live set of active partitions (emptied when a recovery ends)."""
    from aiokafka.consumer.fetcher import Fetcher

    assert "if partitions and tp not in partitions:" in inspect.getsource(Fetcher.fetched_records)
    consumer = app.consumer
    consumer._active_partitions = {TP("raw", 0)}
    assert consumer._get_active_partitions() is consumer._active_partitions  # live, not a copy
    assert "self._get_active_partitions()" in inspect.getsource(type(consumer)._wait_next_records)
    assert "self._thread.getmany(active_partitions" in inspect.getsource(type(consumer)._getmany)

    class Thread:
        """Stands for faust's AIOKafkaConsumerThread around the patched getmany."""

        def __init__(self) -> None:
            self.asked: list[Any] = []

        def _ensure_consumer(self) -> Any:
            class Consumer:
                _max_poll_records = 500

            return Consumer()

        async def _fetch_records(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("call_thread stands in for it")

        async def call_thread(self, fn: Any, consumer: Any, partitions: Any, **kw: Any) -> Any:
            self.asked.append(partitions)
            return {"records": partitions}

    original = driver.AIOKafkaConsumerThread.getmany
    try:
        fetch_only_active_partitions()
        fetch_only_active_partitions()  # idempotent
        getmany = driver.AIOKafkaConsumerThread.getmany
        thread = Thread()
        live = {TP("raw", 0), TP("raw", 1)}
        assert asyncio.run(getmany(thread, live, 1.0)) == {"records": live}
        assert thread.asked[0] == live and thread.asked[0] is not live  # a snapshot
        assert asyncio.run(getmany(thread, set(), 1.0)) == {}  # not "every partition"
        assert asyncio.run(getmany(thread, None, 1.0)) == {"records": None}  # client-only
        assert len(thread.asked) == 2
    finally:
        driver.AIOKafkaConsumerThread.getmany = original  # type: ignore[method-assign]


def test_shorten_fetch_wait_reaches_the_aiokafka_consumer(app: faust.App) -> None:
    original = driver.AIOKafkaConsumerThread._create_worker_consumer

    async def create() -> Any:  # aiokafka's consumer wants a running loop
        thread = app.consumer._thread  # type: ignore[attr-defined]
        consumer = thread._create_worker_consumer(app.transport)
        await consumer.stop()  # never started: only releases its client
        return consumer

    try:
        shorten_fetch_wait(77)
        shorten_fetch_wait(50)  # a second call replaces the first, does not stack
        consumer = asyncio.run(create())
        assert consumer._fetch_max_wait_ms == 50
        # aiokafka reads the attribute when the consumer starts (it builds its fetcher).
        start = inspect.getsource(type(consumer).start)
        assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in start
    finally:
        driver.AIOKafkaConsumerThread._create_worker_consumer = original  # type: ignore[method-assign]


class _FetchingConsumer:
    """Stands for a group-less aiokafka consumer: the Fetch responses' high-water marks are
    ``ends``, known for a partition after ``fetches_needed`` fetches, or never (``None``: each
    fetch waits its whole timeout). The real broker's behaviour is in
    tests/integration/test_preprocess_recovery.py."""

    def __init__(self, ends: dict[TP, int], fetches_needed: int | None = 1) -> None:
        self.ends, self.fetches_needed = ends, fetches_needed
        self.calls: list[tuple[str, Any]] = []
        self.fetches = 0

    async def start(self) -> None:
        self.calls.append(("start", None))

    async def stop(self) -> None:
        self.calls.append(("stop", None))

    def assign(self, tps: list[Any]) -> None:
        self.calls.append(("assign", sorted(tps)))

    def seek(self, tp: Any, offset: int) -> None:
        self.calls.append(("seek", (tp, offset)))

    async def getmany(self, *tps: Any, timeout_ms: int) -> dict[Any, Any]:
        self.fetches += 1
        await asyncio.sleep(timeout_ms / 1000 if self.fetches_needed is None else 0)
        return {}

    def highwater(self, tp: Any) -> int | None:
        if self.fetches_needed is None or self.fetches < self.fetches_needed:
            return None
        return self.ends[TP(tp.topic, tp.partition)]


def test_fetched_highwaters_asks_each_partition_from_its_last_reported_record() -> None:
    reported = {TP("c", 0): 7, TP("c", 1): 2, TP("c", 2): 0}  # 2: empty, not asked
    consumer = _FetchingConsumer({TP("c", 0): 13, TP("c", 1): 2}, fetches_needed=2)
    ends = asyncio.run(fetched_highwaters(lambda: consumer, reported, timeout_s=5))
    assert ends == {TP("c", 0): 13, TP("c", 1): 2, TP("c", 2): 0}
    assert consumer.calls == [
        ("start", None),
        ("assign", [TP("c", 0), TP("c", 1)]),
        ("seek", (TP("c", 0), 6)),
        ("seek", (TP("c", 1), 1)),
        ("stop", None),
    ]
    # Never below what was reported; nothing to ask: no consumer started.
    lower = _FetchingConsumer({TP("c", 0): 3})
    assert asyncio.run(fetched_highwaters(lambda: lower, {TP("c", 0): 7}, 5)) == {TP("c", 0): 7}

    def no_consumer() -> Any:
        raise AssertionError("nothing to fetch: no consumer built")

    assert asyncio.run(fetched_highwaters(no_consumer, {TP("c", 0): 0}, 5)) == {TP("c", 0): 0}


def test_fetched_highwaters_fails_rather_than_guess() -> None:
    """No Fetch answer in time: an error (the recovery fails loudly), the consumer stopped."""
    consumer = _FetchingConsumer({TP("c", 0): 13}, fetches_needed=None)
    with pytest.raises(KafkaTimeoutError, match="no Fetch answer"):
        asyncio.run(fetched_highwaters(lambda: consumer, {TP("c", 0): 7}, timeout_s=0.2))
    assert consumer.calls[-1] == ("stop", None)


def test_correct_highwaters_replaces_what_faust_recovery_reads(app: faust.App) -> None:
    """faust 0.15: the recovery's high-water marks come from ``Consumer.highwaters`` ->
    ``AIOKafkaConsumerThread.highwaters`` -> ``_highwaters`` (ListOffsets via aiokafka's
    ``end_offsets``), each minus one; aiokafka records a partition's high-water mark from
    every Fetch response; ``_create_client_consumer`` builds a group-less consumer with
    faust's servers and credentials."""
    from aiokafka.consumer.fetcher import Fetcher

    build = inspect.getsource(Recovery._build_highwaters)
    assert "await consumer.highwaters(*tps)" in build and "value - 1" in build
    assert "self._thread.highwaters(" in inspect.getsource(driver.Consumer.highwaters)
    thread_highwaters = inspect.getsource(driver.AIOKafkaConsumerThread.highwaters)
    assert "self._highwaters" in thread_highwaters
    assert "consumer.end_offsets(partitions)" in inspect.getsource(
        driver.AIOKafkaConsumerThread._highwaters
    )
    assert "tp_state.highwater = highwater" in inspect.getsource(Fetcher._proc_fetch_request)
    client = inspect.getsource(driver.AIOKafkaConsumerThread._create_client_consumer)
    assert "group_id" not in client and "**auth_settings" in client

    class Thread:
        """Stands for faust's AIOKafkaConsumerThread around the patched ``_highwaters``."""

        def __init__(self) -> None:
            self.consumer = type("C", (), {"in_transaction": False})()
            self.app, self.transport = app, "transport"
            self.fetching = _FetchingConsumer({TP("c", 0): 13})

        def _ensure_consumer(self) -> Any:
            class Consumer:
                async def end_offsets(self, partitions: list[TP]) -> dict[TP, int]:
                    return {tp: 7 for tp in partitions}

                def last_stable_offset(self, tp: TP) -> int:
                    return 5

            return Consumer()

        def _create_client_consumer(self, transport: Any) -> Any:
            assert transport == "transport"
            return self.fetching

    original = driver.AIOKafkaConsumerThread._highwaters
    try:
        correct_highwaters()
        correct_highwaters()  # idempotent
        patched = driver.AIOKafkaConsumerThread._highwaters
        assert getattr(patched, "harstream_fetched", False)
        thread = Thread()
        assert asyncio.run(patched(thread, [TP("c", 0)])) == {TP("c", 0): 13}
        # In a transaction faust answers last stable offsets: left alone, nothing fetched.
        thread.consumer.in_transaction = True
        thread.fetching = _FetchingConsumer({})
        assert asyncio.run(patched(thread, [TP("c", 0)])) == {TP("c", 0): 5}
        assert thread.fetching.calls == []
    finally:
        driver.AIOKafkaConsumerThread._highwaters = original  # type: ignore[method-assign]


def test_bounded_worker_sees_sigterm_and_sigint(app: faust.App) -> None:
    """mode's SIGTERM and SIGINT handlers (``_on_sigterm``, ``_on_sigint``) both go through
    ``_schedule_shutdown``, which the bounded worker extends."""
    signalled: list[str] = []
    worker_class = bounded_worker(faust.Worker, lambda: signalled.append("stop"))

    async def run() -> None:
        worker = worker_class(app, loglevel="warning", override_logging=False, quiet=True)
        worker._on_sigterm()
        assert signalled == ["stop"] and worker._signal_stop_future is not None
        worker._signal_stop_future.cancel()
        worker._signal_stop_time = None
        worker._on_sigint()
        assert signalled == ["stop", "stop"]
        worker._signal_stop_future.cancel()

    asyncio.run(run())


def test_a_clean_stop_waits_for_the_streams_then_stops_the_tables() -> None:
    """The last checkpoint is written from ``tables.stop``: faust's stop must reach it after
    the agents finished their events, and a rebalance's ``on_partitions_revoked`` signal
    likewise comes after them (faust 0.15 ``App._stop_consumer``, ``_on_partitions_revoked``)."""
    stop = inspect.getsource(faust.App._stop_consumer)
    assert stop.index("self._consumer_wait_empty(") < stop.index("await self.tables.stop()")
    revoke = inspect.getsource(faust.App._on_partitions_revoked)
    assert revoke.index("self._consumer_wait_empty)(") < revoke.index(
        "self.on_partitions_revoked.send"
    )


def test_before_tables_stop_runs_first_and_a_failure_does_not_stop_the_stop(
    app: faust.App,
) -> None:
    order: list[str] = []

    async def checkpoint() -> None:
        order.append("checkpoint")
        raise RuntimeError("changelog not acknowledged")

    async def run() -> None:
        original = app.tables.stop

        async def stop_tables() -> None:
            order.append("tables stopped")
            await original()

        app.tables.stop = stop_tables  # type: ignore[method-assign]
        before_tables_stop(app, checkpoint)
        await app.tables.stop()

    asyncio.run(run())
    assert order == ["checkpoint", "tables stopped"]


def test_faust_is_the_pinned_version() -> None:
    """Everything above was checked against this version (pyproject pins it)."""
    from importlib.metadata import version

    assert version("faust-streaming") == "0.15.3"
    assert faust_internals.__doc__ and "0.15.3" in faust_internals.__doc__
