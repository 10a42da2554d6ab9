"""Following the predictions, shadow-predictions and alerts topics from the start (no
consumer group: manual assignment, so watching never joins or disturbs the services'
groups)."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka.structs import TopicPartition  # type: ignore[import-untyped]

from services.common.kafka.clients import aiokafka_consumer_kwargs
from services.common.kafka.errors import BrokerUnavailableError
from services.demo.tally import DemoTally
from shared.errors import SchemaError
from shared.messages import Alert, Prediction
from shared.settings import StreamSettings

logger = logging.getLogger(__name__)


async def follow(settings: StreamSettings, tally: DemoTally, stop: asyncio.Event) -> None:
    topics = settings.topics
    consumer = AIOKafkaConsumer(
        **aiokafka_consumer_kwargs(settings, group_id=None, auto_offset_reset="earliest")
    )
    await consumer.start()
    try:
        partitions = []
        for topic in (topics.predictions, topics.shadow_predictions, topics.alerts):
            for p in sorted(
                consumer.partitions_for_topic(topic) or await _partitions(consumer, topic)
            ):
                partitions.append(TopicPartition(topic, p))
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=2000)
            for tp, records in batches.items():
                for record in records:
                    try:
                        if tp.topic == topics.predictions:
                            tally.add_prediction(Prediction.from_bytes(record.value))
                        elif tp.topic == topics.shadow_predictions:
                            tally.add_shadow(Prediction.from_bytes(record.value))
                        else:
                            tally.add_alert(Alert.from_bytes(record.value))
                    except SchemaError as exc:
                        logger.warning("undecodable message on %s: %s", tp.topic, exc)
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    for _ in range(50):
        await consumer.topics()  # refreshes the metadata
        found = consumer.partitions_for_topic(topic)
        if found:
            return set(found)
        await asyncio.sleep(0.1)
    raise BrokerUnavailableError(f"topic {topic} has no partitions")
