"""The open routes of a worker's HTTP API: ``/healthz``, ``/readyz`` and ``/metrics``.

``/healthz`` answers as soon as the listener is up (the process lives); ``/readyz`` is 200
only when every check of ``readiness()`` is true, else 503 with the checks, so an
orchestrator sends no traffic to a worker that has no partitions or no store yet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class Probed(Protocol):
    registry: CollectorRegistry

    async def readiness(self) -> dict[str, bool]:
        """Each check's name and whether it passes."""


def add_probe_routes(routes: web.RouteTableDef, backend: Probed) -> None:
    """Add ``GET /healthz``, ``GET /readyz`` (``backend.readiness()``) and ``GET /metrics``
    (``backend.registry``) to ``routes``."""

    @routes.get("/healthz")
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    @routes.get("/readyz")
    async def readyz(_: web.Request) -> web.Response:
        checks = await backend.readiness()
        ready = all(checks.values())
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status=200 if ready else 503,
        )

    @routes.get("/metrics")
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(backend.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


async def worker_readiness(
    consumer: Any,
    ping: Callable[[], None] | None,
    store_error: type[Exception],
    stop: asyncio.Event,
) -> dict[str, bool]:
    """The readiness checks of a checkpointing Kafka worker: its consumer (an aiokafka
    consumer, or None before it started) has partitions, its store answers ``ping()`` (in
    a thread; ``store_error`` or no store yet: not ready), and it is not stopping."""
    assigned = bool(consumer is not None and consumer.assignment())
    store_ok = False
    if ping is not None:
        try:
            await asyncio.to_thread(ping)
            store_ok = True
        except store_error:
            store_ok = False
    return {"consumer_assigned": assigned, "store": store_ok, "running": not stop.is_set()}
