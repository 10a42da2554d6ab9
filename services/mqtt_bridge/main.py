"""``harstream mqtt-bridge``: settings → Kafka producer, health listener, bridge → run until
SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable

from aiohttp import web
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from services.common import eventloop
from services.common.http_server import problem_response
from services.common.kafka.clients import aiokafka_producer_kwargs, describe
from services.ingest.server import problem_document
from services.mqtt_bridge import metrics as bridge_metrics
from services.mqtt_bridge.bridge import SERVICE, MqttBridge
from services.mqtt_bridge.settings import MqttBridgeSettings

logger = logging.getLogger(__name__)


def producer_for(settings: MqttBridgeSettings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **aiokafka_producer_kwargs(
            settings, client_id=f"harstream-{SERVICE}", linger_ms=settings.producer_linger_ms
        )
    )


def health_app(bridge: MqttBridge, registry: CollectorRegistry) -> web.Application:
    """/healthz (the process answers), /readyz (subscribed and Kafka acknowledging; else a
    503 problem document saying why) and /metrics."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        reason = bridge.not_ready_reason()
        if reason is None:
            return web.json_response({"status": "ready"})
        return problem_response(problem_document, 503, "not_ready", reason)

    async def metrics(_request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(registry))
        response.content_type = CONTENT_TYPE_LATEST.partition(";")[0]
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(
    settings: MqttBridgeSettings,
    stop: asyncio.Event,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], float] = time.time,
) -> None:
    """Run the bridge until ``stop`` is set (``clock``: the records' ``received_at``)."""
    registry = registry or CollectorRegistry()
    producer = producer_for(settings)
    metrics = bridge_metrics.create(registry)

    async def probe_kafka() -> None:
        # A metadata request answered by a broker: Kafka is back (records may follow).
        await producer.client.fetch_all_metadata()

    bridge = MqttBridge(settings, producer, metrics, probe_kafka, clock)
    runner: web.AppRunner | None = None
    if settings.health_port:
        runner = web.AppRunner(health_app(bridge, registry), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.health_host, settings.health_port).start()
        logger.info(
            "health and metrics on http://%s:%d/", settings.health_host, settings.health_port
        )
    logger.info("Kafka: %s, raw topic %s", describe(settings), settings.topics.raw)
    # aiokafka's start() retries its bootstrap internally only briefly: retry until stopped.
    while not stop.is_set():
        try:
            await producer.start()
            break
        except Exception as exc:
            logger.warning("Kafka not reachable yet (%s); retrying", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)
    try:
        if not stop.is_set():
            await bridge.run(stop)
    finally:
        await asyncio.wait_for(producer.stop(), settings.shutdown_timeout_s)
        if runner is not None:
            await runner.cleanup()


def run(settings: MqttBridgeSettings) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    eventloop.run(main(), settings.event_loop)
