"""Reading a topic from the beginning in tests, without a consumer group (no join delay)."""

from __future__ import annotations

import time

from kafka import KafkaConsumer, TopicPartition

from shared.settings import StreamSettings


def read_topic(
    settings: StreamSettings,
    topic: str,
    count: int,
    key: bytes | None = None,
    timeout_s: float = 60.0,
) -> list[tuple[bytes | None, bytes]]:
    """The first ``count`` records of ``topic`` (only those with ``key`` if given), in
    partition order; fails if they do not arrive within ``timeout_s``. Waits 1 s more to
    catch surplus records (duplicates) and returns those too."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False, group_id=None
    )
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        found: list[tuple[bytes | None, bytes]] = []
        deadline = time.monotonic() + timeout_s
        settle_until: float | None = None
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                found.extend((r.key, r.value) for r in records if key is None or r.key == key)
            if len(found) >= count:
                settle_until = settle_until or time.monotonic() + 1.0
                if time.monotonic() >= settle_until:
                    return found
        raise AssertionError(f"{len(found)} of {count} records on {topic} after {timeout_s:.0f} s")
    finally:
        consumer.close()
