"""The alerting service in-process against the real broker: predictions in (kafka-python),
alerts out on the topic, in the store, over the HTTP API and at a webhook receiver."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry

from services.alerting.app import AlertingService
from services.alerting.auth import create_operator
from services.alerting.settings import AlertingSettings
from services.alerting.store import PostgresAlertStore, open_store
from services.common.broker import free_port
from services.common.operators import Role
from shared.messages import Alert, AlertState, AlertType, DeadLetter
from tests.unit.alerting_helpers import IMPACT, LYING_STILL, WALKING, prediction

pytestmark = pytest.mark.integration

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
FAST_RULES = {"fall_confirm_s": 2.0, "fall_followup_s": 10.0}


class Receiver:
    """A webhook endpoint that answers 500 to the first attempt of each opened event."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, int, dict[str, Any]]] = []
        self._failed: set[str] = set()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        key = request.headers["Idempotency-Key"]
        body = await request.json()
        status = 200
        if key.endswith(":opened") and key not in self._failed:
            self._failed.add(key)
            status = 500
        self.requests.append((key, status, body))
        return web.Response(status=status)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def delivered(self) -> dict[str, int]:
        """Successful deliveries per Idempotency-Key."""
        out: dict[str, int] = {}
        for key, status, _ in self.requests:
            if status == 200:
                out[key] = out.get(key, 0) + 1
        return out


def _settings(
    stream_settings: Callable[..., AlertingSettings], store_url: str, **overrides: Any
) -> AlertingSettings:
    values: dict[str, Any] = {
        "group_id": f"alerting-{uuid.uuid4().hex[:8]}",
        "auto_offset_reset": "earliest",
        "host": "127.0.0.1",
        "port": 0,
        "store_url": store_url,
        "tick_interval_s": 0.2,
        "webhook_backoff_base_s": 0.2,
        "webhook_backoff_max_s": 1.0,
        "webhook_poll_interval_s": 0.1,
        "webhook_timeout_s": 2.0,
        "rules": FAST_RULES,
    }
    values.update(overrides)
    return stream_settings(AlertingSettings, **values)


def _produce(settings: AlertingSettings, messages: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    for key, value in messages:
        producer.send(settings.topics.predictions, key=key, value=value)
    producer.flush(10)
    producer.close()


def _fall_messages(device: str) -> list[tuple[bytes, bytes]]:
    """Walking, an impact, then ~8 s of lying still (device clock: replayed at full speed)."""
    windows = [prediction(i, "WALKING", WALKING, device=device) for i in range(3)]
    windows.append(prediction(3, "WALKING", IMPACT, device=device))
    windows += [prediction(i, "LAYING", LYING_STILL, device=device) for i in range(4, 10)]
    # At-least-once upstream: one window delivered twice.
    windows.insert(6, windows[5])
    return [(device.encode(), p.to_bytes()) for p in windows]


def _read_topic(
    settings: AlertingSettings, topic: str, done: Callable[[list[bytes]], bool], timeout_s: float
) -> list[bytes]:
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    consumer.assign([TopicPartition(topic, p) for p in range(settings.topic_partitions)])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not done(values):
            for records in consumer.poll(timeout_ms=200).values():
                values.extend(r.value for r in records)
    finally:
        consumer.close()
    return values


async def _eventually(check: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.1)


def _operators(store_url: str, **roles: Role) -> dict[str, dict[str, str]]:
    """Create operators ``name=role`` in the store; their Authorization headers by name."""
    store = open_store(store_url)
    try:
        keys = {name: create_operator(store, name, role)[1] for name, role in roles.items()}
    finally:
        store.close()
    return {n: {"Authorization": f"Bearer {k.get_secret_value()}"} for n, k in keys.items()}


def _sample(service: AlertingService, name: str, **labels: str) -> float:
    return service.registry.get_sample_value(name, labels) or 0.0


def test_fall_end_to_end_with_api_webhooks_and_dead_letters(
    stream_settings: Callable[..., AlertingSettings], tmp_path: Path
) -> None:
    asyncio.run(_end_to_end(stream_settings, tmp_path))


async def _end_to_end(stream_settings: Callable[..., AlertingSettings], tmp_path: Path) -> None:
    receiver = await Receiver().start()
    settings = _settings(
        stream_settings, f"sqlite:///{tmp_path / 'alerts.db'}", webhook_urls=receiver.url
    )
    auth = _operators(
        settings.store_url, nurse_ana=Role.CARER, nurse_bo=Role.CARER, display=Role.VIEWER
    )
    ana, bo, display = auth["nurse_ana"], auth["nurse_bo"], auth["display"]
    service = AlertingService(settings, CollectorRegistry())
    await service.start()
    try:
        poison = [(b"dev-fall", b"not a prediction")]
        walker = [
            (b"dev-walk", prediction(i, "WALKING", WALKING, device="dev-walk").to_bytes())
            for i in range(5)
        ]
        messages = _fall_messages("dev-fall") + poison + walker
        await asyncio.to_thread(_produce, settings, messages)
        base = f"http://127.0.0.1:{service.port}"
        async with aiohttp.ClientSession() as http:

            async def fall_alerts() -> list[dict[str, Any]]:
                async with http.get(
                    f"{base}/v1/alerts", params={"type": "FALL_SUSPECTED"}, headers=display
                ) as r:
                    assert r.status == 200
                    return list((await r.json())["alerts"])

            (alert,) = await _eventually(fall_alerts)
            alert_id = alert["alert_id"]
            assert alert["device_id"] == "dev-fall"
            assert alert["state"] == "open"
            assert alert["severity"] == "critical"
            assert alert["details"]["impact_g"] == pytest.approx(3.1)
            assert alert["reason"].startswith("impact 3.1 g, then lying/still")

            # Every good prediction judged, the duplicate ignored (counted with it), the poison
            # dead-lettered (counted once the DLQ acknowledged it: a later event).
            await _eventually(
                lambda: _sample(service, "harstream_alerting_predictions_total") == 16
            )
            assert _sample(service, "harstream_alerting_duplicate_predictions_total") == 1
            await _eventually(
                lambda: (
                    _sample(service, "harstream_dead_letters_total", error_type="SchemaError") == 1
                )
            )
            assert _sample(service, "harstream_alerting_devices_tracked") == 2

            # The retry after the 500 carried the same key and the same body.
            opened_key = f"{alert_id}:opened"
            await _eventually(lambda: receiver.delivered().get(opened_key) == 1)
            attempts = [(s, b) for k, s, b in receiver.requests if k == opened_key]
            assert [s for s, _ in attempts] == [500, 200]
            assert attempts[0][1] == attempts[1][1]
            assert attempts[1][1]["event"] == "opened"
            assert attempts[1][1]["alert"]["alert_id"] == alert_id

            # Unauthenticated, and a viewer: refused, nothing changes.
            async with http.post(f"{base}/v1/alerts/{alert_id}/ack") as r:
                assert r.status == 401
            async with http.post(f"{base}/v1/alerts/{alert_id}/ack", headers=display) as r:
                assert r.status == 403
            async with http.post(
                f"{base}/v1/alerts/{alert_id}/ack", json={"note": "on my way"}, headers=ana
            ) as r:
                assert r.status == 200
                acked = await r.json()
            assert acked["state"] == "acknowledged"
            assert acked["acknowledged_by"] == "nurse_ana"  # who authenticated
            async with http.post(f"{base}/v1/alerts/{alert_id}/ack", headers=bo) as r:
                assert r.status == 200  # a second tap changes nothing
                assert (await r.json())["acknowledged_by"] == "nurse_ana"
            async with http.get(f"{base}/v1/alerts/{alert_id}", headers=display) as r:
                assert (await r.json())["state"] == "acknowledged"
            async with http.get(
                f"{base}/v1/alerts", params={"state": "acknowledged"}, headers=display
            ) as r:
                assert [a["alert_id"] for a in (await r.json())["alerts"]] == [alert_id]

            async with http.post(f"{base}/v1/alerts/{alert_id}/resolve", headers=bo) as r:
                assert r.status == 200
                resolved = await r.json()
            assert resolved["state"] == "resolved"
            assert resolved["details"]["resolved_by"] == "nurse_bo"
            async with http.get(f"{base}/v1/alerts/{alert_id}/history", headers=display) as r:
                assert r.status == 200
                events = (await r.json())["events"]
            assert [(e["event"], e["operator"], e["note"]) for e in events] == [
                ("opened", None, None),
                ("acknowledged", "nurse_ana", "on my way"),
                ("resolved", "nurse_bo", None),
            ]
            for action in ("ack", "resolve"):
                async with http.post(f"{base}/v1/alerts/{alert_id}/{action}", headers=ana) as r:
                    assert r.status == 409
                    assert r.content_type == "application/problem+json"
            async with http.post(f"{base}/v1/alerts/nope/ack", headers=ana) as r:
                assert r.status == 404
            async with http.get(f"{base}/v1/alerts/nope", headers=display) as r:
                assert r.status == 404
            async with http.get(f"{base}/v1/alerts/nope/history", headers=display) as r:
                assert r.status == 404
            async with http.get(
                f"{base}/v1/alerts", params={"state": "closed"}, headers=display
            ) as r:
                assert r.status == 400
                problem = await r.json(content_type=None)
                assert "state must be one of" in problem["detail"]
            async with http.get(f"{base}/v1/alerts", params={"limit": "0"}, headers=display) as r:
                assert r.status == 400
            async with http.post(
                f"{base}/v1/alerts/{alert_id}/ack", data=b"{oops", headers=ana
            ) as r:
                assert r.status == 400
            # A name in the body is refused: the operator is who authenticated.
            async with http.post(
                f"{base}/v1/alerts/{alert_id}/ack", json={"by": "nurse_bo"}, headers=ana
            ) as r:
                assert r.status == 400

            async with http.get(f"{base}/readyz") as r:
                assert r.status == 200
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200
            async with http.get(f"{base}/metrics") as r:
                text = await r.text()
            assert 'harstream_alerts_total{state="open",type="FALL_SUSPECTED"} 1.0' in text
            assert 'harstream_alerts_open{type="FALL_SUSPECTED"} 0.0' in text

        # Exactly one successful delivery per event, each under its own key.
        keys = {f"{alert_id}:{e}" for e in ("opened", "acknowledged", "resolved")}
        await _eventually(lambda: set(receiver.delivered()) == keys)
        assert receiver.delivered() == dict.fromkeys(keys, 1)
        assert _sample(service, "harstream_webhook_deliveries_total", outcome="retried") == 1
        assert _sample(service, "harstream_webhook_deliveries_total", outcome="delivered") == 3

        # The alerts topic has the three events in order, keyed by device.
        def three(values: list[bytes]) -> bool:
            return len(values) >= 3

        events = await asyncio.to_thread(_read_topic, settings, settings.topics.alerts, three, 20)
        alerts = [Alert.from_bytes(v) for v in events]
        assert [(a.alert_id, a.state) for a in alerts] == [
            (alert_id, AlertState.OPEN),
            (alert_id, AlertState.ACKNOWLEDGED),
            (alert_id, AlertState.RESOLVED),
        ]
        assert alerts[1].acknowledged_by == "nurse_ana"

        dead = await asyncio.to_thread(
            _read_topic, settings, settings.topics.dlq, lambda v: len(v) >= 1, 20
        )
        (letter,) = [DeadLetter.from_bytes(v) for v in dead]
        assert letter.service == "alerting"
        assert letter.error_type == "SchemaError"
        assert letter.value == b"not a prediction"
        assert letter.source_topic == settings.topics.predictions
    finally:
        await service.stop()
        await receiver.stop()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    schema = f"test_alerting_{uuid.uuid4().hex[:10]}"
    yield schema
    PostgresAlertStore(PG_URL, schema).drop()


def test_restart_on_postgres_does_not_open_the_fall_twice(
    stream_settings: Callable[..., AlertingSettings], pg_schema: str
) -> None:
    asyncio.run(_restart(stream_settings, pg_schema))


async def _restart(stream_settings: Callable[..., AlertingSettings], schema: str) -> None:
    first = _settings(stream_settings, PG_URL, store_schema=schema)
    await asyncio.to_thread(_produce, first, _fall_messages("dev-7"))
    service = AlertingService(first, CollectorRegistry())
    await service.start()
    try:
        assert service.store is not None
        store = service.store
        await _eventually(lambda: store.list_alerts(kind=AlertType.FALL_SUSPECTED))
    finally:
        await service.stop()

    # A new group replays the whole topic: a superset of what a crash before commit replays.
    again = _settings(stream_settings, PG_URL, store_schema=schema)
    restarted = AlertingService(again, CollectorRegistry())
    await restarted.start()
    try:
        await _eventually(lambda: _sample(restarted, "harstream_alerting_predictions_total") == 11)
        assert restarted.store is not None
        falls = restarted.store.list_alerts(kind=AlertType.FALL_SUSPECTED)
        assert len(falls) == 1
        assert falls[0].state is AlertState.OPEN
        assert (
            _sample(restarted, "harstream_alerts_total", type="FALL_SUSPECTED", state="open") == 0
        )
        assert _sample(restarted, "harstream_alerts_open", type="FALL_SUSPECTED") == 1
    finally:
        await restarted.stop()
    events = await asyncio.to_thread(
        _read_topic, first, first.topics.alerts, lambda v: len(v) >= 2, 3
    )
    assert len(events) == 1  # opened once, published once


def test_cli_runs_from_env_and_stops_cleanly_on_sigterm(
    stream_settings: Callable[..., AlertingSettings], tmp_path: Path
) -> None:
    settings = _settings(stream_settings, f"sqlite:///{tmp_path / 'alerts.db'}")
    port = free_port()
    env = {
        **os.environ,
        "HARSTREAM_ALERTING_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "HARSTREAM_ALERTING_KAFKA_PROFILE": "tansu",
        "HARSTREAM_ALERTING_TOPIC_PREFIX": settings.topic_prefix,
        "HARSTREAM_ALERTING_GROUP_ID": settings.group_id,
        "HARSTREAM_ALERTING_HOST": "127.0.0.1",
        "HARSTREAM_ALERTING_PORT": str(port),
        "HARSTREAM_ALERTING_STORE_URL": settings.store_url,
    }
    harstream = Path(sys.executable).with_name("harstream")
    process = subprocess.Popen([str(harstream), "alerting"], env=env)
    try:
        deadline = time.monotonic() + 30
        ready = False
        while time.monotonic() < deadline and not ready:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    ready = r.status == 200
            except OSError:
                time.sleep(0.2)
        assert ready, "never ready"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
