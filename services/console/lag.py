"""Consumer lag of the pipeline's consumer groups, for the pipeline page: per group, the
records its partitions' committed offsets trail the topic's end by.

Read with a consumer in each group that never subscribes, so it never joins: asking for
committed offsets causes no rebalance (checked against the local broker, whose admin
OffsetFetch aiokafka cannot decode). A group that committed nothing yet has unknown lag.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from services.common.kafka.clients import aiokafka_consumer_kwargs
from shared.settings import StreamSettings

logger = logging.getLogger(__name__)


class LagReader:
    """``groups``: service name → (consumer group, logical topic name, e.g. ``raw``)."""

    def __init__(
        self, settings: StreamSettings, groups: Mapping[str, tuple[str, str]], timeout_s: float
    ) -> None:
        self._settings = settings
        self._groups = dict(groups)
        self._timeout_s = timeout_s

    async def __call__(self) -> dict[str, dict[str, int | None]]:
        """{service: {"<group> on <topic>": records behind, or None if unknown}}."""
        results = await asyncio.gather(
            *(self._one(group, topic) for group, topic in self._groups.values()),
            return_exceptions=True,
        )
        out: dict[str, dict[str, int | None]] = {}
        for (service, (group, topic)), result in zip(self._groups.items(), results, strict=True):
            name = f"{group} on {getattr(self._settings.topics, topic, topic)}"
            if isinstance(result, BaseException):
                logger.debug("console: lag of %s not read: %s", group, result)
                out[service] = {name: None}
            else:
                out[service] = {name: result}
        return out

    async def _one(self, group: str, topic_name: str) -> int | None:
        topic = getattr(self._settings.topics, topic_name, topic_name)
        consumer = AIOKafkaConsumer(
            **aiokafka_consumer_kwargs(
                self._settings, group_id=group, client_id="harstream-console-lag"
            )
        )
        try:
            async with asyncio.timeout(self._timeout_s):
                await consumer.start()
                partitions = consumer.partitions_for_topic(topic) or set()
                tps = [TopicPartition(topic, p) for p in sorted(partitions)]
                if not tps:
                    return None
                ends = await consumer.end_offsets(tps)
                lag, known = 0, False
                for tp in tps:
                    committed = await consumer.committed(tp)
                    if committed is not None:
                        known = True
                        lag += max(0, ends[tp] - committed)
                return lag if known else None
        except (KafkaError, TimeoutError) as exc:
            logger.debug("console: lag of %s not read: %s", group, exc)
            return None
        finally:
            await consumer.stop()
