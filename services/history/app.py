"""The history worker: predictions topic → activity segments → store; and the history API.

Delivery: at least once in, exactly once counted. Per batch, each prediction is decoded
(a record that is not a prediction keyed by its own device goes to the dead-letter topic,
acknowledged before its offset can be committed) and given to the pure
:class:`~services.history.segments.SegmentBuilder`, which ignores duplicates and replays.
Every ``commit_interval_s`` (and before partitions are revoked, and on a clean stop) a
*checkpoint* stores the segments and device states changed since the last one in ONE
transaction, THEN commits the offsets read up to it (the alerting worker's pattern,
:mod:`services.alerting.app`). The stored state so never lags the committed offsets: after
a crash the replay starts at the last commit, and every replayed prediction the store
already counts is recognised by the restored device state (its window is buffered, or
before the watermark) and not counted again. On assignment the worker restores the states
of its partitions' devices before it reads anything of them.

A tick task counts the waiting windows of devices idle for ``idle_flush_s`` (their last
seconds) and, every ``retention_interval_s``, deletes segments older than
``retention_days``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from datetime import date
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from aiohttp import web
from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    TopicPartition,
)
from aiokafka.structs import ConsumerRecord  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry

from services.alerting.api import operator_runner
from services.alerting.auth import Authenticator
from services.alerting.store import AlertStore
from services.alerting.store import StoreError as OperatorStoreError
from services.alerting.store import open_store as open_operator_store
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
from services.common.kafka.send import send_acked
from services.common.operators import Identity
from services.common.probes import worker_readiness
from services.common.shutdown import stop_quietly
from services.common.worker_cli import RunUntilStopped
from services.history.api import create_app, iso
from services.history.metrics import HistoryMetrics, create
from services.history.segments import DeviceState, Segment, SegmentBuilder, window_of
from services.history.settings import HistorySettings
from services.history.store import HistoryStore, StoredDevice, StoreError, open_store
from services.history.summary import DailySummary, day_bounds, local_day, summarize
from services.ingest.errors import RegistryError
from services.ingest.registry import DeviceRecord, DeviceRegistry, open_registry
from shared.errors import HarstreamError
from shared.messages import AlertState, DeadLetter, Prediction
from shared.messages.codec import check_key

logger = logging.getLogger(__name__)

SERVICE = "history"
#: At most this many unresolved alerts per state in a device document.
OPEN_ALERTS_LIMIT = 50
#: Waits while the store is away (0.5 s doubling to 30 s): the batch and its offsets wait.
STORE_BACKOFF = BackoffPolicy(initial_s=0.5, max_s=30.0, jitter=0.0)
KAFKA_BACKOFF = BackoffPolicy(initial_s=0.5, max_s=30.0)
_RNG = random.Random()
T = TypeVar("T")
UTC_ZONE = ZoneInfo("UTC")


class HistoryService(RunUntilStopped):
    """One worker. ``await start()`` … ``await stop()``, or ``await run()`` until
    :meth:`request_stop`."""

    def __init__(
        self,
        settings: HistorySettings,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics: HistoryMetrics = create(self.registry)
        self.builder = SegmentBuilder(settings.segment_config)
        self.metrics.devices_tracked.set_function(lambda: len(self.builder.devices))
        self.clock = clock
        self.store: HistoryStore | None = None
        self.operators: AlertStore | None = None
        self.devices_registry: DeviceRegistry | None = None
        self.port: int | None = None
        #: Set when the consumer loop died of an unexpected error (the CLI exits non-zero).
        self.failure: BaseException | None = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        self._restored = asyncio.Event()
        self._partitions: set[int] = set()
        self._device_partition: dict[str, int] = {}
        #: Wall-clock time each device's last prediction was read (idle flush).
        self._last_read: dict[str, float] = {}
        #: Offsets handled but not committed yet, and when the last checkpoint was.
        self._offsets = Checkpoints()
        self._last_retention = float("-inf")
        #: Time zones read from the registry: device → (zone, when read, monotonic).
        self._zones: dict[str, tuple[ZoneInfo, float]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._runner: web.AppRunner | None = None
        self._auth: Authenticator | None = None
        self.auth_limit = AuthFailureLimit(
            settings.auth_failure_rate_per_s,
            settings.auth_failure_burst,
            time.monotonic,
            settings.client_ip_header,
            settings.trusted_proxies,
        )
        self._tasks: list[asyncio.Task[None]] = []

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self.store = await asyncio.to_thread(open_store, s.store_url, s.store_schema)
        self.operators = await asyncio.to_thread(
            open_operator_store, s.operators_store_url, s.operators_store_schema
        )
        self.devices_registry = open_registry(s.registry_url, s.registry_table)
        self._auth = Authenticator(self.operators)
        await self._auth.prepare()
        self._producer = AIOKafkaProducer(
            **aiokafka_producer_kwargs(s, client_id=f"harstream-{SERVICE}", linger_ms=5)
        )
        await self._producer.start()
        app = create_app(self, self.auth_limit, s.max_body_bytes, s.max_range_days, self.clock)
        self._runner = operator_runner(app, s.listener_limits, self.auth_limit)
        self.port = await serve_on(self._runner, s.host, s.port)
        self._consumer = AIOKafkaConsumer(
            **aiokafka_consumer_kwargs(
                s,
                group_id=s.group_id,
                client_id=f"harstream-{SERVICE}",
                auto_offset_reset=s.auto_offset_reset,
                max_poll_records=s.max_batch_records,
            )
        )
        self._consumer.subscribe([s.topics.predictions], listener=Rebalance(self))
        await self._consumer.start()
        self._tasks = [
            asyncio.create_task(self._consume_loop(), name="history-consume"),
            asyncio.create_task(self._tick_loop(), name="history-tick"),
        ]
        logger.info(
            "history: consuming %s (group %s) on %s, DLQ %s, HTTP on %s:%d, store %s",
            s.topics.predictions,
            s.group_id,
            s.kafka_bootstrap_servers,
            s.topics.dlq,
            s.host,
            self.port,
            s.store_url.split("@")[-1],  # no credentials in logs
        )

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=10)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self._tasks = []
        await self._checkpoint_quietly()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for client in (self._consumer, self._producer):
            if client is not None:
                await stop_quietly(type(client).__name__, client.stop)
        self._consumer = None
        self._producer = None
        closers = [
            c.close
            for c in (self.store, self.devices_registry)
            if c is not None  # the operator store is an AlertStore: closable too
        ]
        if self.operators is not None:
            closers.append(self.operators.close)
        for close in closers:
            await asyncio.to_thread(close)
        logger.info("history stopped")

    # -- consumer -------------------------------------------------------------------------

    async def _consume_loop(self) -> None:
        assert self._consumer is not None
        try:
            await consume(
                self._consumer,
                self._stop,
                self.settings.max_batch_records,
                self._handle,
                # Also without new offsets: an idle device's flushed windows must be stored.
                lambda: self._offsets.due(
                    self.settings.commit_interval_s, changed=self.builder.has_changes
                ),
                self._checkpoint,
            )
        except Exception as exc:
            # A worker that no longer consumes must not look alive: stop and exit non-zero
            # (the supervisor restarts it; uncommitted predictions are replayed).
            logger.exception("history consumer failed; stopping")
            self.failure = exc
            self._stop.set()

    async def _handle(self, batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> None:
        assert self._consumer is not None
        await self._restored.wait()
        dead: list[DeadLetter] = []
        offsets: dict[TopicPartition, int] = {}
        now = time.time()
        async with self._lock:
            for tp, records in restored_batches(self._consumer, batches, self._partitions):
                for record in records:
                    self._one(tp, record, now, dead)
                offsets[tp] = records[-1].offset + 1
        if dead:
            assert self._producer is not None
            await send_acked(
                self._producer,
                dead_letters=dead,
                dlq_topic=self.settings.topics.dlq,
                backoff=KAFKA_BACKOFF,
                stop=self._stop,
                what="dead letters",
            )
            for letter in dead:
                logger.warning(
                    "dead letter from %s[%d]@%d: %s",
                    letter.source_topic,
                    letter.source_partition,
                    letter.source_offset,
                    letter.reason,
                )
        self._offsets.handled(offsets, self._partitions)

    def _one(
        self,
        tp: TopicPartition,
        record: ConsumerRecord[Any, Any],
        now: float,
        dead: list[DeadLetter],
    ) -> None:
        try:
            prediction = Prediction.from_bytes(record.value)
            # Keyed otherwise it sits in another device's partition, where its state is not.
            check_key(record.key, prediction.device_id)
            window = window_of(prediction)
            if not window.end > window.start:
                raise HarstreamError(
                    f"window {prediction.window_id!r} ends before it starts "
                    f"({prediction.start_time} to {prediction.end_time})"
                )
            if window.end > now + self.settings.max_ahead_s:
                raise HarstreamError(
                    f"window {prediction.window_id!r} ends at {iso(prediction.end_time)}, "
                    f"more than {self.settings.max_ahead_s:g} s ahead of the clock"
                )
        except Exception as exc:  # bad input (or a bug) never stops the worker
            if not isinstance(exc, HarstreamError):
                logger.exception("unexpected error on %s@%d", tp, record.offset)
            dead.append(
                dead_letter(
                    SERVICE, exc, tp.topic, tp.partition, record.offset, record.key, record.value
                )
            )
            self.metrics.predictions.labels("dead_letter").inc()
            return
        outcome = self.builder.observe(prediction.device_id, window)
        self.metrics.predictions.labels(outcome.value).inc()
        self._device_partition[prediction.device_id] = tp.partition
        self._last_read[prediction.device_id] = now

    async def _checkpoint(self, retry: bool = True) -> None:
        """Store what changed, then commit the offsets it covers."""
        assert self._consumer is not None
        await self._offsets.checkpoint(
            self._consumer,
            self._lock,
            lambda: self._persist(retry),
            StoreError,
            lambda: self._partitions,
        )

    async def _persist(self, retry: bool) -> None:
        """Store the changed segments and device states (callers hold the lock)."""
        if not self.builder.has_changes:
            return
        assert self.store is not None
        segments, states = self.builder.take_changes()
        rows = {
            d: (self._device_partition[d], state)
            for d, state in states.items()
            if d in self._device_partition
        }
        store = self.store
        delays = STORE_BACKOFF.delays(_RNG)
        while True:
            started = time.perf_counter()
            try:
                await asyncio.to_thread(store.save, segments, rows, time.time())
                break
            except StoreError as exc:
                if not retry or self._stop.is_set():
                    self.builder.untake(segments, states)
                    raise
                delay = next(delays)
                logger.error("history store unavailable, retrying in %.1f s: %s", delay, exc)
                await asyncio.sleep(delay)
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)
        self.metrics.segments_stored.inc(len(segments))

    async def _checkpoint_quietly(self) -> None:
        if self._consumer is None or self.store is None:
            return
        await checkpoint_quietly(lambda: self._checkpoint(retry=False), StoreError)

    # -- tick: idle devices, retention ----------------------------------------------------

    async def _tick_loop(self) -> None:
        interval = min(1.0, self.settings.idle_flush_s / 2)
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)
            if self._stop.is_set():
                return
            try:
                await self._tick()
            except Exception:
                if self._stop.is_set():
                    return
                logger.exception("history tick failed; retrying at the next one")

    async def _tick(self) -> None:
        now = time.time()
        async with self._lock:
            for device, read_at in list(self._last_read.items()):
                if now - read_at >= self.settings.idle_flush_s:
                    self.builder.flush(device)
                    del self._last_read[device]
        if now - self._last_retention >= self.settings.retention_interval_s:
            self._last_retention = now
            await self.delete_expired(now)

    async def delete_expired(self, now: float) -> int:
        """Delete segments that ended more than ``retention_days`` before ``now``."""
        assert self.store is not None
        cutoff = now - self.settings.retention_days * 86_400.0
        try:
            deleted = await asyncio.to_thread(self.store.delete_before, cutoff)
        except StoreError as exc:
            logger.warning("retention skipped: %s", exc)
            return 0
        self.metrics.segments_deleted.inc(deleted)
        if deleted:
            logger.info(
                "retention: deleted %d segment(s) that ended before %s", deleted, iso(cutoff)
            )
        return deleted

    # -- rebalancing ----------------------------------------------------------------------

    async def partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._restored.clear()
        await self._checkpoint_quietly()
        async with self._lock:
            partitions = {tp.partition for tp in revoked}
            gone = [d for d, p in self._device_partition.items() if p in partitions]
            self.builder.forget(gone)
            for device in gone:
                del self._device_partition[device]
                self._last_read.pop(device, None)
            self._partitions -= partitions
            self._offsets.revoked(revoked)
        self.metrics.partitions_assigned.set(len(self._partitions))

    async def partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Restore the assigned partitions' device states before anything is read."""
        partitions = {tp.partition for tp in assigned}
        store = self.store
        assert store is not None
        stored = await self._retry_store(
            f"restore the devices of partitions {sorted(partitions)}",
            lambda: store.device_states(partitions),
        )
        unusable = 0
        async with self._lock:
            for device in stored:
                try:
                    state = DeviceState.from_dict(device.state)
                except (KeyError, TypeError, ValueError) as exc:
                    # Counting restarts from nothing for this device: what was stored stays.
                    unusable += 1
                    logger.warning("state of %s unusable (%s); starting afresh", device, exc)
                    continue
                self.builder.restore(device.device_id, state)
                self._device_partition[device.device_id] = device.partition
                # Its buffered windows are flushed if nothing more comes.
                self._last_read[device.device_id] = time.time()
            self._partitions |= partitions
        self.metrics.partitions_assigned.set(len(self._partitions))
        self._restored.set()
        logger.info(
            "partitions %s assigned: restored %d device(s) (%d unusable)",
            sorted(partitions),
            len(stored) - unusable,
            unusable,
        )

    async def _retry_store(self, what: str, call: Callable[[], T]) -> T:
        return await retry_store(what, call, STORE_BACKOFF, self._stop, StoreError, _RNG)

    # -- API backend ----------------------------------------------------------------------

    async def authenticate(
        self, authorization: str | None, before_hashing: Callable[[], None]
    ) -> Identity | None:
        assert self._auth is not None
        try:
            return await self._auth.authenticate(authorization, before_hashing)
        except OperatorStoreError as exc:
            raise StoreError(f"operator store: {exc}") from exc

    async def _registry_records(self) -> dict[str, DeviceRecord] | None:
        registry = self.devices_registry
        if registry is None:
            return None
        try:
            records = await asyncio.to_thread(registry.list)
        except RegistryError as exc:
            logger.warning("device registry unavailable, listing devices with history: %s", exc)
            return None
        return {r.device_id: r for r in records}

    async def _registry_record(self, device_id: str) -> DeviceRecord | None:
        registry = self.devices_registry
        if registry is None:
            return None
        try:
            return await asyncio.to_thread(registry.get, device_id)
        except RegistryError as exc:
            logger.warning("device registry unavailable: %s", exc)
            return None

    async def zone(self, device_id: str) -> ZoneInfo:
        """The device's time zone from the registry (cached ``registry_cache_s``; UTC for a
        device the registry does not know, or while it is away)."""
        cached = self._zones.get(device_id)
        if cached is not None and time.monotonic() - cached[1] < self.settings.registry_cache_s:
            return cached[0]
        record = await self._registry_record(device_id)
        zone = _zone(record)
        self._zones[device_id] = (zone, time.monotonic())
        return zone

    def _state_of(self, stored: StoredDevice | None, device_id: str) -> DeviceState | None:
        live = self.builder.state(device_id)
        if live is not None:
            return live
        if stored is None:
            return None
        try:
            return DeviceState.from_dict(stored.state)
        except (KeyError, TypeError, ValueError):
            return None

    async def list_devices(self) -> list[dict[str, Any]]:
        assert self.store is not None
        stored = {d.device_id: d for d in await asyncio.to_thread(self.store.devices)}
        records = await self._registry_records() or {}
        return [
            _device_document(
                device_id, records.get(device_id), self._state_of(stored.get(device_id), device_id)
            )
            for device_id in sorted({*stored, *records})
        ]

    async def device(self, device_id: str) -> dict[str, Any] | None:
        assert self.store is not None
        stored = await asyncio.to_thread(self.store.device, device_id)
        record = await self._registry_record(device_id)
        state = self._state_of(stored, device_id)
        if record is None and stored is None and state is None:
            return None
        document = _device_document(device_id, record, state)
        document["open_alerts"] = await self._open_alerts(device_id)
        return document

    async def _open_alerts(self, device_id: str) -> list[dict[str, Any]] | None:
        """The device's alerts not resolved yet (open or acknowledged), newest first, from
        the alert store this service already reads operators from; None if it cannot say."""
        assert self.operators is not None
        try:
            alerts = [
                alert
                for state in (AlertState.OPEN, AlertState.ACKNOWLEDGED)
                for alert in await asyncio.to_thread(
                    self.operators.list_alerts, state, None, device_id, OPEN_ALERTS_LIMIT
                )
            ]
        except OperatorStoreError as exc:
            logger.warning("open alerts of %s unknown: %s", device_id, exc)
            return None
        alerts.sort(key=lambda a: a.opened_at, reverse=True)
        return [
            {
                "alert_id": a.alert_id,
                "type": str(a.type),
                "severity": str(a.severity),
                "state": str(a.state),
                "opened_at": a.opened_at,
                "opened_at_iso": iso(a.opened_at),
                "reason": a.reason,
            }
            for a in alerts
        ]

    async def _known(self, device_id: str) -> bool:
        assert self.store is not None
        if self.builder.state(device_id) is not None:
            return True
        if await asyncio.to_thread(self.store.device, device_id) is not None:
            return True
        return await self._registry_record(device_id) is not None

    async def activity(self, device_id: str, start: float, end: float) -> list[Segment] | None:
        assert self.store is not None
        if not await self._known(device_id):
            return None
        return await asyncio.to_thread(self.store.segments, device_id, start, end)

    async def summary(self, device_id: str, day: date | None) -> DailySummary | None:
        assert self.store is not None
        if not await self._known(device_id):
            return None
        zone = await self.zone(device_id)
        now = self.clock()
        day = day or local_day(now, zone)
        start, end = day_bounds(day, zone)
        # A little before the day: a posture change at midnight needs the segment before.
        margin = self.settings.max_gap_s
        segments = await asyncio.to_thread(self.store.segments, device_id, start - margin, end)
        return summarize(device_id, segments, day, zone, now, self.settings.max_gap_s)

    async def readiness(self) -> dict[str, bool]:
        ping = self.store.ping if self.store is not None else None
        return await worker_readiness(self._consumer, ping, StoreError, self._stop)


def _zone(record: DeviceRecord | None) -> ZoneInfo:
    if record is None:
        return UTC_ZONE
    try:
        return ZoneInfo(record.timezone)
    except (ValueError, KeyError) as exc:  # the registry checks names; a row edited by hand
        logger.warning(
            "device %s: time zone %r unusable (%s); using UTC",
            record.device_id,
            record.timezone,
            exc,
        )
        return UTC_ZONE


def _device_document(
    device_id: str, record: DeviceRecord | None, state: DeviceState | None
) -> dict[str, Any]:
    latest = state.latest if state is not None else None
    current = None
    if latest is not None:
        open_segment = state.open if state is not None else None
        since = (
            open_segment.start
            if open_segment is not None and open_segment.activity == latest.activity
            else latest.start
        )
        current = {
            "activity": latest.activity,
            "confidence": round(latest.confidence, 4),
            "model_version": latest.model_version,
            "since": since,
            "since_at": iso(since),
        }
    return {
        "device_id": device_id,
        "label": record.label if record is not None else None,
        "timezone": record.timezone if record is not None else "UTC",
        "registered": record is not None,
        "revoked": bool(record is not None and record.revoked),
        "last_seen": latest.end if latest is not None else None,
        "last_seen_at": iso(latest.end) if latest is not None else None,
        "current": current,
        # Filled in for one device (HistoryWorker.device); the list leaves them out.
        "open_alerts": None,
    }
