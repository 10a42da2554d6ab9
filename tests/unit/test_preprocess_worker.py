"""Preprocess worker: configuration, metrics, and the batch handler on fake table and
topics (no broker)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
from aiokafka.errors import MessageSizeTooLargeError
from faust.streams import current_event
from faust.types import TP
from prometheus_client import CollectorRegistry

from services.common.kafka.backoff import BackoffPolicy
from services.common.shutdown import ShutdownWatchdog
from services.preprocess import app, metrics
from services.preprocess.app import BatchHandler, faust_options, rewind_to_restored_state
from services.preprocess.positions import decode_position, encode_position, position_key
from services.preprocess.settings import PreprocessSettings
from services.preprocess.stream import DeviceStream, StreamConfig, StreamProcessor
from shared.dsp import PreprocessingConfig
from shared.messages import DeadLetter, RawPacket, WindowMessage
from shared.messages.raw import RawRecord, encode_bundle


def test_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    defaults = PreprocessSettings()
    assert defaults.app_id == "harstream-preprocess" and defaults.store == "rocksdb://"
    assert defaults.data_dir == tmp_path / "state" / "harstream" / "preprocess"
    assert (defaults.batch_max_size, defaults.batch_max_wait_s) == (500, 0.05)
    assert (defaults.gap_threshold_s, defaults.reorder_max_packets) == (1.0, 4)
    assert defaults.metrics_port == 9102
    for name, value in {
        "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
        "KAFKA_PROFILE": "tansu",
        "TOPIC_PREFIX": "t",
        "APP_ID": "pp-1",
        "STORE": "memory://",
        "DATA_DIR": str(tmp_path / "db"),
        "BATCH_MAX_SIZE": "64",
        "REORDER_MAX_PACKETS": "0",
    }.items():
        monkeypatch.setenv(f"HARSTREAM_PREPROCESS_{name}", value)
    s = PreprocessSettings()
    assert s.bootstrap_servers == ["k1:9092", "k2:9092"] and s.topics.raw == "t.raw.v1"
    assert (s.app_id, s.store, s.data_dir) == ("pp-1", "memory://", tmp_path / "db")
    assert (s.batch_max_size, s.reorder_max_packets) == (64, 0)
    monkeypatch.setenv("HARSTREAM_PREPROCESS_STORE", "redis://")
    with pytest.raises(ValueError, match="store"):
        PreprocessSettings()


def test_tansu_profile_only_on_the_local_broker() -> None:
    tansu = faust_options(PreprocessSettings(kafka_profile="tansu"))
    assert tansu["broker_session_timeout"] == 6.0
    assert tansu["consumer_auto_offset_reset"] == "earliest"
    apache = faust_options(PreprocessSettings(kafka_profile="apache"))
    assert apache["producer_max_batch_size"] > 100_000  # ~50 windows per produce batch
    # Batched on the local broker too (its end offsets are corrected, not avoided).
    assert tansu["producer_max_batch_size"] == apache["producer_max_batch_size"]
    assert apache["producer_linger"] == 0.005
    # The local broker lists every stored batch on each fetch: fewer, longer-lingered ones.
    assert tansu["producer_linger"] == 0.025
    assert "broker_rebalance_timeout" not in apache
    assert apache["broker_session_timeout"] == 30.0


def test_only_the_local_profile_patches_faust_high_water_marks() -> None:
    """faust's own ``_highwaters`` on Apache Kafka; the corrected one on Tansu."""
    from faust.transport.drivers import aiokafka as driver

    thread = driver.AIOKafkaConsumerThread
    patched_names = ("_highwaters", "_create_worker_consumer", "getmany")
    originals = {name: getattr(thread, name) for name in patched_names}
    try:
        app.create_app(PreprocessSettings(kafka_profile="apache"), CollectorRegistry())
        assert thread._highwaters is originals["_highwaters"]
        app.create_app(PreprocessSettings(kafka_profile="tansu"), CollectorRegistry())
        assert getattr(thread._highwaters, "harstream_fetched", False)
    finally:
        for name, function in originals.items():
            setattr(thread, name, function)


def test_metric_names() -> None:
    registry = CollectorRegistry()
    m = metrics.create(registry)
    m.windows.inc(3)
    m.dead_letters.labels(error_type="SchemaError").inc()
    m.batch_size.observe(500)
    assert registry.get_sample_value("harstream_windows_emitted_total") == 3
    assert (
        registry.get_sample_value("harstream_dead_letters_total", {"error_type": "SchemaError"})
        == 1
    )
    assert registry.get_sample_value("harstream_preprocess_batch_size_bucket", {"le": "500.0"}) == 1
    names = {metric.name for metric in registry.collect()}
    assert {
        "harstream_preprocess_packets",
        "harstream_preprocess_samples",
        "harstream_preprocess_duplicates",
        "harstream_preprocess_gaps",
        "harstream_preprocess_reordered",
        "harstream_preprocess_resampled_packets",
        "harstream_preprocess_batch_seconds",
    } <= names


class _Message:
    def __init__(self, key: bytes | None, value: bytes, partition: int, offset: int) -> None:
        self.topic, self.key, self.value = "t.raw.v1", key, value
        self.partition, self.offset = partition, offset


class _Event:
    """What the handler uses of a faust event (weak-referenceable, like faust's)."""

    def __init__(self, key: bytes | None, value: bytes, partition: int, offset: int) -> None:
        self.message = _Message(key, value, partition, offset)
        self.key, self.value = key, value


class _Log(list):  # type: ignore[type-arg]
    """Every effect in order: ("send", topic, key, value), ("set", partition, key) and
    ("acked", records) when the handler has waited for its changelog records."""


class _Changelog:
    """Stands for the broker acknowledging the table's changelog records: counts the table
    writes since the last wait. ``release`` (if given) must be set before a wait ends."""

    def __init__(self, log: _Log, release: asyncio.Event | None = None) -> None:
        self.log, self.release = log, release
        self.waiting = asyncio.Event()

    async def wait(self, timeout_s: float) -> None:
        self.waiting.set()
        if self.release is not None:
            await self.release.wait()
        sets = 0
        for entry in reversed(self.log):
            if entry[0] == "acked":
                break
            sets += entry[0] == "set"
        self.log.append(("acked", sets))


class _Topic:
    def __init__(self, name: str, log: _Log) -> None:
        self.name, self.log = name, log

    def get_topic_name(self) -> str:
        return self.name

    async def send(self, key: bytes, value: bytes) -> asyncio.Future[None]:
        self.log.append(("send", self.name, key, value))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


class _Table(dict):  # type: ignore[type-arg]
    """A faust table's store picks the partition of faust's current event: so do we."""

    def __init__(self, log: _Log) -> None:
        super().__init__()
        self.log = log

    def __setitem__(self, key: bytes, value: bytes) -> None:
        event = current_event()
        assert event is not None
        self.log.append(("set", event.message.partition, key))
        super().__setitem__(key, value)


def _handler(log: _Log, **config: object) -> tuple[BatchHandler, _Table, CollectorRegistry]:
    registry = CollectorRegistry()
    table = _Table(log)
    handler = BatchHandler(
        StreamProcessor(StreamConfig(**config)),  # type: ignore[arg-type]
        table,
        _Topic("windows", log),  # type: ignore[arg-type]
        _Topic("dlq", log),  # type: ignore[arg-type]
        metrics.create(registry),
        changelog=_Changelog(log),
        changelog_timeout_s=30.0,
    )
    return handler, table, registry


def _packets(device: str, count: int, seed: int = 0) -> list[RawPacket]:
    rng = np.random.default_rng(seed)
    samples = rng.normal(0, 0.3, (count * 50, 6)) + np.array([0, -1, 0, 0, 0, 0])
    return [
        RawPacket(device, i, 1000.0 + i, 50.0, samples[i * 50 : (i + 1) * 50], 5.0)
        for i in range(count)
    ]


def test_batch_handler_sends_windows_then_states_then_positions_then_awaits_acks() -> None:
    log = _Log()
    handler, table, registry = _handler(log)
    a, b = _packets("a", 6), _packets("b", 6, seed=1)
    events = [
        _Event(p.device_id.encode(), p.to_bytes(), partition, i)
        for i, (p, partition) in enumerate(
            [x for pair in zip(a, b, strict=True) for x in ((pair[0], 2), (pair[1], 0))]
        )
    ]
    asyncio.run(handler.handle(events))
    kinds = [entry[0] for entry in log]
    # 3 windows per device, the 2 states, the 2 partitions' positions, then the wait for
    # the broker's acknowledgement of those 4 changelog records.
    assert kinds == ["send"] * 6 + ["set"] * 4 + ["acked"] and log[-1] == ("acked", 4)
    # Each device's state in its own message's partition, whatever the batch's order.
    assert sorted(entry[1:] for entry in log[6:8]) == [(0, b"b"), (2, b"a")]
    # Then each raw partition's next offset, in that partition (same changelog partition).
    raw = "t.raw.v1"
    assert log[8:10] == [("set", 0, position_key(raw, 0)), ("set", 2, position_key(raw, 2))]
    assert decode_position(table[position_key(raw, 0)]) == 12  # offsets 1, 3, ..., 11
    assert decode_position(table[position_key(raw, 2)]) == 11
    stream = DeviceStream.from_bytes(table[b"a"], PreprocessingConfig())
    assert stream.last_seq == 5 and stream.counters.windows == 3
    assert registry.get_sample_value("harstream_windows_emitted_total") == 6
    assert registry.get_sample_value("harstream_preprocess_samples_total") == 600
    # The same batch again (a replay after a crash): all duplicates, nothing sent.
    log.clear()
    asyncio.run(handler.handle(events))
    assert [entry[0] for entry in log] == ["set"] * 4 + ["acked"]
    assert registry.get_sample_value("harstream_preprocess_duplicates_total") == 12


def test_a_batch_is_not_acknowledged_before_its_changelog_records_are() -> None:
    """faust acknowledges a batch's offsets when ``handle`` returns: it must not return while
    the broker has not acknowledged the batch's table writes."""
    log = _Log()
    handler, _, _ = _handler(log)

    async def run() -> None:
        release = asyncio.Event()
        handler.changelog = changelog = _Changelog(log, release)
        task = asyncio.create_task(handler.handle(_events("a", 6)))
        await asyncio.wait_for(changelog.waiting.wait(), 5)
        # The states are written (locally), the batch waits for the broker's acknowledgement.
        assert [entry[0] for entry in log] == ["send"] * 3 + ["set"] * 2
        await asyncio.sleep(0.05)  # give a handler that would not wait the time to return
        assert not task.done()
        release.set()
        await asyncio.wait_for(task, 5)
        assert log[-1] == ("acked", 2)  # device "a" and partition 0's position

    asyncio.run(run())


def test_positions_cover_dead_lettered_messages_too() -> None:
    log = _Log()
    handler, table, _ = _handler(log)
    events = [*_events("a", 2), _Event(b"a", b"garbage", 3, 7)]
    asyncio.run(handler.handle(events))
    assert decode_position(table[position_key("t.raw.v1", 0)]) == 2
    assert decode_position(table[position_key("t.raw.v1", 3)]) == 8  # only a dead letter


def test_batch_handler_dead_letters_bad_messages_and_keeps_going() -> None:
    log = _Log()
    handler, _, registry = _handler(log)
    good = _packets("a", 4)
    nan = RawPacket("c", 0, 1000.0, 50.0, np.full((50, 6), np.nan), 5.0)
    events = [
        _Event(b"a", good[0].to_bytes(), 1, 10),
        _Event(b"a", b"garbage", 1, 11),
        _Event(b"not-c", nan.to_bytes(), 3, 12),
        _Event(b"c", nan.to_bytes(), 3, 13),
        *[_Event(b"a", p.to_bytes(), 1, 14 + i) for i, p in enumerate(good[1:])],
    ]
    asyncio.run(handler.handle(events))
    letters = [DeadLetter.from_bytes(e[3]) for e in log if e[0] == "send" and e[1] == "dlq"]
    assert [(d.error_type, d.source_partition, d.source_offset) for d in letters] == [
        ("SchemaError", 1, 11),
        ("KeyMismatchError", 3, 12),
        ("PreprocessingError", 3, 13),
    ]
    assert letters[0].value == b"garbage" and "NaN" in letters[2].reason
    windows = [WindowMessage.from_bytes(e[3]) for e in log if e[0] == "send" and e[1] == "windows"]
    assert [w.start_index for w in windows] == [0, 64]  # all 4 good packets processed
    assert registry.get_sample_value("harstream_dead_letters_total", {"error_type": "SchemaError"})


def test_batch_handler_survives_a_processing_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    log = _Log()
    handler, _, _ = _handler(log)
    original = handler.processor.process_batch

    def buggy(streams, packets, now):  # type: ignore[no-untyped-def]
        if any(p.device_id == "boom" for p in packets):
            raise ZeroDivisionError("a bug")
        return original(streams, packets, now)

    monkeypatch.setattr(handler.processor, "process_batch", buggy)
    boom = _packets("boom", 1)[0]
    events = [_Event(p.device_id.encode(), p.to_bytes(), 0, i) for i, p in enumerate(
        [*_packets("a", 2), boom, *_packets("a", 4)[2:]])]  # fmt: skip
    asyncio.run(handler.handle(events))
    letters = [DeadLetter.from_bytes(e[3]) for e in log if e[0] == "send" and e[1] == "dlq"]
    assert [(d.error_type, d.source_offset) for d in letters] == [("ZeroDivisionError", 2)]
    assert sum(1 for e in log if e[0] == "send" and e[1] == "windows") == 2


def test_batch_handler_continues_the_timeline_of_an_unusable_state() -> None:
    log = _Log()
    handler, table, registry = _handler(log)
    other = PreprocessingConfig(noise_cutoff_hz=18.0)
    old = StreamProcessor(StreamConfig(preprocessing=other))
    stream, _ = old.process(None, _packets("a", 1)[0], 0.0)
    dict.__setitem__(table, b"a", stream.to_bytes(other))  # as if written by the old version
    log.clear()
    asyncio.run(handler.handle([_Event(b"a", p.to_bytes(), 0, 1) for p in _packets("a", 6)[1:]]))
    windows = [WindowMessage.from_bytes(e[3]) for e in log if e[0] == "send" and e[1] == "windows"]
    assert [w.start_index for w in windows] == [50, 114]
    assert registry.get_sample_value("harstream_preprocess_resets_total", {"reason": "bad_state"})


class _Fatal(Exception):
    """Stands for the process exit of a batch that cannot be finished."""


class _RetriableKafkaError(Exception):
    retriable = True


class _FailingTopic(_Topic):
    """Its first ``failures`` sends raise (wrapped like faust wraps aiokafka errors)."""

    def __init__(self, name: str, log: _Log, error: Exception, failures: int) -> None:
        super().__init__(name, log)
        self.error, self.failures = error, failures

    async def send(self, key: bytes, value: bytes) -> asyncio.Future[None]:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("Error while sending") from self.error
        return await super().send(key, value)


def _handler_with(
    log: _Log, windows_topic: _Topic
) -> tuple[BatchHandler, _Table, CollectorRegistry, list[BaseException]]:
    registry = CollectorRegistry()
    table = _Table(log)
    fatal: list[BaseException] = []

    def on_fatal(exc: BaseException) -> NoReturn:
        fatal.append(exc)
        raise _Fatal from exc

    handler = BatchHandler(
        StreamProcessor(StreamConfig()),
        table,
        windows_topic,  # type: ignore[arg-type]
        _Topic("dlq", log),  # type: ignore[arg-type]
        metrics.create(registry),
        changelog=_Changelog(log),
        changelog_timeout_s=30.0,
        on_fatal=on_fatal,
    )
    return handler, table, registry, fatal


def _events(device: str, count: int) -> list[_Event]:
    return [
        _Event(device.encode(), p.to_bytes(), 0, i) for i, p in enumerate(_packets(device, count))
    ]


def test_a_send_that_keeps_failing_ends_the_process_before_any_state_is_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app, "SEND_BACKOFF", BackoffPolicy(initial_s=0.001, max_s=0.001))
    log = _Log()
    error = ValueError("MessageSizeTooLargeError")  # not retriable
    handler, table, _, fatal = _handler_with(log, _FailingTopic("windows", log, error, 1))
    with pytest.raises(_Fatal):
        asyncio.run(handler.handle(_events("a", 6)))
    assert [f.__cause__ for f in fatal] == [error]
    assert log == [] and dict(table) == {}  # nothing acked would be a silent drop: exit first


def test_retriable_send_errors_are_retried_then_the_batch_completes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app, "SEND_BACKOFF", BackoffPolicy(initial_s=0.001, max_s=0.001))
    log = _Log()
    topic = _FailingTopic("windows", log, _RetriableKafkaError("leader moved"), 2)
    handler, table, _, fatal = _handler_with(log, topic)
    asyncio.run(handler.handle(_events("a", 6)))
    assert fatal == [] and [e[0] for e in log] == ["send"] * 3 + ["set", "set", "acked"]
    assert DeviceStream.from_bytes(table[b"a"], PreprocessingConfig()).last_seq == 5
    # Retriable, but for longer than SEND_ATTEMPTS: the process ends.
    log.clear()
    topic.failures = app.SEND_ATTEMPTS
    with pytest.raises(_Fatal):
        asyncio.run(handler.handle(_events("b", 6)))
    assert len(fatal) == 1 and log == []


def test_a_failing_table_write_ends_the_process() -> None:
    class BrokenTable(_Table):
        def __setitem__(self, key: bytes, value: bytes) -> None:
            raise OSError("rocksdb: no space left on device")

    log = _Log()
    handler, _, _, fatal = _handler_with(log, _Topic("windows", log))
    handler.table = BrokenTable(log)
    with pytest.raises(_Fatal):
        asyncio.run(handler.handle(_events("a", 6)))
    assert [type(f) for f in fatal] == [OSError]


def test_any_decoder_failure_dead_letters_only_that_packet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = _Log()
    handler, _, registry, fatal = _handler_with(log, _Topic("windows", log))
    original = app._decode

    def decode(event: _Event, raw: RawRecord, frame: bytes) -> RawPacket:
        if event.message.offset == 1:
            raise IndexError("a decoder bug")
        return original(event, raw, frame)  # type: ignore[arg-type]

    monkeypatch.setattr(app, "_decode", decode)
    asyncio.run(handler.handle(_events("a", 6)))
    letters = [DeadLetter.from_bytes(e[3]) for e in log if e[0] == "send" and e[1] == "dlq"]
    assert [(d.error_type, d.source_offset) for d in letters] == [("IndexError", 1)]
    assert fatal == [] and log[-1][0] == "acked"
    assert registry.get_sample_value("harstream_dead_letters_total", {"error_type": "IndexError"})


def _windows_sent(log: _Log) -> list[tuple[str, bytes]]:
    sent = [WindowMessage.from_bytes(e[3]) for e in log if e[0] == "send" and e[1] == "windows"]
    return [(w.window_id, w.data.tobytes()) for w in sent]


def test_bundled_packets_give_the_windows_their_single_records_give() -> None:
    a, b = _packets("a", 6), _packets("b", 6, seed=1)
    singles = _Log()
    handler, _, _, _ = _handler_with(singles, _Topic("windows", singles))
    asyncio.run(
        handler.handle(
            [_Event(p.device_id.encode(), p.to_bytes(), 0, i) for i, p in enumerate(a + b)]
        )
    )
    bundled = _Log()
    handler, _, registry, fatal = _handler_with(bundled, _Topic("windows", bundled))
    frames = [p.to_bytes() for pair in zip(a, b, strict=True) for p in pair]
    events = [_Event(None, encode_bundle(frames[i : i + 4], 0), 0, i // 4) for i in (0, 4, 8)]
    asyncio.run(handler.handle(events))
    windows = _windows_sent(bundled)
    assert len(windows) == 6 and sorted(windows) == sorted(_windows_sent(singles))
    assert fatal == [] and bundled[-1][0] == "acked"
    assert registry.get_sample_value("harstream_preprocess_packets_total") == 12  # not 3


def test_a_bad_packet_of_a_bundle_is_dead_lettered_alone_with_its_own_frame() -> None:
    log = _Log()
    handler, _, _, fatal = _handler_with(log, _Topic("windows", log))
    good = [p.to_bytes() for p in _packets("a", 6)]
    bad = b"HR\x09" + bytes(20)  # a frame of a schema version nobody wrote
    events = [
        _Event(None, encode_bundle([good[0], bad, good[1], good[2]], 0), 0, 0),
        _Event(None, encode_bundle(good[3:], 0), 0, 1),
        # Built for partition 1 but read from 0: its devices' state lives elsewhere.
        _Event(None, encode_bundle(good[:1], 1), 0, 2),
        _Event(None, b"HB\x01" + bytes(4), 0, 3),  # a bundle that does not decode
    ]
    asyncio.run(handler.handle(events))
    letters = [DeadLetter.from_bytes(e[3]) for e in log if e[0] == "send" and e[1] == "dlq"]
    assert [(d.error_type, d.source_offset, d.value) for d in letters] == [
        ("SchemaError", 0, bad),
        ("KeyMismatchError", 2, good[0]),
        ("SchemaError", 3, events[3].value),
    ]
    assert len(_windows_sent(log)) == 3  # the six good packets went on
    assert fatal == [] and log[-1][0] == "acked"


def test_shutdown_watchdog_exits_when_the_stop_hangs() -> None:
    exited = threading.Event()
    statuses: list[int] = []

    def fake_exit(status: int) -> None:
        statuses.append(status)
        exited.set()

    assert PreprocessSettings().shutdown_timeout_s == 15.0
    watchdog = ShutdownWatchdog("preprocess worker", 0.05, exit=fake_exit)
    watchdog.arm()
    watchdog.arm()  # a second signal does not restart the countdown
    assert exited.wait(2.0) and statuses == [1]
    stopped_in_time = ShutdownWatchdog("preprocess worker", 0.05, exit=fake_exit)
    stopped_in_time.arm()
    stopped_in_time.disarm()
    time.sleep(0.1)
    assert statuses == [1]


def test_a_changelog_that_is_not_acknowledged_ends_the_process() -> None:
    class Unacknowledged:
        async def wait(self, timeout_s: float) -> None:
            raise TimeoutError(f"no acknowledgement within {timeout_s} s")

    log = _Log()
    handler, _, _, fatal = _handler_with(log, _Topic("windows", log))
    handler.changelog = Unacknowledged()
    with pytest.raises(_Fatal):
        asyncio.run(handler.handle(_events("a", 6)))
    assert [type(f) for f in fatal] == [TimeoutError]


class _Consumer:
    """faust's consumer as the rewind uses it: committed offsets, and explicit commits."""

    def __init__(self, committed: dict[TP, int | None], accept: bool = True) -> None:
        self.committed, self.accept = committed, accept
        self.commits: list[dict[TP, int]] = []

    async def seek_to_committed(self) -> dict[TP, int | None]:
        return dict(self.committed)

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        self.commits.append(dict(offsets))
        if self.accept:
            self.committed.update(offsets)
        return self.accept


def test_recovery_moves_a_committed_offset_back_to_the_restored_position() -> None:
    raw, changelog = "t.raw.v1", "pp-device-streams-changelog"
    consumer = _Consumer(
        {
            TP(raw, 0): 120,  # ahead of the restored states (100): read 20 again
            TP(raw, 1): 50,  # behind them: packets dropped by seq, nothing to do
            TP(raw, 2): None,  # nothing committed: the position becomes the committed offset
            TP(raw, 3): 9,  # no position restored (state of an older version)
            TP(changelog, 0): None,
        }
    )
    table = {
        position_key(raw, 0): encode_position(100),
        position_key(raw, 1): encode_position(60),
        position_key(raw, 2): encode_position(5),
    }
    registry = CollectorRegistry()
    moves = asyncio.run(rewind_to_restored_state(consumer, table, raw, metrics.create(registry)))
    assert [(m.partition, m.committed, m.restored, m.packets) for m in moves] == [
        (0, 120, 100, 20),
        (2, None, 5, 0),
    ]
    assert consumer.commits == [{TP(raw, 0): 100, TP(raw, 2): 5}]
    assert registry.get_sample_value("harstream_preprocess_rewound_messages_total") == 20
    # Nothing ahead or missing any more: the next recovery commits nothing.
    assert asyncio.run(rewind_to_restored_state(consumer, table, raw, metrics.create(
        CollectorRegistry()))) == []  # fmt: skip
    assert len(consumer.commits) == 1


def test_a_refused_rewind_is_not_counted() -> None:
    raw = "t.raw.v1"
    consumer = _Consumer({TP(raw, 0): 10}, accept=False)
    registry = CollectorRegistry()
    table = {position_key(raw, 0): encode_position(4)}
    moves = asyncio.run(rewind_to_restored_state(consumer, table, raw, metrics.create(registry)))
    assert len(moves) == 1 and consumer.commits == [{TP(raw, 0): 4}]
    assert registry.get_sample_value("harstream_preprocess_rewound_messages_total") == 0


class _SizeLimitedTopic(_Topic):
    """Refuses values over ``limit`` bytes the way faust wraps aiokafka's size error."""

    def __init__(self, name: str, log: _Log, limit: int) -> None:
        super().__init__(name, log)
        self.limit = limit

    async def send(self, key: bytes, value: bytes) -> asyncio.Future[None]:
        if len(value) > self.limit:
            raise RuntimeError("Error while sending") from MessageSizeTooLargeError()
        return await super().send(key, value)


def _huge_raw_batch() -> list[_Event]:
    good = _packets("a", 3)
    return [
        _Event(b"a", good[0].to_bytes(), 0, 0),
        _Event(b"a", b"\xff" * 900_000, 0, 1),  # the fuzz suite's 900 KB raw poison
        *[_Event(b"a", p.to_bytes(), 0, 2 + i) for i, p in enumerate(good[1:])],
    ]


def test_a_huge_poison_is_dead_lettered_without_its_value_not_fatal() -> None:
    """Its dead letter (~1.2 MB of base64) was too large to produce: not retriable, so the
    worker exited with 70, and again after every restart."""
    log = _Log()
    handler, table, _, fatal = _handler_with(log, _Topic("windows", log))
    asyncio.run(handler.handle(_huge_raw_batch()))
    assert fatal == []
    (letter,) = [DeadLetter.from_bytes(e[3]) for e in log if e[0] == "send" and e[1] == "dlq"]
    assert letter.value is None and letter.source_offset == 1
    assert "source value of 900000 bytes left out" in letter.reason
    assert DeviceStream.from_bytes(table[b"a"], PreprocessingConfig()).last_seq == 2


def test_a_broker_limit_below_ours_shrinks_the_dead_letters_and_goes_on() -> None:
    log = _Log()
    registry = CollectorRegistry()
    table = _Table(log)
    handler = BatchHandler(
        StreamProcessor(StreamConfig()),
        table,
        _Topic("windows", log),  # type: ignore[arg-type]
        _SizeLimitedTopic("dlq", log, limit=10_000),  # type: ignore[arg-type]
        metrics.create(registry),
        changelog=_Changelog(log),
        changelog_timeout_s=30.0,
    )
    good = _packets("a", 2)
    events = [
        _Event(b"a", good[0].to_bytes(), 0, 0),
        _Event(b"a", b"\xff" * 50_000, 0, 1),  # under our limit, over the broker's
        _Event(b"a", good[1].to_bytes(), 0, 2),
    ]
    asyncio.run(handler.handle(events))
    (letter,) = [DeadLetter.from_bytes(e[3]) for e in log if e[0] == "send" and e[1] == "dlq"]
    assert letter.value is None and "MessageSizeTooLargeError" in letter.reason
    assert DeviceStream.from_bytes(table[b"a"], PreprocessingConfig()).last_seq == 1


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _checkpointing_handler(
    log: _Log, clock: _Clock, interval_s: float = 5.0
) -> tuple[BatchHandler, _Table]:
    table = _Table(log)
    handler = BatchHandler(
        StreamProcessor(StreamConfig()),
        table,
        _Topic("windows", log),  # type: ignore[arg-type]
        _Topic("dlq", log),  # type: ignore[arg-type]
        metrics.create(CollectorRegistry()),
        changelog=_Changelog(log),
        changelog_timeout_s=30.0,
        checkpoint_interval_s=interval_s,
        clock=clock,
    )
    return handler, table


def _live_batches(devices: list[str], packets: int) -> list[list[_Event]]:
    """One packet per device per batch, as live devices send them; device i in partition
    i % 2, offsets counted per partition."""
    streams = {d: _packets(d, packets, seed=i) for i, d in enumerate(devices)}
    offsets = [0, 0]
    batches = []
    for n in range(packets):
        batch = []
        for i, d in enumerate(devices):
            batch.append(_Event(d.encode(), streams[d][n].to_bytes(), i % 2, offsets[i % 2]))
            offsets[i % 2] += 1
        batches.append(batch)
    return batches


def test_states_are_written_once_per_checkpoint_with_the_same_windows() -> None:
    """Between checkpoints each device's state stays in memory: no table write, no wait for
    the changelog; the windows are bit-equal to writing the state after every batch."""
    batches = _live_batches(["a", "b", "c"], 12)
    every_batch_log, checkpoint_log = _Log(), _Log()
    every_batch, _ = _checkpointing_handler(every_batch_log, _Clock(), interval_s=0.0)
    clock = _Clock()
    handler, table = _checkpointing_handler(checkpoint_log, clock)
    for n, batch in enumerate(batches):
        asyncio.run(every_batch.handle(batch))
        clock.now = n * 1.0  # one batch a second: checkpoints at 0 s (new partitions), 5, 10
        asyncio.run(handler.handle(batch))
    sent = [WindowMessage.from_bytes(e[3]) for e in checkpoint_log if e[0] == "send"]
    expected = [WindowMessage.from_bytes(e[3]) for e in every_batch_log if e[0] == "send"]
    assert [w.window_id for w in sent] == [w.window_id for w in expected] and len(sent) == 24
    assert all(np.array_equal(w.data, x.data) for w, x in zip(sent, expected, strict=True))
    every_batch_sets = [e for e in every_batch_log if e[0] == "set"]
    sets = [e for e in checkpoint_log if e[0] == "set"]
    assert len(every_batch_sets) == 12 * 5 and len(sets) == 3 * 5  # 3 states + 2 positions
    assert [e[0] for e in checkpoint_log].count("acked") == 3
    # The last checkpoint (at 10 s, batch 10) covers offsets up to batch 10's.
    raw = "t.raw.v1"
    assert decode_position(table[position_key(raw, 0)]) == 11 * 2  # a and c in partition 0
    assert decode_position(table[position_key(raw, 1)]) == 11
    assert DeviceStream.from_bytes(table[b"b"], PreprocessingConfig()).last_seq == 10


def test_after_forgetting_the_worker_continues_from_the_table() -> None:
    """A rebalance drops the states held in memory: the next batch continues from the last
    checkpoint (the rewind reads the packets after it again), and a replayed packet the
    table already covers is a duplicate."""
    batches = _live_batches(["a"], 8)
    log = _Log()
    clock = _Clock()
    handler, table = _checkpointing_handler(log, clock)
    clock.now = 5.0
    asyncio.run(handler.handle(batches[0]))  # a checkpoint at 5 s
    for batch in batches[1:4]:
        asyncio.run(handler.handle(batch))
    assert DeviceStream.from_bytes(table[b"a"], PreprocessingConfig()).last_seq == 0
    handler.forget()
    log.clear()
    for batch in batches[1:4]:  # read again from the restored position
        asyncio.run(handler.handle(batch))
    asyncio.run(handler.checkpoint())
    assert DeviceStream.from_bytes(table[b"a"], PreprocessingConfig()).last_seq == 3
    reference_log = _Log()
    reference, _ = _checkpointing_handler(reference_log, _Clock(), interval_s=0.0)
    for batch in batches[:4]:
        asyncio.run(reference.handle(batch))
    # The windows of the packets read again are the same windows, with the same ids.
    replayed = [WindowMessage.from_bytes(e[3]) for e in log if e[0] == "send"]
    expected = {
        w.window_id: w
        for w in (WindowMessage.from_bytes(e[3]) for e in reference_log if e[0] == "send")
    }
    assert replayed and all(np.array_equal(expected[w.window_id].data, w.data) for w in replayed)


def test_a_clean_stop_checkpoint_writes_what_is_unwritten_and_idle_devices_are_dropped() -> None:
    batches = _live_batches(["a", "b"], 3)
    log = _Log()
    clock = _Clock()
    handler, table = _checkpointing_handler(log, clock)
    clock.now = 5.0
    asyncio.run(handler.handle(batches[0]))  # a checkpoint at 5 s
    clock.now = 6.0
    asyncio.run(handler.handle(batches[1]))
    assert DeviceStream.from_bytes(table[b"a"], PreprocessingConfig()).last_seq == 0
    asyncio.run(handler.checkpoint())  # what the stop and the rebalance call
    assert DeviceStream.from_bytes(table[b"a"], PreprocessingConfig()).last_seq == 1
    log.clear()
    asyncio.run(handler.checkpoint())  # nothing new: no write, no wait
    assert log == []
    clock.now = 6.0 + app.IDLE_STATE_S + 1
    asyncio.run(handler.handle(batches[2][:1]))  # only "a" speaks
    assert set(handler._streams) == {"a"}  # "b" was idle: its state lives in the table only


def test_a_partition_read_for_the_first_time_is_checkpointed_at_once() -> None:
    """faust commits a batch's offsets when it returns: a partition's first commit must have
    a position behind it, or a crash before the next checkpoint would skip its packets."""
    log = _Log()
    clock = _Clock()
    handler, table = _checkpointing_handler(log, clock)
    (first, second) = _live_batches(["a", "b"], 2)
    asyncio.run(handler.handle(first[:1]))  # partition 0 only: checkpointed
    raw = "t.raw.v1"
    assert position_key(raw, 0) in table and position_key(raw, 1) not in table
    clock.now = 1.0
    asyncio.run(handler.handle(second[:1]))  # partition 0 again, within the interval
    assert decode_position(table[position_key(raw, 0)]) == 1
    asyncio.run(handler.handle(first[1:]))  # partition 1's first batch: checkpointed
    assert decode_position(table[position_key(raw, 1)]) == 1
    assert decode_position(table[position_key(raw, 0)]) == 2  # with what was unwritten
