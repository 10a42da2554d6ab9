"""The alerting worker: predictions and raw topics → alert rules → store, alerts topic, webhooks.

It reads three co-partitioned topics in one consumer group: predictions (the activity
rules), the raw topic (device liveness: who sent a packet, and when ingest accepted it; only
the frame header is decoded) and ingest's heartbeats (each partition's pipeline clock: a
device's silence counts only while ingest could write, :mod:`services.alerting.liveness`).
Range assignment gives partition ``p`` of every topic to the same worker, so one worker owns
everything about a device.

Per batch: decode (bad predictions → DLQ, sent before their offsets can be committed) and
run the device monitors. A batch that opened or resolved an alert stores its transitions
(with history and webhook outbox rows) AND the snapshot of every device changed since it
was last stored, in one transaction, then publishes the alert events and wakes the webhook
dispatcher. Everything else waits for the next *checkpoint* (every ``commit_interval_s``,
before partitions are revoked, and on a clean stop): one transaction stores the snapshots
of the devices changed since the last one (each device once, however many of its records
came in) and the changed partition clocks, THEN the offsets read up to it are committed.
The stored state so never lags the committed offsets: a crash replays what came after the
last checkpoint, and every device's stored snapshot already counts whatever of it was
stored later (with a transition), so the replayed predictions and packets it covers are
ignored as duplicates and nothing opens twice. On assignment (start, restart, rebalance)
the worker restores the snapshots and open alerts of its partitions' devices before it
reads anything: a fall waiting for its 30 s confirmation, a device that fell silent, lying
and inactivity timers and cooldowns all continue.

Cost per record (issue 10; ``python -m benchmarks.bench_alerting``): the raw topic brings
~2.5 KB per packet that liveness reads only the header of, so the worker reads in bulk
(``fetch_wait_ms``, ``fetch_min_bytes``): a few fetches a second instead of one per 50 ms
on the local broker, and batches of hundreds of records. Per checkpoint, not per batch:
one store transaction (one executor hand-off) and one offset commit.

A tick task runs the wall-clock rules every ``tick_interval_s``: DEVICE_OFFLINE for devices
of partitions whose raw topic has been read to its end by a recent fetch (a worker catching
up, or cut off from the broker, must not see every device as silent), and the
pipeline-stall rule (:mod:`services.alerting.stall`) on the worker that owns partition 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web
from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    TopicPartition,
)
from aiokafka.coordinator.assignors.range import (  # type: ignore[import-untyped]
    RangePartitionAssignor,
)
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from aiokafka.structs import ConsumerRecord  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry

from services.alerting.api import create_app, operator_runner
from services.alerting.auth import Authenticator
from services.alerting.lifecycle import AlertNotFoundError, AlertTransition
from services.alerting.lifecycle import acknowledge as acknowledge_step
from services.alerting.lifecycle import resolve as resolve_step
from services.alerting.liveness import PartitionClock
from services.alerting.metrics import AlertingMetrics, create
from services.alerting.monitor import FleetMonitor, SnapshotError
from services.alerting.settings import AlertingSettings
from services.alerting.stall import PipelineMonitor
from services.alerting.store import (
    AlertStore,
    DeviceSnapshot,
    HistoryEntry,
    StoredDevice,
    StoreError,
    open_store,
)
from services.alerting.webhooks import WebhookDispatcher
from services.common.authlimit import AuthFailureLimit
from services.common.http_server import serve_on
from services.common.kafka.backoff import BackoffPolicy
from services.common.kafka.checkpoint import (
    Checkpoints,
    Rebalance,
    checkpoint_quietly,
    consume,
    restored_batches,
    retry_store,
)
from services.common.kafka.clients import aiokafka_consumer_kwargs, aiokafka_producer_kwargs
from services.common.kafka.dead_letters import dead_letter
from services.common.kafka.send import Record, send_acked
from services.common.operators import Identity, OperatorRecord
from services.common.probes import worker_readiness
from services.common.shutdown import stop_quietly
from services.common.worker_cli import RunUntilStopped
from services.console.fleet import FleetView
from services.console.lag import LagReader
from services.console.raw import RawReader
from services.console.web import Console, mount
from shared.errors import HarstreamError, SchemaError
from shared.messages import (
    PIPELINE_SCOPE,
    Alert,
    AlertState,
    AlertType,
    DeadLetter,
    Heartbeat,
    Prediction,
    RawPacket,
)
from shared.messages.codec import check_key
from shared.messages.raw import check_placement, split_raw

logger = logging.getLogger(__name__)

#: Waits while the alert store is away (0.5 s doubling to 30 s): the batch and its offsets
#: are held meanwhile, so nothing is judged from scratch and nothing is committed unstored.
STORE_BACKOFF = BackoffPolicy(initial_s=0.5, max_s=30.0, jitter=0.0)
#: Waits between retries of dead letters while Kafka is unavailable.
KAFKA_BACKOFF = BackoffPolicy(initial_s=0.5, max_s=30.0)
_RNG = random.Random()

T = TypeVar("T")
#: A partition whose last fetch is older than this (seconds) is not judged for silence: the
#: worker may be cut off from the broker (aiokafka fetches every fetch_max_wait at most).
FETCH_FRESH_S = 5.0

SERVICE = "alerting"
#: Stored alert events published per round; rounds repeat until the backlog is empty.
PUBLISH_PAGE = 500


def _limited(limit: str) -> None:
    # No metric of its own yet (services.alerting.metrics); a line per closed connection at
    # DEBUG, so a slowloris flood does not flood the log too.
    logger.debug("alert API: a connection was closed or refused (%s)", limit)


class AlertingService(RunUntilStopped):
    """One worker. ``await start()`` … ``await stop()``, or ``await run()`` until
    :meth:`request_stop`."""

    def __init__(
        self,
        settings: AlertingSettings,
        registry: CollectorRegistry | None = None,
        store: AlertStore | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics: AlertingMetrics = create(self.registry)
        self.fleet = FleetMonitor(settings.rules)
        # Counted when scraped: counting every batch cost O(devices) per batch.
        self.metrics.devices_tracked.set_function(lambda: self.fleet.devices_tracked)
        self.pipeline = PipelineMonitor(settings.rules)
        #: What the web console shows live (services.console), fed from what is consumed.
        self.console_view = FleetView()
        self.store = store
        self.port: int | None = None
        #: Set when the consumer loop died of an unexpected error (the CLI exits non-zero).
        self.failure: BaseException | None = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        #: Set while every assigned partition's devices are restored.
        self._restored = asyncio.Event()
        #: Partition of every device this worker tracks (the same in both topics).
        self._device_partition: dict[str, int] = {}
        #: Partitions this worker owns (of both topics), and the next offset it will handle
        #: per topic partition (to tell when it has read a partition to its end).
        self._partitions: set[int] = set()
        self._next_offset: dict[TopicPartition, int] = {}
        #: Offsets handled (their dead letters acknowledged) but not committed yet: the next
        #: checkpoint stores the state that covers them, then commits them.
        self._offsets = Checkpoints()
        #: Rule transitions the monitors took but the store does not hold yet (see _persist).
        self._unstored: list[AlertTransition] = []
        #: The worker owning partition 0 judges the pipeline-stall rule (one alert, not one
        #: per worker).
        self._pipeline_owner = False
        #: Pipeline clock of each owned partition, and those changed since the last store.
        self._clocks: dict[int, PartitionClock] = {}
        self._clocks_changed: set[int] = set()
        self._publish_backlog = False
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._runner: web.AppRunner | None = None
        self._auth: Authenticator | None = None
        #: Failed authentications per source address (see services.alerting.api).
        self.auth_limit = AuthFailureLimit(
            settings.auth_failure_rate_per_s,
            settings.auth_failure_burst,
            time.monotonic,
            settings.client_ip_header,
            settings.trusted_proxies,
        )
        self._dispatcher: WebhookDispatcher | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if self.store is None:
            self.store = await asyncio.to_thread(open_store, s.store_url, s.store_schema)
        await self._refresh_open_gauge()
        self._producer = AIOKafkaProducer(
            **aiokafka_producer_kwargs(s, client_id=f"harstream-{SERVICE}", linger_ms=5)
        )
        await self._producer.start()
        await self._publish_pending()
        self._dispatcher = WebhookDispatcher(
            self.store,
            self.metrics,
            timeout_s=s.webhook_timeout_s,
            give_up_after_s=s.webhook_give_up_after_s,
            backoff_base_s=s.webhook_backoff_base_s,
            backoff_max_s=s.webhook_backoff_max_s,
            concurrency=s.webhook_concurrency,
            poll_interval_s=s.webhook_poll_interval_s,
        )
        # Deliveries left over from a previous run go out while the consumer joins.
        self._tasks = [
            asyncio.create_task(self._dispatcher.run(self._stop), name="alerting-webhooks")
        ]
        self._auth = Authenticator(self.store)
        await self._auth.prepare()
        # HTTP first: /healthz answers during the group join (3-30 s), /readyz says not yet.
        # Header/body deadlines, a connection cap, problem documents for the parser's own
        # refusals, and an address over its failed-authentication budget refused at accept.
        app = create_app(self, self.auth_limit, s.max_body_bytes)
        if s.console.enabled:
            c = s.console
            raw = RawReader(s, self._device_partition, c.raw_window_s)
            lag = LagReader(s, c.lag_group_map, c.metrics_timeout_s)
            mount(app, Console(self, self.console_view, c, self.auth_limit, raw, lag))
        self._runner = operator_runner(app, s.listener_limits, self.auth_limit, _limited)
        self.port = await serve_on(self._runner, s.host, s.port)
        self._consumer = AIOKafkaConsumer(
            **aiokafka_consumer_kwargs(
                s,
                group_id=s.group_id,
                client_id=f"harstream-{SERVICE}",
                auto_offset_reset=s.auto_offset_reset,
                # Bulk reads on every broker profile: fetches are the largest per-read cost
                # (see the module docstring), and alerts tolerate the wait.
                fetch_max_wait_ms=s.fetch_wait_ms,
                fetch_min_bytes=s.fetch_min_bytes,
                max_poll_records=s.max_batch_records,
                # Partition p of predictions and of raw to the same worker (co-partitioned:
                # same keys, same partition counts); round robin would split a device's topics.
                partition_assignment_strategy=(RangePartitionAssignor,),
            )
        )
        self._consumer.subscribe(
            [s.topics.predictions, s.topics.raw, s.topics.heartbeats], listener=Rebalance(self)
        )
        await self._consumer.start()
        self._tasks += [
            asyncio.create_task(self._consume_loop(), name="alerting-consume"),
            asyncio.create_task(self._tick_loop(), name="alerting-tick"),
        ]
        logger.info(
            "alerting: consuming %s, %s and %s (group %s) on %s, alerts to %s, DLQ %s, HTTP on "
            "%s:%d, store %s, %d webhook URL(s)",
            s.topics.predictions,
            s.topics.raw,
            s.topics.heartbeats,
            s.group_id,
            s.kafka_bootstrap_servers,
            s.topics.alerts,
            s.topics.dlq,
            s.host,
            self.port,
            s.store_url.split("@")[-1],  # no credentials in logs
            len(s.webhook_url_list),
        )

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            done, pending = await asyncio.wait(
                self._tasks, timeout=self.settings.webhook_timeout_s + 5
            )
            for task in pending:
                task.cancel()
            # Cancelled tasks must be finished before the clients they use are stopped.
            await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    logger.error(
                        "alerting task %s failed", task.get_name(), exc_info=task.exception()
                    )
            self._tasks = []
        await self._checkpoint_quietly()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        # A broker that is gone makes the clients' stop raise: log it and go on closing the
        # rest; uncommitted predictions are read again.
        for client in (self._consumer, self._producer):
            if client is not None:
                await stop_quietly(type(client).__name__, client.stop)
        self._consumer = None
        self._producer = None
        if self.store is not None:
            await asyncio.to_thread(self.store.close)
        logger.info("alerting stopped")

    # -- consumer -------------------------------------------------------------------------

    async def _consume_loop(self) -> None:
        assert self._consumer is not None
        try:
            await consume(
                self._consumer,
                self._stop,
                self.settings.max_batch_records,
                self._handle,
                lambda: self._offsets.due(self.settings.commit_interval_s),
                self._checkpoint,
            )
        except Exception as exc:
            # A worker that no longer consumes must not look alive: stop, exit non-zero and
            # let the supervisor restart it (uncommitted messages are replayed).
            logger.exception("alerting consumer failed; stopping")
            self.failure = exc
            self._stop.set()

    async def _handle(self, batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> None:
        """Judge a batch. Its alert transitions are stored at once (with every changed
        snapshot) and published; everything else waits for the next checkpoint."""
        assert self._consumer is not None and self._producer is not None
        now = time.time()
        transitions: list[AlertTransition] = []
        dead: list[DeadLetter] = []
        offsets: dict[TopicPartition, int] = {}
        raw_topic = self.settings.topics.raw
        heartbeats_topic = self.settings.topics.heartbeats
        # aiokafka sets a new assignment, and may fetch for it, before it awaits our
        # on_partitions_assigned: nothing is judged before its devices are restored.
        await self._restored.wait()
        async with self._lock:
            for tp, records in restored_batches(self._consumer, batches, self._partitions):
                if tp.topic == raw_topic:
                    transitions.extend(self._traffic(tp, records, now))
                elif tp.topic == heartbeats_topic:
                    self._heartbeats(tp, records, now)
                else:
                    transitions.extend(self._predictions(tp, records, now, dead))
                offsets[tp] = records[-1].offset + 1
            if transitions:
                # Stored now, in one transaction with the snapshots that already count the
                # records behind them: a replay of those records finds duplicates and cannot
                # open or resolve anything twice.
                await self._persist(transitions, retry=True)
            self._next_offset.update(offsets)
        if dead:
            dead = await self._send_dead_letters(dead)
        for letter in dead:
            self.metrics.dead_letters.labels(letter.error_type).inc()
            logger.warning(
                "dead letter from %s[%d]@%d: %s",
                letter.source_topic,
                letter.source_partition,
                letter.source_offset,
                letter.reason,
            )
        # Committable now that their dead letters are acknowledged (a partition revoked
        # meanwhile is its new owner's to commit).
        self._offsets.handled(offsets, self._partitions)
        self._update_gauges()

    async def _checkpoint(self, retry: bool = True) -> None:
        """Store the changed snapshots and clocks, then commit the offsets they cover (the
        state stored never lags the committed offsets, so a crash replays only what the
        store does not hold yet, or what it already counts: duplicates)."""
        assert self._consumer is not None
        # The commit runs outside the lock: the alert API (acknowledge, resolve) must not
        # wait for Kafka.
        await self._offsets.checkpoint(
            self._consumer,
            self._lock,
            lambda: self._persist([], retry=retry),
            StoreError,
            lambda: self._partitions,
        )

    async def _checkpoint_quietly(self) -> None:
        """A checkpoint on a clean stop or before partitions are revoked, so the next reader
        replays nothing. Best effort: a store or broker that is gone only means a longer
        replay."""
        if self._consumer is None or self.store is None:
            return
        await checkpoint_quietly(lambda: self._checkpoint(retry=False), StoreError)

    def _predictions(
        self,
        tp: TopicPartition,
        records: list[ConsumerRecord[Any, Any]],
        now: float,
        dead: list[DeadLetter],
    ) -> list[AlertTransition]:
        transitions: list[AlertTransition] = []
        for record in records:
            key, value = record.key, record.value
            try:
                prediction = Prediction.from_bytes(value)
                # Keyed otherwise, it sits in another device's partition: its owner would
                # judge it without the device's state (and leave it when a rebalance moves it).
                check_key(key, prediction.device_id)
                steps = self.fleet.observe(prediction, now)
            except Exception as exc:  # bad input (or a bug) never stops the worker
                if not isinstance(exc, HarstreamError):
                    logger.exception("unexpected error on %s@%d", tp, record.offset)
                dead.append(
                    dead_letter(SERVICE, exc, tp.topic, tp.partition, record.offset, key, value)
                )
                continue
            # Counted together, so the two counters never disagree for a scrape.
            self.metrics.predictions.inc()
            self.metrics.duplicates.inc(self.fleet.take_duplicates())
            self.pipeline.predicted(tp.partition, prediction.ingested_at)
            self.console_view.prediction(prediction, now)
            self._device_partition[prediction.device_id] = tp.partition
            transitions.extend(steps)
        return transitions

    def _traffic(
        self,
        tp: TopicPartition,
        records: list[ConsumerRecord[Any, Any]],
        now: float,
    ) -> list[AlertTransition]:
        """Device liveness from raw packets. A record that is not a raw frame keyed by its
        own device id is skipped here (the preprocess worker dead-letters it) and counted."""
        transitions: list[AlertTransition] = []
        for record in records:
            try:
                raw = split_raw(record.value)
            except SchemaError:
                self.metrics.raw_skipped.inc()
                continue
            for frame in raw.frames:
                try:
                    header = RawPacket.peek(frame)
                    check_placement(raw, record.key, tp.partition, header.device_id)
                except SchemaError:
                    self.metrics.raw_skipped.inc()
                    continue
                # A clock ahead of ours must not keep a device "online" into the future.
                at = min(header.received_at, now)
                transitions.extend(self.fleet.traffic(header.device_id, at, now))
                self.pipeline.traffic(tp.partition, at)
                self.console_view.traffic(header.device_id, at)
                self._device_partition[header.device_id] = tp.partition
        return transitions

    def _heartbeats(
        self, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]], now: float
    ) -> None:
        clock = self._clocks.setdefault(
            tp.partition, PartitionClock(self.settings.rules.heartbeat_max_gap_s)
        )
        for record in records:
            try:
                beat = Heartbeat.from_bytes(record.value)
            except SchemaError:
                self.metrics.heartbeats_skipped.inc()
                continue
            clock.heartbeat(min(beat.sent_at, now))
        self._clocks_changed.add(tp.partition)

    async def _send_dead_letters(self, letters: list[DeadLetter]) -> list[DeadLetter]:
        """Send and await every acknowledgement; returns the letters as written. Never
        dropped: retried while Kafka is unavailable (a stop abandons the batch, uncommitted);
        one too large for the producer or broker goes without its source value (retrying it
        could only stall the partition)."""
        assert self._producer is not None
        sent = await send_acked(
            self._producer,
            dead_letters=letters,
            dlq_topic=self.settings.topics.dlq,
            backoff=KAFKA_BACKOFF,
            stop=self._stop,
            what="dead letters",
        )
        return sent.dead_letters

    async def _tick_loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.tick_interval_s)
            if self._stop.is_set():
                return
            try:
                await self._tick()
            except KafkaError as exc:  # e.g. a position request during a rebalance
                logger.warning("tick skipped: %s", exc)
            except Exception:
                # The offline and stall rules must keep running: log and try next tick.
                if self._stop.is_set():
                    return
                logger.exception("tick failed; retrying at the next one")

    async def _tick(self) -> None:
        async with self._lock:
            now = time.time()
            raw_read, both_read = await self._partitions_read_to_end(now)
            by_partition: dict[int, list[str]] = {}
            for device, partition in self._device_partition.items():
                if partition in raw_read:
                    by_partition.setdefault(partition, []).append(device)
            steps = []
            for partition, devices in by_partition.items():
                steps += self.fleet.tick(now, devices, self._clocks.get(partition))
            if self._pipeline_owner:
                steps += self.pipeline.judge(now, both_read)
            if steps:
                await self._persist(steps, retry=True)
            if self._publish_backlog:
                await self._publish_pending()
        self._update_gauges()

    async def _partitions_read_to_end(self, now: float) -> tuple[set[int], set[int]]:
        """Owned partitions whose raw topic, and those whose raw AND predictions topics, this
        worker has read up to the end, as of a fetch at most FETCH_FRESH_S old."""
        assert self._consumer is not None
        topics = self.settings.topics
        read: dict[str, set[int]] = {topics.raw: set(), topics.predictions: set()}
        for tp in self._consumer.assignment():
            if tp.topic not in read:
                continue
            end = self._consumer.highwater(tp)
            polled_ms = self._consumer.last_poll_timestamp(tp)
            if end is None or polled_ms is None:  # nothing fetched yet
                continue
            if now - polled_ms / 1000 > FETCH_FRESH_S:  # cut off from the broker?
                continue
            position = self._next_offset.get(tp)
            if position is None:
                position = await self._consumer.position(tp)
            if position >= end:
                read[tp.topic].add(tp.partition)
        return read[topics.raw], read[topics.raw] & read[topics.predictions]

    def _update_gauges(self) -> None:
        self.metrics.falls_cancelled.inc(self.fleet.take_falls_cancelled())
        self.metrics.pipeline_delay.set(
            max((self.pipeline.delay_s(p) for p in self._partitions), default=0.0)
        )

    # -- store, alerts topic, webhooks ----------------------------------------------------

    async def _persist(
        self, transitions: Sequence[AlertTransition], retry: bool, applied: bool = True
    ) -> None:
        """Store the transitions with the snapshot of every device changed since it was
        last stored and the changed partition clocks, then publish, then notify. Callers
        hold the lock (nothing changes while the store writes, and events of one alert
        reach the topic and the webhooks in order).

        ``applied``: the monitors already took the transitions (the rules' own; an
        operator's are planned, and applied only once stored). Until they are stored, every
        later store carries them: a snapshot that counts an alert's records must never be
        stored without the alert (a stop that cancelled the retry loop, then a last
        checkpoint, would otherwise lose the alert)."""
        transitions = [*self._unstored, *transitions]
        if applied:
            self._unstored = transitions
        changed = self.fleet.changed
        snapshots = [
            DeviceSnapshot(device_id, self._device_partition[device_id], state)
            for device_id, state in self.fleet.snapshots(changed).items()
            if device_id in self._device_partition
        ]
        clocks = {p: self._clocks[p].to_dict() for p in self._clocks_changed if p in self._clocks}
        if not transitions and not snapshots and not clocks:
            return
        assert self.store is not None
        delays = STORE_BACKOFF.delays(_RNG)
        while True:
            try:
                await asyncio.to_thread(
                    self.store.record,
                    transitions,
                    self.settings.webhook_url_list,
                    snapshots,
                    clocks,
                )
                self._clocks_changed.clear()
                self.fleet.stored(changed)
                self._unstored = []
                break
            except StoreError as exc:
                if not retry or self._stop.is_set():
                    raise
                # Hold the batch (and its offsets) until the store is back: backpressure.
                delay = next(delays)
                logger.error("alert store unavailable, retrying in %.1f s: %s", delay, exc)
                await asyncio.sleep(delay)
        if not transitions:
            return
        for step in transitions:
            self.console_view.transition(step.alert, step.event.value)
            self.metrics.alerts.labels(step.alert.type.value, step.alert.state.value).inc()
            logger.info(
                "alert %s %s %s %s: %s",
                step.alert.alert_id,
                step.event.value,
                step.alert.type.value,
                step.alert.device_id,
                step.alert.reason,
            )
        await self._publish_pending()
        if self._dispatcher is not None and self.settings.webhook_url_list:
            self._dispatcher.wake()
        await self._refresh_open_gauge()

    async def _publish_pending(self) -> None:
        """Publish stored events not yet on the alerts topic (also those of a previous run),
        page by page until none is left."""
        assert self.store is not None and self._producer is not None
        try:
            while True:
                pending = await asyncio.to_thread(self.store.unpublished, PUBLISH_PAGE)
                if pending:
                    topic = self.settings.topics.alerts
                    # One attempt: what is not acknowledged stays unpublished in the store
                    # and the tick task tries again.
                    await send_acked(
                        self._producer,
                        [Record(topic, a.to_bytes(), a.device_id.encode()) for _, a in pending],
                        backoff=KAFKA_BACKOFF,
                        attempts=1,
                        what="alert events",
                    )
                    await asyncio.to_thread(self.store.mark_published, [i for i, _ in pending])
                    self.metrics.events_published.inc(len(pending))
                if len(pending) < PUBLISH_PAGE:  # a short page: the backlog is empty
                    self._publish_backlog = False
                    return
        except (KafkaError, StoreError) as exc:
            # The events stay unpublished in the store; the tick task tries again.
            logger.warning("cannot publish alert events yet: %s", exc)
            self._publish_backlog = True

    async def _refresh_open_gauge(self) -> None:
        assert self.store is not None
        try:
            counts = await asyncio.to_thread(self.store.count_active)
        except StoreError as exc:
            logger.warning("cannot count open alerts: %s", exc)
            return
        for kind, n in counts.items():
            self.metrics.alerts_open.labels(kind.value).set(n)

    # -- rebalancing ----------------------------------------------------------------------

    async def partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Stop tracking the devices of ``revoked`` partitions, after a checkpoint (which
        waits for the batch in hand): what was read of them is stored, and its offsets
        committed, before the next owner restores them."""
        self._restored.clear()
        # Best effort: without it the next owner replays from the last checkpoint (correct,
        # only longer).
        await self._checkpoint_quietly()
        async with self._lock:
            partitions = {tp.partition for tp in revoked}
            gone = [d for d, p in self._device_partition.items() if p in partitions]
            self.fleet.forget(gone)
            self.console_view.forget(gone)
            for device in gone:
                del self._device_partition[device]
            self.pipeline.revoked(partitions)
            self._partitions -= partitions
            for partition in partitions:
                self._clocks.pop(partition, None)
                self._clocks_changed.discard(partition)
            for tp in revoked:
                self._next_offset.pop(tp, None)
            self._offsets.revoked(revoked)
        self.metrics.partitions_assigned.set(len(self._partitions))
        if gone:
            logger.info(
                "partitions %s revoked: stopped tracking %d device(s)",
                sorted(partitions),
                len(gone),
            )

    async def partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Restore the snapshots and open alerts of the assigned partitions' devices before
        anything of them is read (aiokafka fetches only after this returns)."""
        topics = self.settings.topics
        by_topic = {
            topic: {tp.partition for tp in assigned if tp.topic == topic}
            for topic in (topics.predictions, topics.raw, topics.heartbeats)
        }
        if len({frozenset(p) for p in by_topic.values()}) > 1:
            logger.error(
                "partitions assigned per topic differ (%s): are the topics' partition counts "
                "equal? DEVICE_OFFLINE and rules may be judged by different workers",
                {t: sorted(p) for t, p in by_topic.items()},
            )
        partitions = set().union(*by_topic.values())
        stored = await self._load_devices(partitions)
        store = self.store
        assert store is not None
        clocks = await self._retry_store(
            f"restore the clocks of partitions {sorted(partitions)}",
            lambda: store.clocks(partitions),
        )
        pipeline_alerts = []
        owner = 0 in by_topic[topics.predictions]
        if owner:
            pipeline_alerts = await self._retry_store(
                "load the pipeline alert", lambda: self._active_of(PIPELINE_SCOPE)
            )
        unusable = 0
        async with self._lock:
            for device in stored:
                self._device_partition[device.device_id] = device.partition
                try:
                    self.fleet.restore(device.device_id, device.state, device.alerts)
                except SnapshotError as exc:
                    unusable += 1
                    logger.warning("%s; continuing from its open alerts", exc)
                self.console_view.restore(
                    device.device_id,
                    self.fleet.monitor(device.device_id).last_traffic_wall,
                    device.alerts,
                )
            self._partitions |= partitions
            self._pipeline_owner = owner
            gap = self.settings.rules.heartbeat_max_gap_s
            for partition in partitions:
                try:
                    self._clocks[partition] = PartitionClock.from_dict(clocks[partition], gap)
                except (KeyError, TypeError, ValueError):  # never stored, or unusable
                    self._clocks[partition] = PartitionClock(gap)
            self.pipeline.assigned(partitions, time.time())
            for alert in pipeline_alerts:
                self.pipeline.load(alert)
        self.metrics.partitions_assigned.set(len(self._partitions))
        self._restored.set()
        logger.info(
            "partitions %s assigned: restored %d device(s) (%d unusable snapshot(s)), "
            "%d open alert(s)%s",
            sorted(partitions),
            len(stored),
            unusable,
            sum(len(d.alerts) for d in stored),
            "; judging the pipeline-stall rule" if owner else "",
        )

    async def _load_devices(self, partitions: set[int]) -> list[StoredDevice]:
        store = self.store
        assert store is not None
        return await self._retry_store(
            f"restore the devices of partitions {sorted(partitions)}",
            lambda: store.devices(partitions),
        )

    def _active_of(self, device_id: str) -> list[Alert]:
        assert self.store is not None
        return [
            a
            for state in (AlertState.OPEN, AlertState.ACKNOWLEDGED)
            for a in self.store.list_alerts(state, None, device_id, 100)
        ]

    async def _retry_store(self, what: str, call: Callable[[], T]) -> T:
        """``call()`` in a thread until the store answers: a partition's devices must never
        be judged from scratch because the store was briefly away (that would forget a fall
        waiting for its confirmation). Raises only when the worker is stopping."""
        return await retry_store(what, call, STORE_BACKOFF, self._stop, StoreError, _RNG)

    # -- API backend ----------------------------------------------------------------------

    async def list_alerts(
        self,
        state: AlertState | None,
        kind: AlertType | None,
        device_id: str | None,
        limit: int,
    ) -> list[Alert]:
        assert self.store is not None
        return await asyncio.to_thread(self.store.list_alerts, state, kind, device_id, limit)

    async def get_alert(self, alert_id: str) -> Alert | None:
        assert self.store is not None
        return await asyncio.to_thread(self.store.get, alert_id)

    async def history(self, alert_id: str) -> list[HistoryEntry]:
        assert self.store is not None
        return await asyncio.to_thread(self.store.history, alert_id)

    async def authenticate(
        self, authorization: str | None, before_hashing: Callable[[], None]
    ) -> Identity | None:
        assert self._auth is not None
        return await self._auth.authenticate(authorization, before_hashing)

    async def operator_record(self, name: str) -> OperatorRecord | None:
        """The stored operator ``name`` (the console checks its sessions' operators)."""
        assert self.store is not None
        return await asyncio.to_thread(self.store.operator, name)

    async def acknowledge(self, alert_id: str, operator: str, note: str | None) -> Alert:
        """``operator`` acknowledges (an authenticated operator's name: it is recorded in the
        alert and, with ``note``, in its history)."""
        async with self._lock:
            alert = await self._stored(alert_id)
            now = time.time()
            if alert.device_id == PIPELINE_SCOPE:
                step = acknowledge_step(self._current_pipeline(alert), operator, now)
            else:
                step = self.fleet.plan_acknowledge(alert, operator, now)
            if step is None:
                return alert
            step = step._replace(operator=operator, note=note)
            await self._persist([step], retry=False, applied=False)
            self._apply(step)
            return step.alert

    async def resolve(self, alert_id: str, operator: str, note: str | None) -> Alert:
        async with self._lock:
            alert = await self._stored(alert_id)
            now = time.time()
            if alert.device_id == PIPELINE_SCOPE:
                current = self._current_pipeline(alert)
                step = resolve_step(current, operator, now, f"resolved by {operator}")
            else:
                step = self.fleet.plan_resolve(alert, operator, now)
            step = step._replace(operator=operator, note=note)
            await self._persist([step], retry=False, applied=False)
            self._apply(step)
            # The device's cooldown started: store its snapshot too (best effort: the next
            # checkpoint stores it anyway).
            try:
                await self._persist([], retry=False)
            except StoreError as exc:
                logger.warning("snapshot of %s not stored after resolve: %s", alert.device_id, exc)
            return step.alert

    def _current_pipeline(self, stored: Alert) -> Alert:
        active = self.pipeline.active
        return active if active is not None and active.alert_id == stored.alert_id else stored

    def _apply(self, step: AlertTransition) -> None:
        if step.alert.device_id == PIPELINE_SCOPE:
            self.pipeline.apply(step)
        else:
            self.fleet.apply(step)

    async def _stored(self, alert_id: str) -> Alert:
        assert self.store is not None
        alert = await asyncio.to_thread(self.store.get, alert_id)
        if alert is None:
            raise AlertNotFoundError(alert_id)
        return alert

    async def readiness(self) -> dict[str, bool]:
        ping = self.store.ping if self.store is not None else None
        return await worker_readiness(self._consumer, ping, StoreError, self._stop)
