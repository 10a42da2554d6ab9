"""The inference worker: windows topic → micro-batches → TF Serving → predictions topic.

Thin wiring of aiokafka and gRPC around the pure core (batching, processing, rollout,
results). Delivery is at-least-once: offsets are committed only after the batch's
predictions and dead letters are acknowledged by Kafka (acks=all), so a crash, a SIGKILL or
a rebalance can repeat predictions (same window id) but never lose a window. That holds for
canary devices too: their predictions are live ones, from the candidate or (when it fails)
from the stable model. Shadow predictions are best effort, outside the commit
(:mod:`services.inference.shadow`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry, Gauge

from services.common.kafka.backoff import BackoffPolicy
from services.common.kafka.clients import aiokafka_consumer_kwargs, aiokafka_producer_kwargs
from services.common.kafka.dead_letters import dead_letter
from services.common.kafka.errors import BrokerUnavailableError, SendAbandonedError
from services.common.kafka.send import Record, send_acked
from services.common.shutdown import stop_quietly
from services.inference.batching import MicroBatcher
from services.inference.client import GrpcModelClient
from services.inference.errors import StartupError
from services.inference.metrics import InferenceMetrics, create
from services.inference.processing import (
    BatchAbandonedError,
    BatchProcessor,
    BatchResult,
    Consumed,
    WindowProcessor,
    decode,
)
from services.inference.rollout import CandidateBreaker, RolloutPlan, RolloutProcessor
from services.inference.settings import InferenceSettings
from services.inference.shadow import ShadowPublisher
from services.inference.startup import check_model
from shared.dsp import PreprocessingConfig
from shared.messages import Prediction

logger = logging.getLogger(__name__)

SERVICE = "inference"
#: getmany timeout while nothing is queued: how quickly a stop request is noticed when idle.
IDLE_POLL_MS = 250
#: After SIGTERM, how long a batch already in Predict or in produce may take to finish
#: before it is abandoned (uncommitted: its records are read again after the restart).
STOP_GRACE_S = 10.0
#: After the worker stopped, how long queued shadow predictions may take to be written
#: (they are best effort: the rest is dropped and counted).
SHADOW_GRACE_S = 2.0
#: How long start-up gives the candidate to answer its probe: it is optional, the worker
#: starts without it and the rollout's breaker keeps trying.
CANDIDATE_PROBE_S = 5.0

T = TypeVar("T")


class _RevokeListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Drops queued windows of partitions taken away: their new owner reads them again from
    the committed offset, and we must not commit them."""

    def __init__(self, batcher: MicroBatcher[Consumed], assigned_gauge: Gauge) -> None:
        self._batcher = batcher
        self._assigned = assigned_gauge

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._assigned.set(0)
        lost = {(tp.topic, tp.partition) for tp in revoked}
        dropped = self._batcher.drop(lambda c: (c.topic, c.partition) not in lost)
        if dropped:
            logger.info("rebalance: dropped %d queued windows of revoked partitions", dropped)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._assigned.set(len(assigned))
        logger.info("assigned %d partitions: %s", len(assigned), sorted(assigned))


class InferenceWorker:
    """The consume → batch → predict → produce → commit loop of one worker."""

    def __init__(
        self,
        settings: InferenceSettings,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        processor: WindowProcessor,
        batcher: MicroBatcher[Consumed],
        metrics: InferenceMetrics,
        backoff: BackoffPolicy,
        shadow: ShadowPublisher | None = None,
    ) -> None:
        self._settings = settings
        self._shadow = shadow
        self._consumer = consumer
        self._producer = producer
        self._processor = processor
        self._batcher = batcher
        self._metrics = metrics
        self._backoff = backoff
        self._stop = asyncio.Event()
        self._rng = random.Random()
        # Predicted batches waiting for produce + commit; None ends the publisher. One slot:
        # Predict may run one batch ahead of Kafka, not more (bounded uncommitted work).
        self._results: asyncio.Queue[BatchResult | None] = asyncio.Queue(maxsize=1)
        self._publisher: asyncio.Future[None] | None = None

    def request_stop(self) -> None:
        self._stop.set()
        self._processor.request_stop()

    def abandon(self) -> list[asyncio.Future[None]]:
        """Cancel the publisher (produce and commit of predicted batches), e.g. when a stop
        takes too long; returns the tasks to await. The caller cancels :meth:`run`'s task:
        both must be finished before the Kafka clients stop, or the publisher would go on
        producing and committing against stopped clients."""
        if self._publisher is None:
            return []
        self._publisher.cancel()
        return [self._publisher]

    async def run(self) -> None:
        """Consume and predict here; produce and commit in a second task, so the next batch's
        Predict overlaps the previous batch's produce and commit. The publisher takes results
        in order, so offsets are still committed in order and only after their acks."""
        publisher = self._publisher = asyncio.ensure_future(self._publish_results())
        try:
            await self._consume(publisher)
        except BatchAbandonedError as exc:
            logger.warning("in-flight batch abandoned, not committed: %s", exc)
        finally:
            if not publisher.done():
                # Let the publisher finish what was predicted (the caller bounds how long).
                # Not a plain ``await put``: if the publisher is cancelled meanwhile
                # (abandon), nobody would ever take the end marker from the full queue.
                ending = asyncio.ensure_future(self._results.put(None))
                try:
                    await asyncio.wait({publisher})
                finally:
                    ending.cancel()
            try:
                publisher.result()
            except BatchAbandonedError as exc:
                logger.warning("in-flight batch abandoned, not committed: %s", exc)
        if len(self._batcher):
            logger.info("%d queued windows left uncommitted for the next owner", len(self._batcher))

    async def _consume(self, publisher: asyncio.Future[None]) -> None:
        while not self._stop.is_set():
            await self._poll()
            if not self._batcher.ready():
                continue
            batch = self._batcher.take()
            started = time.perf_counter()
            result = await self._processor.process(batch)
            logger.debug(
                "batch of %d: %.1f ms to predict", len(batch), (time.perf_counter() - started) * 1e3
            )
            handover = asyncio.ensure_future(self._results.put(result))
            try:
                await asyncio.wait({handover, publisher}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                handover.cancel()
                raise
            if publisher.done():  # it only ends early by failing: raise its error
                handover.cancel()
                publisher.result()
                raise RuntimeError("publisher ended unexpectedly")

    async def _poll(self) -> None:
        capacity = self._batcher.capacity
        if capacity == 0:
            return
        wait_s = self._batcher.time_until_ready()
        timeout_ms = IDLE_POLL_MS if wait_s is None else min(IDLE_POLL_MS, math.ceil(wait_s * 1000))
        records = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=capacity)
        for tp_records in records.values():
            for r in tp_records:
                self._batcher.add(decode(r.topic, r.partition, r.offset, r.key, r.value))
                self._metrics.windows.inc()

    async def _publish_results(self) -> None:
        while (result := await self._results.get()) is not None:
            started = time.perf_counter()
            acked_at = await self._publish(result)
            await self._commit(result)
            self._observe(result, acked_at)
            if self._shadow is not None:
                self._shadow.offer(result.shadow)  # never waited for: best effort
            logger.debug(
                "%d predictions, %d dead letters: %.1f ms to produce and commit",
                len(result.predictions), len(result.dead_letters),
                (time.perf_counter() - started) * 1e3,
            )  # fmt: skip

    def _observe(self, result: BatchResult, acked_at: float) -> None:
        m = self._metrics
        for _, prediction in result.predictions:
            m.predictions.labels(activity=prediction.label).inc()
            m.confidence.observe(prediction.confidence)
            # Up to the broker's ack: the prediction is then readable by consumers.
            m.end_to_end_seconds.observe(max(0.0, acked_at - prediction.ingested_at))
            m.queue_wait_seconds.observe(prediction.queue_wait_s)
        for _, error in result.dead_letters:
            m.dead_letters.labels(error_type=type(error).__name__).inc()

    async def _publish(self, result: BatchResult) -> float:
        """Produce the batch's predictions and dead letters and wait for every ack; records a
        Kafka failure left unacknowledged go again after a backoff (duplicates rather than
        loss). Returns the wall-clock time (Unix seconds) when the last ack arrived."""
        topic = self._settings.topics.predictions
        letters = [
            dead_letter(
                SERVICE, error, entry.topic, entry.partition, entry.offset, entry.key, entry.value
            )
            for entry, error in result.dead_letters
        ]
        for letter in letters:
            logger.warning(
                "dead letter %s[%d]@%d: %s", letter.source_topic, letter.source_partition,
                letter.source_offset, letter.reason,
            )  # fmt: skip

        def stamped(prediction: Prediction) -> Record:
            # produced_at as late as possible: when it leaves for the broker.
            value = replace(prediction, produced_at=time.time()).to_bytes()
            return Record(topic, value, prediction.device_id.encode())

        try:
            sent = await send_acked(
                self._producer,
                [functools.partial(stamped, prediction) for _, prediction in result.predictions],
                letters,
                dlq_topic=self._settings.topics.dlq,
                backoff=self._backoff,
                stop=self._stop,
                rng=self._rng,
                what="predictions",
            )
        except SendAbandonedError as exc:
            raise BatchAbandonedError("stopping while Kafka refused the batch") from exc
        return sent.acked_at

    async def _commit(self, result: BatchResult) -> None:
        assigned = self._consumer.assignment()
        offsets = {
            TopicPartition(topic, partition): offset
            for (topic, partition), offset in result.offsets.items()
            if TopicPartition(topic, partition) in assigned
        }
        if len(offsets) < len(result.offsets):
            logger.info(
                "not committing %d partitions revoked meanwhile", len(result.offsets) - len(offsets)
            )
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # The group rebalanced while the batch was in flight: its records will be read
            # again by their new owner (duplicate predictions, nothing lost).
            logger.warning("commit of %s failed: %s", offsets, exc)


async def stop_worker(worker: InferenceWorker, task: asyncio.Future[None], grace_s: float) -> None:
    """Ask ``worker`` (running as ``task``) to stop; after ``grace_s`` seconds cancel both its
    consume loop and its publisher and wait for them, so that neither produces or commits
    once the caller stops the Kafka clients. Whatever was not committed is read again by
    the next owner of its partitions."""
    logger.info("stopping: finishing the in-flight batch (up to %.0f s)", grace_s)
    worker.request_stop()
    await asyncio.wait({task}, timeout=grace_s)
    if task.done():
        return
    logger.warning("in-flight batch abandoned after %.0f s, not committed", grace_s)
    others = worker.abandon()
    task.cancel()
    await asyncio.gather(task, *others, return_exceptions=True)


async def _unless_stopped(coro: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
    """Run ``coro``; cancel it and return None if ``stop`` is set first."""
    task = asyncio.ensure_future(coro)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


def _consumer(settings: InferenceSettings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **aiokafka_consumer_kwargs(
            settings,
            group_id=settings.group_id,
            client_id=f"harstream-{SERVICE}",
            auto_offset_reset="earliest",
        )
    )


def _producer(settings: InferenceSettings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **aiokafka_producer_kwargs(settings, client_id=f"harstream-{SERVICE}", linger_ms=0)
    )


async def run(
    settings: InferenceSettings,
    registry: CollectorRegistry,
    stop: asyncio.Event,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Run the worker until ``stop`` is set.

    Args:
        on_ready: called once the start-up checks passed and Kafka clients run (the CLI
            starts the /metrics endpoint there, so an open port means "ready").

    Raises:
        StartupError: the model server does not serve a model this worker can use.
        BrokerUnavailableError: Kafka cannot be reached at start-up.
    """
    metrics = create(registry, settings.model_name)
    plan = RolloutPlan(settings.candidate_version_label, settings.canary_share, settings.shadow)
    metrics.canary_share.set(plan.canary_share)
    metrics.shadow_enabled.set(int(plan.shadow))
    model = GrpcModelClient(
        settings.model_server_target,
        settings.model_name,
        settings.signature_name,
        settings.model_version,
        settings.model_version_label,
        settings.predict_deadline_s,
    )
    candidate = (
        GrpcModelClient(
            settings.model_server_target,
            settings.model_name,
            settings.signature_name,
            version_label=plan.candidate_label,
            deadline_s=settings.candidate_deadline_s,
        )
        if plan.enabled
        else None
    )
    consumer = _consumer(settings)
    producer = _producer(settings)
    started: list[AIOKafkaConsumer | AIOKafkaProducer] = []
    shadow: ShadowPublisher | None = None
    try:
        fingerprint = PreprocessingConfig().fingerprint
        version = await _unless_stopped(
            check_model(model, settings.model_name, fingerprint, settings.startup_timeout_s), stop
        )
        if version is None:
            return
        metrics.model_version.labels(model=settings.model_name).set(version)
        logger.info(
            "model %s v%s on %s passed the start-up checks (signature %s, fingerprint %s)",
            settings.model_name, version, settings.model_server_target,
            settings.signature_name, fingerprint,
        )  # fmt: skip
        if candidate is not None:
            await _probe_candidate(candidate, settings, fingerprint, plan)
        try:
            for client in (producer, consumer):
                await client.start()
                started.append(client)
        except KafkaError as exc:
            raise BrokerUnavailableError(
                f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {exc}"
            ) from exc
        batcher: MicroBatcher[Consumed] = MicroBatcher(
            settings.batch_max_size, settings.batch_max_wait_ms / 1000.0, time.monotonic
        )
        listener = _RevokeListener(batcher, metrics.partitions_assigned)
        consumer.subscribe([settings.topics.windows], listener=listener)
        backoff = BackoffPolicy(settings.retry_initial_backoff_s, settings.retry_max_backoff_s)
        stable = BatchProcessor(
            model, settings.model_name, backoff, metrics,
            model_label=settings.model_version_label or "",
        )  # fmt: skip
        processor = RolloutProcessor(
            stable,
            candidate,
            plan,
            settings.model_name,
            metrics,
            CandidateBreaker(settings.candidate_failures_to_pause, settings.candidate_pause_s),
            settings.candidate_deadline_s,
        )
        if plan.shadow:

            def dropped(reason: str, count: int) -> None:
                metrics.shadow_dropped.labels(reason=reason).inc(count)

            shadow = ShadowPublisher(
                producer, settings.topics.shadow_predictions, dropped, backoff
            ).start()
        worker = InferenceWorker(
            settings, consumer, producer, processor, batcher, metrics, backoff, shadow
        )
        logger.info(
            "inference worker: %s → %s (dead letters %s), group %s, batches of ≤%d windows "
            "or ≤%.0f ms, rollout: %s, metrics on %s:%d",
            settings.topics.windows, settings.topics.predictions, settings.topics.dlq,
            settings.group_id, settings.batch_max_size, settings.batch_max_wait_ms,
            plan.describe(), settings.metrics_host, settings.metrics_port,
        )  # fmt: skip
        if on_ready is not None:
            on_ready()
        task = asyncio.ensure_future(worker.run())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not task.done():
            await stop_worker(worker, task, STOP_GRACE_S)
        if task.done() and not task.cancelled():
            task.result()  # re-raise what ended the worker, if anything did
    finally:
        if shadow is not None:
            await shadow.close(SHADOW_GRACE_S)  # before the producer stops
        for client in reversed(started):
            await stop_quietly(type(client).__name__, client.stop)
        await model.close()
        if candidate is not None:
            await candidate.close()
        logger.info("inference worker stopped")


async def _probe_candidate(
    candidate: GrpcModelClient, settings: InferenceSettings, fingerprint: str, plan: RolloutPlan
) -> None:
    """Check the candidate as the stable model is checked, but never refuse to start: a
    rollout must not take the pipeline down. What is wrong is logged; the rollout then
    finds out batch by batch (falling back to stable, skipping shadows)."""
    try:
        version = await check_model(
            candidate,
            settings.model_name,
            fingerprint,
            min(settings.startup_timeout_s, CANDIDATE_PROBE_S),
        )
    except StartupError as exc:
        logger.warning(
            "candidate %r is not usable now (%s); rollout %s goes on with stable predictions "
            "until it is",
            plan.candidate_label, exc, plan.describe(),
        )  # fmt: skip
        return
    logger.info("candidate %r is v%d: rollout %s", plan.candidate_label, version, plan.describe())
