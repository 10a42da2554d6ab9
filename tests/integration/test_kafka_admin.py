"""The admin client of :mod:`services.common.kafka.admin` against a real broker and against
an address where none answers: a failed constructor leaves no I/O thread behind."""

from __future__ import annotations

import threading

import pytest
from kafka import KafkaAdminClient  # type: ignore[import-untyped]
from kafka.errors import KafkaError  # type: ignore[import-untyped]

from services.common.broker import EmbeddedBroker, free_port
from services.common.kafka.admin import AdminClient

pytestmark = pytest.mark.integration


def io_threads(client_id: str) -> int:
    name = f"kafka-io-{client_id}"
    return sum(1 for t in threading.enumerate() if t.name == name and t.is_alive())


def nobody_at() -> str:
    return f"127.0.0.1:{free_port()}"


def test_a_client_that_cannot_bootstrap_stops_its_io_thread() -> None:
    for _ in range(3):
        with pytest.raises(KafkaError):
            AdminClient(
                bootstrap_servers=nobody_at(), client_id="admin-test-down", bootstrap_timeout_ms=300
            )
    assert io_threads("admin-test-down") == 0


def test_kafka_python_still_leaks_the_thread_the_subclass_stops() -> None:
    """Why AdminClient exists. When an upgrade makes this fail, kafka-python cleans up
    after itself and AdminClient can go."""
    with pytest.raises(KafkaError):
        KafkaAdminClient(
            bootstrap_servers=nobody_at(), client_id="admin-test-upstream", bootstrap_timeout_ms=300
        )
    assert io_threads("admin-test-upstream") == 1


def test_a_client_that_bootstraps_works_and_closes(broker: EmbeddedBroker) -> None:
    admin = AdminClient(bootstrap_servers=broker.bootstrap_servers, client_id="admin-test-up")
    try:
        assert isinstance(admin.list_topics(), list)
        assert io_threads("admin-test-up") == 1
    finally:
        admin.close()
    assert io_threads("admin-test-up") == 0
