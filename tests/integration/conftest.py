"""Fixtures for tests against real local services: the embedded Kafka broker (Tansu) runs
once per session on a free port; each test gets its own topic prefix and group ids."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from services.common.broker import EmbeddedBroker
from services.common.kafka import create_topics
from shared.settings import StreamSettings


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A real Kafka-protocol broker for the whole session. Missing binary = failure, not skip."""
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as running:
        yield running


@pytest.fixture
def unique_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def stream_settings(broker: EmbeddedBroker, unique_id: str) -> Callable[..., StreamSettings]:
    """Factory: ``stream_settings(SettingsClass, **overrides)`` on this test's own topics
    (created on first call), tansu profile, 4 partitions."""
    created: set[str] = set()

    def make(cls: type[StreamSettings] = StreamSettings, **overrides: object) -> StreamSettings:
        values: dict[str, object] = {
            "kafka_bootstrap_servers": broker.bootstrap_servers,
            "kafka_profile": "tansu",
            "topic_prefix": f"test-{unique_id}",
            "topic_partitions": 4,
        }
        values.update(overrides)
        settings = cls(**values)  # type: ignore[arg-type]
        if settings.topic_prefix not in created:
            create_topics(settings)
            created.add(settings.topic_prefix)
        return settings

    return make
