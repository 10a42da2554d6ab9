"""Reading what the pipeline wrote: every topic from the beginning with a plain consumer (no
group, manual assignment: reading disturbs no service) once the run is over, and a live
watch of the predictions and alerts topics to know when the pipeline has gone quiet."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka.structs import TopicPartition as AioTopicPartition  # type: ignore[import-untyped]
from kafka import KafkaConsumer, TopicPartition  # type: ignore[import-untyped]

from services.common.kafka.clients import aiokafka_consumer_kwargs, kafka_python_kwargs
from services.faults.records import (
    AlertRecord,
    PredictionRecord,
    RawRecord,
    WindowRecord,
    alert_record,
    prediction_record,
    raw_records,
    window_record,
)
from shared.errors import SchemaError
from shared.settings import StreamSettings

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class TopicContents:
    raw: list[RawRecord]
    windows: list[WindowRecord]
    predictions: list[PredictionRecord]
    alerts: list[AlertRecord]
    dead_letters: int
    #: Records that did not decode, per topic (a worker wrote something it should not).
    undecodable: dict[str, int]


def read_all(
    settings: StreamSettings, idle_s: float = 3.0, timeout_s: float = 120.0
) -> TopicContents:
    """Every record of the raw, windows, predictions, alerts and dead-letter topics. Reads
    until nothing new arrived for ``idle_s`` (Tansu's end offsets are unreliable, see
    shared/notes/tansu.md); call it once the pipeline is quiet."""
    topics = settings.topics
    undecodable: dict[str, int] = {}

    def decoded(topic: str, decode: Callable[[bytes], T]) -> list[T]:
        out: list[T] = []
        for value in _read_topic(settings, topic, idle_s, timeout_s):
            try:
                out.append(decode(value))
            except SchemaError:
                undecodable[topic] = undecodable.get(topic, 0) + 1
        return out

    return TopicContents(
        raw=[packet for record in decoded(topics.raw, raw_records) for packet in record],
        windows=decoded(topics.windows, window_record),
        predictions=decoded(topics.predictions, prediction_record),
        alerts=decoded(topics.alerts, alert_record),
        dead_letters=len(_read_topic(settings, topics.dlq, idle_s, timeout_s)),
        undecodable=undecodable,
    )


def _read_topic(
    settings: StreamSettings, topic: str, idle_s: float, timeout_s: float
) -> list[bytes]:
    consumer = KafkaConsumer(
        **kafka_python_kwargs(
            settings,
            enable_auto_commit=False,
            group_id=None,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
    )
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        if not partitions:
            raise SchemaError(f"topic {topic} does not exist")
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        values: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()
        while time.monotonic() - last_new < idle_s:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} still delivering after {timeout_s:.0f} s")
            batches = consumer.poll(timeout_ms=200)
            for records in batches.values():
                values.extend(r.value for r in records if r.value is not None)
                last_new = time.monotonic()
        return values
    finally:
        consumer.close()


@dataclass
class Watch:
    """Live counts of the predictions and alerts topics (from the beginning)."""

    predictions: int = 0
    #: ``<alert_id>:<event>`` of every alert event seen.
    alert_events: set[str] = field(default_factory=set)
    #: monotonic time of the last new record on either topic.
    last_change: float = field(default_factory=time.monotonic)


async def watch(settings: StreamSettings, state: Watch, stop: asyncio.Event) -> None:
    topics = settings.topics
    consumer = AIOKafkaConsumer(
        **aiokafka_consumer_kwargs(settings, group_id=None, auto_offset_reset="earliest")
    )
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [
            AioTopicPartition(topic, p)
            for topic in (topics.predictions, topics.alerts)
            for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=2000)
            for tp, records in batches.items():
                if not records:
                    continue
                state.last_change = time.monotonic()
                if tp.topic == topics.predictions:
                    state.predictions += len(records)
                    continue
                for record in records:
                    try:
                        alert = alert_record(record.value)
                    except SchemaError as exc:
                        logger.warning("undecodable alert: %s", exc)
                        continue
                    state.alert_events.add(f"{alert.alert_id}:{alert.event}")
    finally:
        await consumer.stop()
