"""Kafka plumbing shared by the services: topic creation, readiness, dead-letter records."""

from __future__ import annotations

import logging
import time

from kafka import KafkaAdminClient  # type: ignore[import-untyped]
from kafka.admin import NewTopic  # type: ignore[import-untyped]
from kafka.errors import KafkaError, TopicAlreadyExistsError  # type: ignore[import-untyped]

from services.common.kafka_clients import describe, kafka_python_kwargs
from shared.errors import HarstreamError
from shared.messages import DeadLetter
from shared.settings import StreamSettings

logger = logging.getLogger(__name__)


class BrokerUnavailableError(HarstreamError):
    """Kafka cannot be reached."""

    retriable = True


def create_topics(settings: StreamSettings, timeout_s: float = 30.0) -> list[str]:
    """Create every harstream topic that does not exist yet; returns the ones created."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(**kafka_python_kwargs(settings, client_id="harstream-admin"))
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


#: Longest reason kept in a dead letter: enough for any message of ours, and bounded, so
#: an exception that quotes its input cannot make the dead letter too large to produce.
MAX_REASON_CHARS = 1000


def dead_letter(
    service: str,
    error: BaseException,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
) -> DeadLetter:
    """The dead-letter record of a message that failed with ``error``."""
    reason = str(error) or type(error).__name__
    if len(reason) > MAX_REASON_CHARS:
        reason = f"{reason[:MAX_REASON_CHARS]}… [{len(reason)} characters]"
    return DeadLetter(
        service=service,
        reason=reason,
        error_type=type(error).__name__,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        key=key,
        value=value,
        failed_at=time.time(),
    )
