"""Creating harstream's topics (kafka-python's admin client: it works on both brokers)."""

from __future__ import annotations

import logging
import time

from kafka.admin import NewTopic  # type: ignore[import-untyped]
from kafka.errors import KafkaError, TopicAlreadyExistsError  # type: ignore[import-untyped]

from services.common.kafka.admin import AdminClient
from services.common.kafka.clients import describe, kafka_python_kwargs
from services.common.kafka.errors import BrokerUnavailableError
from shared.settings import StreamSettings

logger = logging.getLogger(__name__)


def create_topics(settings: StreamSettings, timeout_s: float = 30.0) -> list[str]:
    """Create every harstream topic that does not exist yet; returns the ones created.

    Raises:
        BrokerUnavailableError: Kafka did not answer within ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = AdminClient(**kafka_python_kwargs(settings, client_id="harstream-admin"))
            break
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise BrokerUnavailableError(
                    f"cannot reach Kafka at {describe(settings)}: {exc}"
                ) from exc
            time.sleep(0.5)
    created = []
    try:
        existing = set(admin.list_topics())
        for name in settings.topics.all():
            if name in existing:
                continue
            try:
                admin.create_topics(
                    [NewTopic(name, settings.topic_partitions, settings.topic_replication_factor)]
                )
                created.append(name)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
    if created:
        logger.info("created topics %s with %d partitions", created, settings.topic_partitions)
    return created
