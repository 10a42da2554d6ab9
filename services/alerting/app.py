"""The alerting worker: predictions topic → alert rules → store, alerts topic, webhooks.

Per batch: decode (bad messages → DLQ), run the device monitors, store the transitions (with
history and webhook outbox rows, one transaction), publish the alert events, wake the webhook
dispatcher, THEN commit the offsets. A crash before the commit replays the batch; the
monitors were rebuilt from the store's open alerts, so nothing opens twice. A tick task runs
the wall-clock rules (device offline) every ``tick_interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from aiokafka.structs import ConsumerRecord  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry

from services.alerting.api import create_app
from services.alerting.lifecycle import AlertNotFoundError, AlertTransition
from services.alerting.metrics import AlertingMetrics, create
from services.alerting.monitor import FleetMonitor
from services.alerting.settings import AlertingSettings
from services.alerting.store import AlertStore, StoreError, open_store
from services.alerting.webhooks import WebhookDispatcher
from services.common.dead_letters import is_too_large, without_value
from services.common.kafka import dead_letter
from services.common.shutdown import stop_quietly
from shared.errors import HarstreamError
from shared.messages import Alert, AlertState, AlertType, DeadLetter, Prediction

logger = logging.getLogger(__name__)

SERVICE = "alerting"
#: Stored alert events published per round; rounds repeat until the backlog is empty.
PUBLISH_PAGE = 500


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: AlertingService) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._service.partitions_revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._service.partitions_assigned({tp.partition for tp in assigned})


class AlertingService:
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
        self.store = store
        self.port: int | None = None
        #: Set when the consumer loop died of an unexpected error (the CLI exits non-zero).
        self.failure: BaseException | None = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        self._device_partition: dict[str, int] = {}
        self._duplicates_reported = 0
        self._publish_backlog = False
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._runner: web.AppRunner | None = None
        self._dispatcher: WebhookDispatcher | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if self.store is None:
            self.store = await asyncio.to_thread(open_store, s.store_url, s.store_schema)
        adopted = self.fleet.load(await asyncio.to_thread(self.store.active))
        await self._refresh_open_gauge()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers,
            client_id=f"harstream-{SERVICE}",
            acks="all",  # not enable_idempotence: the local Tansu broker rejects it
            linger_ms=5,
        )
        await self._producer.start()
        await self._publish_pending()
        self._dispatcher = WebhookDispatcher(
            self.store,
            self.metrics,
            timeout_s=s.webhook_timeout_s,
            max_attempts=s.webhook_max_attempts,
            backoff_base_s=s.webhook_backoff_base_s,
            backoff_max_s=s.webhook_backoff_max_s,
            concurrency=s.webhook_concurrency,
            poll_interval_s=s.webhook_poll_interval_s,
        )
        # Deliveries left over from a previous run go out while the consumer joins.
        self._tasks = [
            asyncio.create_task(self._dispatcher.run(self._stop), name="alerting-webhooks")
        ]
        # HTTP first: /healthz answers during the group join (3-30 s), /readyz says not yet.
        self._runner = web.AppRunner(create_app(self), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.host, s.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
            group_id=s.group_id,
            client_id=f"harstream-{SERVICE}",
            enable_auto_commit=False,
            auto_offset_reset=s.auto_offset_reset,
            session_timeout_ms=int(s.group_session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.group_heartbeat_interval_s * 1000),
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            max_poll_records=s.max_batch_records,
        )
        self._consumer.subscribe([s.topics.predictions], listener=_Rebalance(self))
        await self._consumer.start()
        self._tasks += [
            asyncio.create_task(self._consume_loop(), name="alerting-consume"),
            asyncio.create_task(self._tick_loop(), name="alerting-tick"),
        ]
        logger.info(
            "alerting: consuming %s (group %s) on %s, alerts to %s, DLQ %s, HTTP on %s:%d, "
            "store %s, %d webhook URL(s), %d open alert(s) loaded",
            s.topics.predictions,
            s.group_id,
            s.kafka_bootstrap_servers,
            s.topics.alerts,
            s.topics.dlq,
            s.host,
            self.port,
            s.store_url.split("@")[-1],  # no credentials in logs
            len(s.webhook_url_list),
            adopted,
        )

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        try:
            await self.start()
            await self._stop.wait()
        finally:
            await self.stop()

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
            while not self._stop.is_set():
                try:
                    batches = await self._consumer.getmany(
                        timeout_ms=500, max_records=self.settings.max_batch_records
                    )
                except KafkaError as exc:
                    logger.warning("consumer: %s", exc)
                    await asyncio.sleep(1.0)
                    continue
                if batches:
                    await self._handle(batches)
        except Exception as exc:
            # A worker that no longer consumes must not look alive: stop, exit non-zero and
            # let the supervisor restart it (uncommitted messages are replayed).
            logger.exception("alerting consumer failed; stopping")
            self.failure = exc
            self._stop.set()

    async def _handle(self, batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> None:
        assert self._consumer is not None and self._producer is not None
        now = time.time()
        transitions: list[AlertTransition] = []
        dead = []
        offsets: dict[TopicPartition, int] = {}
        async with self._lock:
            for tp, records in batches.items():
                for record in records:
                    key, value = record.key, record.value
                    try:
                        prediction = Prediction.from_bytes(value)
                        steps = self.fleet.observe(prediction, now)
                    except Exception as exc:  # bad input (or a bug) never stops the worker
                        if not isinstance(exc, HarstreamError):
                            logger.exception("unexpected error on %s@%d", tp, record.offset)
                        dead.append(
                            dead_letter(
                                SERVICE, exc, tp.topic, tp.partition, record.offset, key, value
                            )
                        )
                        continue
                    self.metrics.predictions.inc()
                    self._device_partition[prediction.device_id] = tp.partition
                    transitions.extend(steps)
                offsets[tp] = records[-1].offset + 1
            await self._persist(transitions, retry=True)
        for letter in dead:
            await self._send_dead_letter(letter)
            self.metrics.dead_letters.labels(letter.error_type).inc()
            logger.warning(
                "dead letter from %s[%d]@%d: %s",
                letter.source_topic,
                letter.source_partition,
                letter.source_offset,
                letter.reason,
            )
        self._update_gauges()
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            # Typically a rebalance: the new owner replays these, duplicates are ignored.
            logger.warning("offset commit failed: %s", exc)

    async def _send_dead_letter(self, letter: DeadLetter) -> None:
        """Send, retrying while Kafka is unavailable: a dead letter is never dropped. One too
        large for the producer or broker goes without the source value (retrying it could
        only stall the partition)."""
        assert self._producer is not None
        topic = self.settings.topics.dlq
        delay = 0.5
        while True:
            try:
                await self._producer.send_and_wait(topic, letter.to_bytes(), key=letter.key)
                return
            except KafkaError as exc:
                if is_too_large(exc) and letter.value is not None:
                    logger.error(
                        "dead letter of %s[%d]@%d too large to produce (%s); producing it "
                        "without the source value",
                        letter.source_topic,
                        letter.source_partition,
                        letter.source_offset,
                        exc,
                    )
                    letter = without_value(letter, exc)
                    continue
                if self._stop.is_set():
                    raise
                logger.error("cannot write to %s, retrying in %.1f s: %s", topic, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _tick_loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.tick_interval_s)
            if self._stop.is_set():
                return
            async with self._lock:
                await self._persist(self.fleet.tick(time.time()), retry=True)
                if self._publish_backlog:
                    await self._publish_pending()
            self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.devices_tracked.set(self.fleet.devices_tracked)
        self.metrics.falls_cancelled.inc(self.fleet.take_falls_cancelled())
        duplicates = sum(d.duplicates_ignored for d in self.fleet.devices.values())
        if duplicates > self._duplicates_reported:
            self.metrics.duplicates.inc(duplicates - self._duplicates_reported)
        self._duplicates_reported = duplicates

    # -- store, alerts topic, webhooks ----------------------------------------------------

    async def _persist(self, transitions: Sequence[AlertTransition], retry: bool) -> None:
        """Store, then publish, then notify. Callers hold the lock, so events of one alert
        reach the topic and the webhooks in order."""
        if not transitions:
            return
        assert self.store is not None
        delay = 0.5
        while True:
            try:
                await asyncio.to_thread(
                    self.store.record, transitions, self.settings.webhook_url_list
                )
                break
            except StoreError as exc:
                if not retry or self._stop.is_set():
                    raise
                # Hold the batch (and its offsets) until the store is back: backpressure.
                logger.error("alert store unavailable, retrying in %.1f s: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        for step in transitions:
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
                    futures = [
                        await self._producer.send(
                            topic, alert.to_bytes(), key=alert.device_id.encode()
                        )
                        for _, alert in pending
                    ]
                    await asyncio.gather(*futures)
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

    def partitions_revoked(self, partitions: set[int]) -> None:
        gone = [d for d, p in self._device_partition.items() if p in partitions]
        self.fleet.forget(gone)
        for device in gone:
            del self._device_partition[device]
        if gone:
            logger.info(
                "partitions %s revoked: stopped tracking %d device(s)", partitions, len(gone)
            )

    async def partitions_assigned(self, partitions: set[int]) -> None:
        if self.store is None:
            return
        try:
            active = await asyncio.to_thread(self.store.active)
        except StoreError as exc:
            logger.warning("cannot load open alerts after rebalance: %s", exc)
            return
        async with self._lock:
            adopted = self.fleet.load(active)
        logger.info(
            "partitions %s assigned; adopted %d stored alert(s)", sorted(partitions), adopted
        )

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

    async def acknowledge(self, alert_id: str, by: str) -> Alert:
        async with self._lock:
            alert = await self._stored(alert_id)
            step = self.fleet.plan_acknowledge(alert, by, time.time())
            if step is None:
                return alert
            await self._persist([step], retry=False)
            self.fleet.apply(step)
            return step.alert

    async def resolve(self, alert_id: str, by: str) -> Alert:
        async with self._lock:
            alert = await self._stored(alert_id)
            step = self.fleet.plan_resolve(alert, by, time.time())
            await self._persist([step], retry=False)
            self.fleet.apply(step)
            return step.alert

    async def _stored(self, alert_id: str) -> Alert:
        assert self.store is not None
        alert = await asyncio.to_thread(self.store.get, alert_id)
        if alert is None:
            raise AlertNotFoundError(alert_id)
        return alert

    async def readiness(self) -> dict[str, bool]:
        assigned = bool(self._consumer is not None and self._consumer.assignment())
        store_ok = False
        if self.store is not None:
            try:
                await asyncio.to_thread(self.store.ping)
                store_ok = True
            except StoreError:
                store_ok = False
        return {
            "consumer_assigned": assigned,
            "store": store_ok,
            "running": not self._stop.is_set(),
        }
