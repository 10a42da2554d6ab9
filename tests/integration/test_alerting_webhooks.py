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
        give_up_after_s=2.5,
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
    assert {name: status for name, (status, _) in final.items()} == {
        "busy": "failed",
        "down": "failed",
        "gone": "failed",
        "closed": "failed",
    }
    # Retried until give_up_after_s had passed; a 4xx other than 408/429 is not retried.
    assert final["gone"][1] == 1
    assert all(final[name][1] >= 3 for name in ("busy", "down", "closed")), final
    gaps = [b - a for a, b in zip(seen["busy"], seen["busy"][1:], strict=False)]
    assert all(gap >= 0.9 for gap in gaps), gaps  # Retry-After: 1 was honoured
    assert len(seen["down"]) == final["down"][1]
    assert len(seen["gone"]) == 1
    attempts = sum(n for _, n in final.values())

    def sample(outcome: str) -> float:
        value = registry.get_sample_value(
            "harstream_webhook_deliveries_total", {"outcome": outcome}
        )
        return value or 0.0

    assert sample("failed") == 4
    assert sample("retried") == attempts - 4
    assert sample("delivered") == 0
    assert registry.get_sample_value("harstream_webhook_delivery_seconds_count") == attempts
    store.close()


def test_a_receiver_down_for_many_attempts_still_gets_the_alert(tmp_path: Path) -> None:
    """Retries are bounded by time, not by a count: the fault suite's receiver, down 2 min,
    lost a DEVICE_OFFLINE notification when 8 attempts had run out after 78 s."""
    asyncio.run(_outage(tmp_path))


async def _outage(tmp_path: Path) -> None:
    refusals_left = 12  # more attempts than any count-based budget we ever had (8)
    delivered = asyncio.Event()
    keys: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        nonlocal refusals_left
        if refusals_left > 0:
            refusals_left -= 1
            return web.Response(status=503)
        keys.append(request.headers["Idempotency-Key"])
        delivered.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"

    store = SqliteAlertStore(tmp_path / "alerts.db")
    dispatcher = WebhookDispatcher(
        store,
        create(CollectorRegistry()),
        timeout_s=1.0,
        give_up_after_s=3600.0,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        concurrency=1,
        poll_interval_s=0.01,
    )
    opened = open_alert("dev-1", AlertType.DEVICE_OFFLINE, "no data", time.time(), {})
    store.record([opened], [url])
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    await asyncio.wait_for(delivered.wait(), timeout=60)
    stop.set()  # the dispatcher lets the POST in flight finish and record its outcome
    await task
    await runner.cleanup()

    (row,) = store.deliveries()
    assert (row["status"], row["attempts"]) == ("delivered", 13)
    assert keys == [f"{opened.alert.alert_id}:opened"]
    store.close()
