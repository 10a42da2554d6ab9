"""Fixtures for tests against real local services: the embedded Kafka broker (Tansu) runs
once per session on a free port; each test gets its own topic prefix and group ids."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.common.broker import EmbeddedBroker
from services.common.kafka.topics import create_topics
from services.ingest.registry import SqliteRegistry
from services.ingest.settings import IngestSettings
from services.modelserver.process import ModelServerProcess
from shared.settings import StreamSettings

REPO_ROOT = Path(__file__).resolve().parents[2]


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


@pytest.fixture(scope="session")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServerProcess]:
    """``harstream modelserver`` (TF Serving's gRPC/REST API) on free ports for the session.

    Serves model ``har`` from a temp copy of ``models/har/1`` (``.base_path``; polled every
    0.5 s, so versions added there are picked up). Attributes: ``.grpc_target``
    ("127.0.0.1:PORT"), ``.rest_url``, ``.model_name``, ``.base_path``, ``.pid``, ``.log_path``.
    Stopped with SIGTERM at the end of the session.
    """
    root = tmp_path_factory.mktemp("modelserver")
    base_path = root / "har"
    shutil.copytree(REPO_ROOT / "models" / "har" / "1", base_path / "1")
    with ModelServerProcess(base_path, "har", log_path=root / "modelserver.log") as running:
        yield running


@pytest.fixture
def registry(tmp_path: Path) -> SqliteRegistry:
    """The ingest tests' device registry (SQLite, this test's own file)."""
    return SqliteRegistry(tmp_path / "devices.db")


@pytest.fixture
def make_settings(
    stream_settings: Callable[..., Any], registry: SqliteRegistry
) -> Callable[..., IngestSettings]:
    """Ingest settings on the test broker and ``registry``, with short produce and token
    cache timeouts; keyword arguments override."""

    def make(**overrides: Any) -> IngestSettings:
        values: dict[str, Any] = {
            "registry_url": f"sqlite:///{registry.path}",
            "produce_timeout_s": 2.0,
            "token_cache_ttl_s": 0.5,
        }
        values.update(overrides)
        settings: IngestSettings = stream_settings(IngestSettings, **values)
        return settings

    return make
