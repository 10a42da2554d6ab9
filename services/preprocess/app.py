"""The faust worker: raw topic → :class:`StreamProcessor` → windows topic, state in a table.

Wiring only; the stream logic is in :mod:`services.preprocess.stream`.

* The raw topic is consumed as bytes in micro-batches (``stream.take_events``: up to
  ``batch_max_size`` packets or ``batch_max_wait_s``); each batch is one
  ``StreamProcessor.process_batch`` call (one vectorised filter call for all its devices).
* Per-device :class:`DeviceStream` bytes live in the faust table ``device-streams`` (RocksDB
  via rocksdict by default, changelog-backed, partitioned like the raw topic), so a
  restarted or rebalanced worker continues each device's filters exactly.
* A packet that fails to decode (:class:`SchemaError`, or any other exception a decoder
  raises) and packets the core rejects (:class:`PreprocessingError`, or a bug the
  packet-by-packet retry isolates) go to the dead-letter topic with their source
  topic/partition/offset; the worker never stops on a message.

Delivery guarantee. Per batch: (1) the windows and dead letters are produced and their
delivery awaited; (2) the device states are written to the table, then each raw partition's
*position* (the next raw offset those states cover, :mod:`services.preprocess.positions`),
and the broker's acknowledgement of every one of these changelog records is awaited; (3) only
then does the batch return and faust acknowledge its offsets, committed later. So a committed
raw offset never runs ahead of the changelog, and a worker restored from it (on a new disk,
or on the same disk where faust replays the changelog records after the local store's
persisted offset) covers everything committed. (A restore reads each changelog partition up
to its high-water mark; on the local broker, which reports it short after a batch of several
records, faust reads it through
:func:`~services.preprocess.faust_internals.correct_highwaters`, so records are produced in
batches there too.) Without step (2)'s wait it could: faust's own
pre-commit flush of its producer buffer gives up after 0.1 s without progress (see
:class:`~services.preprocess.faust_internals.ChangelogAcks`); reproduced with a stalled
broker, the commit went out with up to 138 state records still unsent, and a kill at that
moment left 134 devices one packet short, a packet no worker would read again.
As a second line of defence, after every recovery the worker compares each restored position
with the group's committed offset and, where the commit is ahead (any recovery that restores
less than was acknowledged), commits the position instead so those packets are read again
(:func:`rewind_to_restored_state`).

A crash between (1) and (3) replays the batch: packets the restored state already covers are
dropped as duplicates (seq), the others produce the same windows again, with the same
deterministic ids (``device:start_index``) and data. So windows are delivered **at least
once, never lost, deterministic and idempotent by window id**; consumers deduplicate by id. A
graceful stop (SIGTERM/SIGINT) finishes the batch in hand, commits and flushes: a restart
then produces **no duplicates** (exactly once on the topic). A message whose key is not its
device id is dead-lettered too (its state would land in another partition than the device's).

A batch that cannot be finished ends the process. faust's ``take_events`` acknowledges
every event of a batch when its generator is finalised, which happens when the agent body
raises (faust's supervisor then restarts the agent): an exception escaping
:meth:`BatchHandler.handle` would commit the batch's offsets with no windows and no dead
letters, a silent drop. So the sends are retried (``SEND_ATTEMPTS``, with backoff) while
Kafka reports a retriable error, and anything still failing (a non-retriable Kafka error,
a table write or read failure, a bug) logs a critical line, flushes the logs and exits
with status 70 (``os._exit``: no ``finally``, no generator finalisation, so nothing of the
batch is acknowledged). The restarted worker reads the batch again: at-least-once, as
after a crash.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, NoReturn, Protocol

import faust
from faust.types import EventT
from prometheus_client import CollectorRegistry

from services.common.kafka.backoff import BackoffPolicy
from services.common.kafka.clients import (
    faust_broker_urls,
    faust_credentials,
    producer_batch_bytes,
    producer_linger_ms,
    profile,
)
from services.common.kafka.clients import faust_options as broker_faust_options
from services.common.kafka.dead_letters import (
    dead_letter,
)
from services.common.kafka.send import Record, TopicProducer, send_acked
from services.common.shutdown import hard_exit
from services.preprocess.faust_internals import (
    ChangelogAcks,
    before_tables_stop,
    commit_offsets,
    committed_offsets,
    correct_highwaters,
    fetch_only_active_partitions,
    in_partition_of,
    shorten_fetch_wait,
)
from services.preprocess.metrics import PreprocessMetrics, create
from services.preprocess.positions import (
    Rewind,
    decode_position,
    encode_position,
    position_key,
    rewinds,
)
from services.preprocess.settings import PreprocessSettings
from services.preprocess.stream import (
    RESET_KINDS,
    BatchResult,
    DeviceStream,
    EventKind,
    StreamConfig,
    StreamProcessor,
)
from shared.dsp import PreprocessingConfig
from shared.errors import PreprocessingError, SchemaError, StateDecodeError
from shared.messages import DeadLetter, RawPacket
from shared.messages.raw import RawRecord, check_placement, split_raw

logger = logging.getLogger(__name__)

#: A raw-topic event (bytes key and value).
Event = EventT[bytes]

SERVICE = "preprocess"
TABLE_NAME = "device-streams"
#: Exit status when a batch cannot be finished (EX_SOFTWARE): see the module docstring.
EXIT_UNFINISHED_BATCH = 70
#: Rounds of delivery of a batch's windows and dead letters before giving up on the process;
#: the waits between them double from 0.5 s: about 0.5 + 1 + 2 + 4 = 7.5 s in all (less
#: their jitter), enough for a broker leader election, short enough to restart well within
#: a session.
SEND_ATTEMPTS = 5
#: A device's state stays decoded in memory this long after its last packet (seconds).
IDLE_STATE_S = 60.0
SEND_BACKOFF = BackoffPolicy(initial_s=0.5, max_s=4.0, jitter=0.2)
#: Beyond the producer's own request timeout (after which aiokafka fails a record), how long
#: a batch waits for its changelog acknowledgements before giving up on the process: a
#: record that neither arrives nor fails means faust's buffer drain task is gone.
CHANGELOG_ACK_MARGIN_S = 10.0


def exit_unfinished_batch(error: BaseException) -> NoReturn:
    """End the process without acknowledging the batch in hand (see the module docstring)."""
    logger.critical(
        "batch could not be finished (%s: %s): exiting with status %d without acknowledging "
        "it; the restarted worker reads it again",
        type(error).__name__,
        error,
        EXIT_UNFINISHED_BATCH,
        exc_info=error,
    )
    hard_exit(EXIT_UNFINISHED_BATCH)


class KeyMismatchError(PreprocessingError):
    """A raw message's Kafka key is not its packet's device id, or a bundle was read from
    another partition than it was built for (state would land in the wrong partition)."""


def faust_options(settings: PreprocessSettings) -> dict[str, Any]:
    """Faust settings: the worker's own, then those the broker dictates (group timeouts per
    ``kafka_profile``, from the Kafka edge)."""
    return {
        # A new consumer group starts at the oldest retained packet: packets ingest accepted
        # before the first worker started are not skipped.
        "consumer_auto_offset_reset": "earliest",
        # A window is ~5 KB: faust's 16 KB default batch holds 3, and aiokafka waits for a
        # partition's batch in flight before starting the next, so a 500-packet batch
        # cost ~0.5 ms per window in round trips. 256 KiB (~50 windows) stays well under
        # the brokers' 1 MB message.max.bytes; the short linger lets batches fill. On the
        # local broker too: its wrong end offsets after multi-record batches, which faust's
        # table recovery trusts, are corrected where faust reads them (create_app). It
        # used to produce one record per batch instead, every window, state and position
        # its own round trip: from ~150 live devices the raw topic's lag grew while the
        # worker used 0.1 CPU.
        "producer_max_batch_size": producer_batch_bytes(settings, 256 * 1024),
        "producer_linger": producer_linger_ms(settings, 5) / 1000,
        **broker_faust_options(settings),
    }


def create_app(
    settings: PreprocessSettings,
    registry: CollectorRegistry,
    config: PreprocessingConfig | None = None,
) -> faust.App:
    """The faust app with its table and agent (run by faust's Worker, see cli.py)."""
    fetch_only_active_partitions()
    broker = profile(settings)
    if broker.faust_fetch_max_wait_ms is not None:
        shorten_fetch_wait(broker.faust_fetch_max_wait_ms)
    if broker.faust_fetched_highwaters:
        correct_highwaters()
    app = faust.App(
        settings.app_id,
        broker=faust_broker_urls(settings),
        broker_credentials=faust_credentials(settings),
        store=settings.store,
        # Per app id: two apps (or test runs) never share a RocksDB directory.
        datadir=str(settings.data_dir / settings.app_id),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        # Metrics come from prometheus_client on metrics_port; no faust web server.
        web_enabled=False,
        autodiscover=False,
        **faust_options(settings),
    )
    raw_topic, windows_topic, dlq_topic = (
        app.topic(
            name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )
        for name in (settings.topics.raw, settings.topics.windows, settings.topics.dlq)
    )
    table = app.Table(
        TABLE_NAME,
        key_type=bytes,
        value_type=bytes,
        partitions=settings.topic_partitions,
        options={"driver": "rocksdict"} if settings.store.startswith("rocksdb") else None,
    )  # bytes keys and values: faust picks the raw serializer
    metrics = create(registry)
    handler = BatchHandler(
        StreamProcessor(
            StreamConfig(
                preprocessing=config or PreprocessingConfig(),
                gap_threshold_s=settings.gap_threshold_s,
                reorder_max_packets=settings.reorder_max_packets,
            )
        ),
        table,
        windows_topic,
        dlq_topic,
        metrics,
        changelog=ChangelogAcks(table),
        changelog_timeout_s=app.conf.producer_request_timeout + CHANGELOG_ACK_MARGIN_S,
        checkpoint_interval_s=settings.checkpoint_interval_s,
    )

    # A rebalance: faust has waited for the agents' events in hand; the table is still this
    # worker's. Write what is not written yet, so the next owner (or this worker, after the
    # recovery) continues from here rather than from the last checkpoint.
    @app.on_partitions_revoked.connect
    async def checkpoint_before_revoking(sender: Any, /, *_: Any, signal: Any, **__: Any) -> None:
        try:
            await handler.checkpoint()
        except Exception:  # the recovery reads again from the positions written before
            logger.exception("checkpoint before a rebalance failed")
        handler.forget()

    # A clean stop, the same, before the tables close (faust's stop has no signal there).
    before_tables_stop(app, handler.checkpoint)

    # faust calls a table's recovery callbacks once its partitions are restored (after every
    # rebalance, the first included) and only then seeks the stream partitions to their
    # committed offsets: the one moment to move a committed offset back.
    @table.on_recover
    async def rewind() -> None:
        handler.forget()  # whatever the revocation did not write, the rewind reads again
        await rewind_to_restored_state(app.consumer, table, settings.topics.raw, metrics)

    @app.agent(raw_topic, name="preprocess")
    async def preprocess(stream: faust.StreamT[bytes]) -> None:
        assert isinstance(stream, faust.Stream)  # take_events is not on the StreamT interface
        async for events in stream.take_events(
            settings.batch_max_size, within=settings.batch_max_wait_s
        ):
            await handler.handle(events)

    return app


async def rewind_to_restored_state(
    consumer: Any, table: Any, raw_topic: str, metrics: PreprocessMetrics
) -> list[Rewind]:
    """After a recovery: where the group's committed offset of a raw partition is ahead of
    the position the restored table holds, commit that position, so the packets the restored
    state does not cover are read again instead of skipped (:mod:`.positions`); where nothing
    is committed yet, commit the position too, so faust's seeks back to the committed offset
    have somewhere to go. Returns the partitions whose committed offset was set.

    With the changelog acknowledged before every batch is (module docstring) no committed
    offset is ever ahead; that branch is there for whatever else restores less than was
    committed (a recovery cut short by a wrong high-water mark, an offset committed by another
    tool, a faust upgrade that changes its commit path)."""
    committed = await committed_offsets(consumer)
    raw = {tp.partition: offset for tp, offset in committed.items() if tp.topic == raw_topic}
    restored: dict[int, int] = {}
    for partition in raw:
        data = table.get(position_key(raw_topic, partition))
        if data is None:
            continue
        try:
            restored[partition] = decode_position(data)
        except StateDecodeError as exc:
            logger.error("raw partition %d: restored position unreadable: %s", partition, exc)
    moves = rewinds(raw, restored)
    if not moves:
        return []
    for move in moves:
        if move.committed is None:
            logger.info(
                "raw partition %d: nothing committed yet; committing the restored position %d",
                move.partition,
                move.restored,
            )
        else:
            logger.warning(
                "raw partition %d: committed offset %d is ahead of the restored device states "
                "(they cover up to %d): committing %d so %d messages are read again",
                move.partition,
                move.committed,
                move.restored,
                move.restored,
                move.packets,
            )
    tps = {tp.partition: tp for tp in committed if tp.topic == raw_topic}
    if await commit_offsets(consumer, {tps[m.partition]: m.restored for m in moves}):
        metrics.rewound.inc(sum(m.packets for m in moves))
    else:
        # Refused when another rebalance has started: its recovery calls this again.
        logger.warning("committing the restored positions was refused (rebalancing?)")
    return moves


class ChangelogWaiter(Protocol):
    """Awaits the broker's acknowledgement of the table's changelog records
    (:class:`~services.preprocess.faust_internals.ChangelogAcks`)."""

    async def wait(self, timeout_s: float) -> None: ...


class BatchHandler:
    """One micro-batch: decode, process, produce windows; every ``checkpoint_interval_s``,
    write the changed device states and the raw positions they cover to the table and wait
    until their changelog records are acknowledged."""

    def __init__(
        self,
        processor: StreamProcessor,
        table: Any,
        windows_topic: faust.TopicT,
        dlq_topic: faust.TopicT,
        metrics: PreprocessMetrics,
        changelog: ChangelogWaiter,
        changelog_timeout_s: float,
        on_fatal: Callable[[BaseException], NoReturn] = exit_unfinished_batch,
        checkpoint_interval_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``on_fatal`` is called with what prevented finishing a batch; it must not return
        (the default ends the process: tests pass one that raises).
        ``checkpoint_interval_s``: how often the device states and positions are written to
        the table (0: after every batch; see :meth:`checkpoint`)."""
        self.processor = processor
        self.config = processor.config.preprocessing
        self.table = table
        self.windows_name = windows_topic.get_topic_name()
        self.dlq_name = dlq_topic.get_topic_name()
        self.producer = TopicProducer(windows_topic, dlq_topic)
        self.metrics = metrics
        self.changelog = changelog
        self.changelog_timeout_s = changelog_timeout_s
        self.on_fatal = on_fatal
        self.checkpoint_interval_s = checkpoint_interval_s
        self.clock = clock
        #: The latest state of every device this worker processed lately, written to the
        #: table or not: a live device's state is decoded once, not once per packet.
        self._streams: dict[str, DeviceStream] = {}
        self._last_used: dict[str, float] = {}
        #: Devices whose latest state the table does not hold yet, with their last event
        #: (whose partition the state is written in).
        self._unwritten: dict[str, Event] = {}
        #: Raw partitions read since the last checkpoint, with their last event.
        self._uncovered: dict[int, Event] = {}
        #: Raw partitions this worker wrote a position of since it was assigned them.
        self._positioned: set[int] = set()
        self._last_checkpoint = clock()

    async def handle(self, events: Sequence[Event]) -> None:
        """Process one batch; on any failure not confined to single packets, end the process
        before faust can acknowledge the batch (see the module docstring)."""
        try:
            await self._handle(events)
        except Exception as exc:  # not CancelledError: a graceful stop is not a failure
            self.on_fatal(exc)

    async def _handle(self, events: Sequence[Event]) -> None:
        started = time.perf_counter()
        self.metrics.batch_size.observe(len(events))
        packets: list[RawPacket] = []
        sources: list[Event] = []
        #: A bundled packet's own frame, for its dead letter (None: the record is the packet).
        frames: list[bytes | None] = []
        failed: list[tuple[Event, BaseException, bytes | None]] = []
        for event in events:
            try:
                raw = split_raw(event.value)
            except Exception as exc:  # any decoder failure is this record's, not the batch's
                failed.append((event, exc, None))
                continue
            for frame in raw.frames:
                own = frame if raw.bundled else None
                try:
                    packet = _decode(event, raw, frame)
                except Exception as exc:  # and a packet's failure is its own, not its bundle's
                    failed.append((event, exc, own))
                    continue
                packets.append(packet)
                sources.append(event)
                frames.append(own)
        # Packets, not records (a bundle holds many): a record that did not decode counts one.
        self.metrics.packets.inc(len(packets) + len(failed))
        last_event = {p.device_id: e for p, e in zip(packets, sources, strict=True)}
        streams = {d: s for d, e in last_event.items() if (s := self._stream(d, e)) is not None}
        result, crashed = self._process(streams, packets)
        failed.extend((sources[i], exc, frames[i]) for i, exc in [*result.rejected, *crashed])
        # Windows first, delivery awaited; the states only after (see module docstring).
        await self._deliver(
            [(w.device_id.encode(), w.to_bytes()) for w in result.windows],
            [(event, self._dead_letter(event, exc, frame)) for event, exc, frame in failed],
        )
        now = self.clock()
        for device_id, stream in result.streams.items():
            self._streams[device_id] = stream
            self._last_used[device_id] = now
            self._unwritten[device_id] = last_event[device_id]
        # Failed packets count as covered: their dead letters were delivered above.
        self._uncovered.update((e.message.partition, e) for e in events)
        # A partition's first batch is checkpointed at once: faust commits its offsets when
        # this returns, and a committed offset with no position behind it could not be
        # moved back after a crash (its packets would be skipped, not read again).
        if (
            now - self._last_checkpoint >= self.checkpoint_interval_s
            or not self._positioned.issuperset(self._uncovered)
        ):
            await self.checkpoint()
        self._count(result)
        for change in result.events:
            if change.kind in RESET_KINDS:
                logger.info(
                    "device %s: %s at seq %d (%s)",
                    change.device_id,
                    change.kind,
                    change.seq,
                    change.detail,
                )
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    async def _deliver(
        self, windows: list[tuple[bytes, bytes]], letters: list[tuple[Event, DeadLetter]]
    ) -> None:
        """Produce the windows and dead letters through the Kafka edge's
        :func:`~services.common.kafka.send.send_acked` and await every acknowledgement: what
        is not acknowledged with a retriable error goes again (duplicate windows carry their
        ids), for at most ``SEND_ATTEMPTS`` rounds. Raises what still fails.

        A dead letter too large to produce goes without its source value (the fuzz suite's
        900 KB raw record made every attempt fail and the worker exit): that error is not
        retriable, and the same record would fail again after every restart."""
        sent = await send_acked(
            self.producer,
            [Record(self.windows_name, value, key) for key, value in windows],
            [letter for _, letter in letters],
            dlq_topic=self.dlq_name,
            backoff=SEND_BACKOFF,
            attempts=SEND_ATTEMPTS,
            what="windows",
        )
        for letter in sent.dead_letters:
            self.metrics.dead_letters.labels(error_type=letter.error_type).inc()

    def _process(
        self, streams: dict[str, DeviceStream], packets: list[RawPacket]
    ) -> tuple[BatchResult, list[tuple[int, BaseException]]]:
        """The batch in one call; if that fails unexpectedly (a bug, not bad input: that is
        in ``rejected``), packet by packet so only the culprit goes to the dead letters."""
        try:
            return self.processor.process_batch(streams, packets, time.time()), []
        except Exception:
            logger.exception("batch of %d packets failed; retrying packet by packet", len(packets))
        current = dict(streams)
        parts: list[BatchResult] = []
        crashed: list[tuple[int, BaseException]] = []
        for i, packet in enumerate(packets):
            try:
                part = self.processor.process_batch(current, [packet], time.time())
            except Exception as exc:
                crashed.append((i, exc))
                continue
            current.update(part.streams)
            parts.append(replace(part, rejected=[(i, e) for _, e in part.rejected]))
        return BatchResult.merge(parts), crashed

    async def checkpoint(self) -> None:
        """Write the state of every device changed since the last checkpoint, then each raw
        partition's position, to the table, and wait until the broker acknowledged their
        changelog records.

        The positions go after the states, so the changelog holds a position only behind the
        states it covers: each raw partition's next offset, written as by its last event
        (same table and changelog partition as its devices' states). Between checkpoints
        faust commits raw offsets ahead of the positions: a worker that dies then restores
        the last checkpoint and reads again from its positions (:func:`rewind_to_restored_state`),
        so at most ``checkpoint_interval_s`` of packets give their windows a second time
        (same ids, same data). Writing a live device's ~4.7 KB state once per interval
        instead of once per packet was a third of the pipeline's Kafka traffic."""
        if not self._unwritten and not self._uncovered:
            self._last_checkpoint = self.clock()
            return
        for device_id, event in self._unwritten.items():
            with in_partition_of(event):
                self.table[device_id.encode()] = self._streams[device_id].to_bytes(self.config)
        for partition, event in sorted(self._uncovered.items()):
            with in_partition_of(event):
                key = position_key(event.message.topic, partition)
                self.table[key] = encode_position(event.message.offset + 1)
        written = len(self._unwritten)
        self.metrics.checkpoints.inc()
        self.metrics.states_written.inc(written)
        self._positioned.update(self._uncovered)
        self._unwritten.clear()
        self._uncovered.clear()
        await self.changelog.wait(self.changelog_timeout_s)
        now = self.clock()
        self._last_checkpoint = now
        self._forget_idle(now)

    def forget(self) -> None:
        """Drop every state held in memory and what was not written yet: after a rebalance
        the table and the raw positions it restored are the truth (faust seeks every
        assigned partition back to its committed offset, which the recovery set to the
        positions, :func:`rewind_to_restored_state`)."""
        self._streams.clear()
        self._last_used.clear()
        self._unwritten.clear()
        self._uncovered.clear()
        self._positioned.clear()

    def _forget_idle(self, now: float) -> None:
        """Drop the in-memory states of devices not seen for a while (all written by now):
        a fleet's departed devices must not hold memory for ever."""
        idle_after = max(IDLE_STATE_S, 2 * self.checkpoint_interval_s)
        idle = [d for d, used in self._last_used.items() if now - used > idle_after]
        for device_id in idle:
            del self._streams[device_id], self._last_used[device_id]

    def _stream(self, device_id: str, event: Event) -> DeviceStream | None:
        """The device's latest state: in memory if it was processed lately, else the
        table's."""
        stream = self._streams.get(device_id)
        return stream if stream is not None else self._load(device_id, event)

    def _load(self, device_id: str, event: Event) -> DeviceStream | None:
        with in_partition_of(event):
            data = self.table.get(device_id.encode())
        if data is None:
            return None
        try:
            return DeviceStream.from_bytes(data, self.config)
        except StateDecodeError as exc:
            problem = exc
        # E.g. the filter state of an older preprocessing version after an upgrade: reset the
        # filters but continue the timeline (window ids stay unique) rather than stop.
        self.metrics.resets.labels(reason="bad_state").inc()
        try:
            stream = DeviceStream.continue_timeline(data, self.config)
        except StateDecodeError as exc:
            logger.error(
                "device %s: stored state unreadable (%s), starting over at index 0: window "
                "ids of this device may repeat",
                device_id,
                exc,
            )
            return None
        logger.warning("device %s: filters reset, stored state unusable: %s", device_id, problem)
        return stream

    def _dead_letter(
        self, event: Event, error: BaseException, frame: bytes | None = None
    ) -> DeadLetter:
        """The dead letter of ``event``, or of one packet ``frame`` of the bundle it is (the
        other packets of the bundle went on)."""
        message = event.message
        letter = dead_letter(
            SERVICE,
            error,
            message.topic,
            message.partition,
            message.offset,
            message.key,
            message.value if frame is None else frame,
        )
        logger.warning(
            "dead letter %s[%d]@%d: %s: %s",
            message.topic,
            message.partition,
            message.offset,
            letter.error_type,
            letter.reason,
        )
        return letter

    def _count(self, result: BatchResult) -> None:
        m = self.metrics
        m.samples.inc(result.samples)
        m.windows.inc(len(result.windows))
        m.duplicates.inc(result.count(EventKind.DUPLICATE))
        m.gaps.inc(result.count(EventKind.GAP))
        m.reordered.inc(result.count(EventKind.REORDERED))
        m.resampled_packets.inc(result.resampled_packets)
        for kind in RESET_KINDS:
            if n := result.count(kind):
                m.resets.labels(reason=kind.value).inc(n)


def _decode(event: Event, raw: RawRecord, frame: bytes) -> RawPacket:
    """Packet ``frame`` of ``event``'s record ``raw``, where its device's state lives: a
    single packet keyed by its device id, a bundle in the partition it was built for."""
    packet = RawPacket.from_bytes(frame)
    try:
        check_placement(raw, event.message.key, event.message.partition, packet.device_id)
    except SchemaError as exc:
        raise KeyMismatchError(str(exc)) from None
    return packet
