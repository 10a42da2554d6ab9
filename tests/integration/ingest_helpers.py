"""Helpers of the ingest integration tests: the registry and settings fixtures, packet
bodies, the test server, reading the raw topic.
(The ``registry`` and ``make_settings`` fixtures are in conftest.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import numpy as np
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from services.ingest.app import SERVICE_KEY, create_app, create_metrics_app, make_runner
from services.ingest.registry import SqliteRegistry
from services.ingest.settings import IngestSettings

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class IngestTestServer(TestServer):
    """aiohttp's test server, serving the app the way ``harstream ingest`` does: problem
    documents for parser refusals, handlers not cancelled when a client goes away."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        kwargs["handler_cancellation"] = False  # as web.run_app and `harstream ingest`
        return make_runner(self.app, self.app[SERVICE_KEY].settings, **kwargs)


@asynccontextmanager
async def serve(
    settings: IngestSettings, registry: SqliteRegistry, wait_ready: bool = True
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The ingest app on a test server, by default once /readyz says ready."""
    app = create_app(settings, registry=registry, metrics_registry=CollectorRegistry())
    async with TestClient(IngestTestServer(app)) as client:
        if wait_ready:
            deadline = time.monotonic() + 15
            while True:
                response = await client.get("/readyz")
                if response.status == 200:
                    break
                assert time.monotonic() < deadline, await response.text()
                await asyncio.sleep(0.1)
        yield client


def metric(client: TestClient[web.Request, web.Application], name: str, **labels: str) -> float:
    """A sample of the served app's own metrics registry (0 before it was first counted)."""
    service = client.server.app[SERVICE_KEY]  # type: ignore[union-attr]
    value = service.metrics_registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


async def scrape(app: web.Application) -> str:
    """The text of ``app``'s /metrics, from the metrics listener (not the device port)."""
    async with TestClient(IngestTestServer(create_metrics_app(app))) as client:
        response = await client.get("/metrics")
        assert response.status == 200, await response.text()
        return await response.text()


def packet(
    device_id: str, seq: int = 0, n: int = 50, first: float | None = None, seed: int = 0
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    # Values with full float64 mantissas, so "bit-exact" means something.
    samples = np.column_stack([rng.normal(0, 0.6, (n, 3)), rng.normal(0, 1.5, (n, 3))])
    return {
        "device_id": device_id,
        "seq": seq,
        "first_sample_time": time.time() - 60.0 + seq if first is None else first,
        "sample_rate_hz": 50.0,
        "samples": samples.tolist(),
    }


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def read_raw(settings: IngestSettings, expected: int, timeout_s: float = 10.0) -> list[Any]:
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        consumer_timeout_ms=500,
    )
    try:
        parts = [TopicPartition(settings.topics.raw, p) for p in range(settings.topic_partitions)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()
