"""Webhook dispatcher against a local aiohttp receiver and a SQLite outbox (no broker)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from services.alerting.lifecycle import open_alert
from services.alerting.metrics import create
from services.alerting.store import SqliteAlertStore
from services.alerting.webhooks import WebhookDispatcher
from shared.messages import AlertType

pytestmark = pytest.mark.integration


def test_retries_honour_retry_after_then_give_up_or_fail_fast(tmp_path: Path) -> None:
    asyncio.run(_scenario(tmp_path))


async def _scenario(tmp_path: Path) -> None:
    seen: dict[str, list[float]] = {}

    async def busy(request: web.Request) -> web.Response:
        seen.setdefault("busy", []).append(time.monotonic())
        return web.Response(status=429, headers={"Retry-After": "1"})

    async def down(request: web.Request) -> web.Response:
        seen.setdefault("down", []).append(time.monotonic())
        return web.Response(status=503)

    async def gone(request: web.Request) -> web.Response:
        seen.setdefault("gone", []).append(time.monotonic())
        return web.Response(status=410)

    app = web.Application()
    app.router.add_post("/busy", busy)
    app.router.add_post("/down", down)
    app.router.add_post("/gone", gone)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    # Nobody listens on port 9 (discard): connection refused is a network error, retried.
    urls = [f"{base}/busy", f"{base}/down", f"{base}/gone", "http://127.0.0.1:9/closed"]

    store = SqliteAlertStore(tmp_path / "alerts.db")
    registry = CollectorRegistry()
    metrics = create(registry)
    dispatcher = WebhookDispatcher(
        store,
        metrics,
        timeout_s=1.0,
        max_attempts=3,
        backoff_base_s=0.05,
        backoff_max_s=2.0,
        concurrency=4,
        poll_interval_s=0.05,
    )
    opened = open_alert("dev-1", AlertType.SENSOR_FAULT, "flatline", time.time(), {})
    store.record([opened], urls)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if all(r["status"] != "pending" for r in store.deliveries()):
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task
    await runner.cleanup()

    final = {r["url"].rsplit("/", 1)[1]: (r["status"], r["attempts"]) for r in store.deliveries()}
    assert final == {
        "busy": ("failed", 3),
        "down": ("failed", 3),
        "gone": ("failed", 1),  # a 4xx other than 408/429 is not retried
        "closed": ("failed", 3),
    }
    gaps = [b - a for a, b in zip(seen["busy"], seen["busy"][1:], strict=False)]
    assert all(gap >= 0.9 for gap in gaps), gaps  # Retry-After: 1 was honoured
    assert len(seen["down"]) == 3
    assert len(seen["gone"]) == 1

    def sample(outcome: str) -> float:
        value = registry.get_sample_value(
            "harstream_webhook_deliveries_total", {"outcome": outcome}
        )
        return value or 0.0

    assert sample("failed") == 4
    assert sample("retried") == 6
    assert sample("delivered") == 0
    assert registry.get_sample_value("harstream_webhook_delivery_seconds_count") == 10
    store.close()
