"""harstream's Kafka clients over TLS and SASL/SCRAM, for real.

The broker is the embedded Tansu behind :class:`~services.common.kafka_gateway.
SecurityGateway` (TLS by OpenSSL through Python's ``ssl``, SCRAM-SHA-512/256 as Kafka does
it), because this Tansu build can serve neither (see that module). Every client here is the
real library (kafka-python, aiokafka, faust) configured only through
:mod:`services.common.kafka.clients`; the services are the real ingest app and the real
``harstream preprocess`` worker. What this cannot show: broker-side ACLs (Tansu has none;
the KafkaUser ACLs are checked in the rendered manifests, tests/integration/
test_deploy_manifests.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError as AioKafkaError  # type: ignore[import-untyped]
from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # type: ignore[import-untyped]
from kafka.errors import KafkaError  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry

from services.common.broker import EmbeddedBroker, free_port
from services.common.kafka.clients import (
    aiokafka_consumer_kwargs,
    aiokafka_kwargs,
    kafka_python_kwargs,
)
from services.common.kafka.topics import create_topics
from services.ingest.app import create_app
from services.ingest.registry import SqliteRegistry
from services.ingest.settings import IngestSettings
from services.preprocess.settings import PreprocessSettings
from shared.messages import RawPacket, WindowMessage
from shared.settings import StreamSettings
from tests.integration.ingest_helpers import IngestTestServer, auth, packet
from tests.integration.pki import Pki, make_pki
from tests.integration.test_preprocess_worker import Worker, packets_of

pytestmark = pytest.mark.integration

PASSWORDS = {"harstream-ingest": "ingest-Secret-1", "harstream-preprocess": "pp-Secret-2"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("tansu-secure") / "tansu.log"
    with EmbeddedBroker(log_path=log, tls=pki.server_context(), scram_users=PASSWORDS) as broker:
        yield broker


@pytest.fixture
def secure_settings(secure_broker: EmbeddedBroker, pki: Pki, tmp_path: Path) -> Callable[..., Any]:
    prefix = f"sec-{uuid.uuid4().hex[:8]}"

    def make(
        cls: type[StreamSettings] = StreamSettings,
        user: str = "harstream-ingest",
        **overrides: Any,
    ) -> Any:
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": secure_broker.bootstrap_servers,
            "kafka_profile": "tansu",
            "topic_prefix": prefix,
            "topic_partitions": 2,
            "kafka_security_protocol": "SASL_SSL",
            "kafka_ssl_cafile": pki.ca,
            "kafka_sasl_username": user,
            "kafka_sasl_password": PASSWORDS.get(user, "unknown"),
        }
        values.update(overrides)
        return cls(**values)

    return make


def _read_all(settings: StreamSettings, topic: str, expected: int, timeout_s: float) -> list[Any]:
    consumer = KafkaConsumer(**kafka_python_kwargs(settings, enable_auto_commit=False))
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def test_kafka_python_admin_producer_and_consumer_over_sasl_ssl(
    secure_settings: Callable[..., StreamSettings], secure_broker: EmbeddedBroker
) -> None:
    settings = secure_settings(kafka_sasl_mechanism="SCRAM-SHA-512")
    assert secure_broker.gateway is not None
    before = len(secure_broker.gateway.authenticated)
    assert set(create_topics(settings)) == set(settings.topics.all())
    producer = KafkaProducer(**kafka_python_kwargs(settings, acks="all"))
    try:
        meta = producer.send(settings.topics.raw, key=b"dev", value=b"over-tls").get(10)
    finally:
        producer.close()
    records = _read_all(settings, settings.topics.raw, 1, 10)
    assert [(r.key, r.value) for r in records] == [(b"dev", b"over-tls")]
    assert records[0].offset == meta.offset
    assert secure_broker.gateway.authenticated[before:].count("harstream-ingest") >= 3


def test_aiokafka_group_consumer_and_producer_over_sasl_ssl_scram_sha_256(
    secure_settings: Callable[..., StreamSettings],
) -> None:
    settings = secure_settings(kafka_sasl_mechanism="SCRAM-SHA-256")
    create_topics(settings)

    async def scenario() -> list[bytes]:
        producer = AIOKafkaProducer(**aiokafka_kwargs(settings, acks="all"))
        await producer.start()
        try:
            for i in range(5):
                await producer.send_and_wait(settings.topics.windows, f"w{i}".encode(), b"dev")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            settings.topics.windows,
            **aiokafka_consumer_kwargs(
                settings, group_id=f"g-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest"
            ),
        )
        await consumer.start()
        values: list[bytes] = []
        try:
            deadline = time.monotonic() + 30
            while len(values) < 5 and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=300)
                values += [r.value for records in batches.values() for r in records]
            await consumer.commit()  # the group's offsets, through SASL_SSL too
        finally:
            await consumer.stop()
        return values

    assert sorted(asyncio.run(scenario())) == [f"w{i}".encode() for i in range(5)]


def test_ingest_service_writes_the_raw_topic_over_sasl_ssl(
    secure_settings: Callable[..., IngestSettings], tmp_path: Path
) -> None:
    registry = SqliteRegistry(tmp_path / "devices.db")
    _, token = registry.add("dev-1")
    settings = secure_settings(
        IngestSettings, registry_url=f"sqlite:///{registry.path}", produce_timeout_s=5.0
    )
    create_topics(settings)

    async def scenario() -> None:
        from aiohttp.test_utils import TestClient

        app = create_app(settings, registry=registry, metrics_registry=CollectorRegistry())
        async with TestClient(IngestTestServer(app)) as client:
            deadline = time.monotonic() + 20
            while (ready := await client.get("/readyz")).status != 200:
                assert time.monotonic() < deadline, await ready.text()
                await asyncio.sleep(0.1)
            response = await client.post(
                "/v1/packets", json=packet("dev-1", 0), headers=auth(token)
            )
            assert response.status == 202, await response.text()

    asyncio.run(scenario())
    records = _read_all(settings, settings.topics.raw, 1, 10)
    assert len(records) == 1 and records[0].key == b"dev-1"
    assert RawPacket.from_bytes(records[0].value).device_id == "dev-1"


def test_preprocess_worker_faust_over_sasl_ssl_with_a_password_file(
    secure_settings: Callable[..., PreprocessSettings], tmp_path: Path
) -> None:
    """The real ``harstream preprocess`` (faust) reads raw and writes windows over SASL_SSL,
    its password read from a file as from a mounted Secret."""
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORDS["harstream-preprocess"] + "\n")
    password_file.chmod(0o600)
    settings = secure_settings(
        PreprocessSettings,
        user="harstream-preprocess",
        kafka_sasl_password=None,
        kafka_sasl_password_file=password_file,
        app_id=f"pp-{uuid.uuid4().hex[:8]}",
        data_dir=tmp_path / "state",
        metrics_host="127.0.0.1",
        metrics_port=free_port(),
    )
    create_topics(settings)
    rng = np.random.default_rng(3)
    samples = rng.normal(0, 0.5, (50 * 8, 6))
    producer = KafkaProducer(**kafka_python_kwargs(settings, acks="all"))
    try:
        for p in packets_of(samples, "dev-9"):
            producer.send(settings.topics.raw, key=b"dev-9", value=p.to_bytes())
        producer.flush(10)
    finally:
        producer.close()
    worker = Worker(settings, tmp_path / "worker.log")
    try:
        windows = _read_all(settings, settings.topics.windows, 2, 60)
        assert len(windows) >= 2, worker.tail()
        assert WindowMessage.from_bytes(windows[0].value).device_id == "dev-9"
    finally:
        if worker.process.poll() is None:
            worker.stop()
    assert "pp-Secret-2" not in worker.log.read_text(errors="replace")


def test_wrong_password_is_refused(
    secure_settings: Callable[..., StreamSettings], secure_broker: EmbeddedBroker
) -> None:
    assert secure_broker.gateway is not None
    refused = secure_broker.gateway.refused
    bad = secure_settings(kafka_sasl_password="not-the-password")
    with pytest.raises(KafkaError):
        KafkaProducer(**kafka_python_kwargs(bad, bootstrap_timeout_ms=3000))

    async def aio() -> None:
        producer = AIOKafkaProducer(**aiokafka_kwargs(bad, request_timeout_ms=3000))
        try:
            await producer.start()
        finally:
            await producer.stop()

    with pytest.raises(AioKafkaError):
        asyncio.run(aio())
    unknown = secure_settings(user="nobody")
    with pytest.raises(KafkaError):
        KafkaProducer(**kafka_python_kwargs(unknown, bootstrap_timeout_ms=3000))
    assert secure_broker.gateway.refused > refused
    assert "nobody" not in secure_broker.gateway.authenticated


def test_plaintext_and_tls_without_sasl_are_refused(
    secure_settings: Callable[..., StreamSettings], secure_broker: EmbeddedBroker
) -> None:
    plain = StreamSettings(kafka_bootstrap_servers=secure_broker.bootstrap_servers)
    with pytest.raises(KafkaError):  # a Kafka request where a TLS handshake must come
        KafkaProducer(**kafka_python_kwargs(plain, bootstrap_timeout_ms=3000))
    tls_only = secure_settings(
        kafka_security_protocol="SSL", kafka_sasl_username=None, kafka_sasl_password=None
    )
    with pytest.raises(KafkaError):  # TLS but no SASL: refused before any other request
        KafkaProducer(**kafka_python_kwargs(tls_only, bootstrap_timeout_ms=3000))


def test_a_broker_certificate_from_another_ca_is_refused(
    secure_settings: Callable[..., StreamSettings], pki: Pki
) -> None:
    distrusting = secure_settings(kafka_ssl_cafile=pki.other_ca)
    with pytest.raises(KafkaError):
        KafkaProducer(**kafka_python_kwargs(distrusting, bootstrap_timeout_ms=3000))


def test_mutual_tls_needs_the_client_certificate(pki: Pki, tmp_path: Path) -> None:
    with EmbeddedBroker(
        log_path=tmp_path / "tansu.log", tls=pki.server_context(require_client_cert=True)
    ) as broker:
        base: dict[str, Any] = {
            "kafka_bootstrap_servers": broker.bootstrap_servers,
            "kafka_security_protocol": "SSL",
            "kafka_ssl_cafile": pki.ca,
            "topic_prefix": f"mtls-{uuid.uuid4().hex[:8]}",
            "topic_partitions": 1,
        }
        anonymous = StreamSettings(**base)
        with pytest.raises(KafkaError):
            KafkaProducer(**kafka_python_kwargs(anonymous, bootstrap_timeout_ms=3000))
        settings = StreamSettings(
            **base, kafka_ssl_certfile=pki.client_cert, kafka_ssl_keyfile=pki.client_key
        )
        create_topics(settings)
        producer = KafkaProducer(**kafka_python_kwargs(settings))
        try:
            producer.send(settings.topics.raw, b"mtls").get(10)
        finally:
            producer.close()
        assert [r.value for r in _read_all(settings, settings.topics.raw, 1, 10)] == [b"mtls"]


def test_the_password_appears_in_no_log_record(
    secure_settings: Callable[..., StreamSettings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = secure_settings()
    create_topics(settings)
    producer = KafkaProducer(**kafka_python_kwargs(settings))
    try:
        producer.send(settings.topics.raw, b"x").get(10)
    finally:
        producer.close()
    assert caplog.records, "expected the clients' debug logs"
    assert PASSWORDS["harstream-ingest"] not in caplog.text
    assert PASSWORDS["harstream-ingest"] not in repr(settings)
