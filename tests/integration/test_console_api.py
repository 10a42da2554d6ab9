"""The web console's HTTP side on the running alerting service (issue 12, §2): login with
the alert API's operators, the session cookie, CSRF on every state-changing request, roles,
revocation, the failed-login limit, live updates over server-sent events, and problem
documents for bad input. The browser drives the same routes in test_console_browser.py."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from prometheus_client import CollectorRegistry

from services.alerting.app import AlertingService
from services.alerting.auth import create_operator
from services.alerting.lifecycle import open_alert
from services.alerting.settings import AlertingSettings
from services.alerting.store import AlertStore, open_store
from services.common.broker import EmbeddedBroker
from services.common.kafka.topics import create_topics
from services.common.operators import Role
from shared.messages import AlertType

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"
#: Failed logins an address may make before 429 (the limit's own test spends them last).
BURST = 6


@dataclass
class Running:
    base: str
    store: AlertStore
    service: AlertingService

    def operator(self, role: Role) -> str:
        name = f"{role.value}-{uuid.uuid4().hex[:6]}"
        create_operator(self.store, name, role, PASSWORD)
        return name

    def login(self, name: str, password: str = PASSWORD) -> tuple[requests.Session, dict]:
        http = requests.Session()
        r = http.post(f"{self.base}/console/api/login", json={"name": name, "password": password})
        assert r.status_code == 200, r.text
        return http, r.json()

    def new_alert(self, device: str) -> str:
        step = open_alert(device, AlertType.FALL_SUSPECTED, "impact 3.1 g", time.time(), {})
        self.store.record([step], [])
        return step.alert.alert_id


@pytest.fixture(scope="module")
def console(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    url = f"sqlite:///{tmp_path_factory.mktemp('console') / 'alerts.db'}"
    settings = AlertingSettings(
        kafka_bootstrap_servers=broker.bootstrap_servers,
        kafka_profile="tansu",
        topic_prefix=f"test-console-{uuid.uuid4().hex[:8]}",
        topic_partitions=2,
        group_id=f"alerting-{uuid.uuid4().hex[:8]}",
        host="127.0.0.1",
        port=0,
        store_url=url,
        auth_failure_burst=BURST,
        auth_failure_rate_per_s=0.01,
        console={"update_interval_s": 0.2},
    )
    create_topics(settings)
    service = AlertingService(settings, CollectorRegistry())
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop_holder: list[asyncio.Event] = []

    async def main() -> None:
        stop = asyncio.Event()
        stop_holder.append(stop)
        try:
            await service.start()
        finally:
            started.set()
        try:
            await stop.wait()
        finally:
            await service.stop()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(60), "alerting did not start"
    assert service.port is not None
    store = open_store(url)
    try:
        yield Running(f"http://127.0.0.1:{service.port}", store, service)
    finally:
        loop.call_soon_threadsafe(stop_holder[0].set)
        thread.join(60)
        store.close()


def test_the_page_and_its_files_are_served_with_a_strict_policy(console: Running) -> None:
    r = requests.get(f"{console.base}/", allow_redirects=False, timeout=5)
    assert r.status_code == 302 and r.headers["Location"] == "/console/"
    page = requests.get(f"{console.base}/console/", timeout=5)
    assert page.status_code == 200 and "harstream console" in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    for name in ("console.js", "console.css"):
        assert requests.get(f"{console.base}/console/static/{name}", timeout=5).status_code == 200
    missing = requests.get(f"{console.base}/console/static/../settings.py", timeout=5)
    assert missing.status_code in (403, 404)


def test_login_sets_a_strict_http_only_session_cookie(console: Running) -> None:
    name = console.operator(Role.VIEWER)
    r = requests.post(
        f"{console.base}/console/api/login",
        json={"name": name, "password": PASSWORD},
        timeout=10,
    )
    assert r.status_code == 200
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console/" in cookie
    assert "Secure" not in cookie  # plain HTTP here; "auto" sets it over TLS
    body = r.json()
    assert body["name"] == name and body["role"] == "viewer" and body["can_act"] is False
    assert len(body["csrf_token"]) >= 40


def test_wrong_passwords_and_unknown_names_get_the_same_401(console: Running) -> None:
    name = console.operator(Role.CARER)
    wrong = requests.post(
        f"{console.base}/console/api/login", json={"name": name, "password": "x" * 12}, timeout=10
    )
    unknown = requests.post(
        f"{console.base}/console/api/login",
        json={"name": "nobody-here", "password": PASSWORD},
        timeout=10,
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.headers["Content-Type"].startswith("application/problem+json")
    assert "Set-Cookie" not in wrong.headers


def test_bad_login_bodies_are_problems_not_crashes(console: Running) -> None:
    url = f"{console.base}/console/api/login"
    for data, ctype in (
        (b"not json", "application/json"),
        (b"[1,2]", "application/json"),
        (json.dumps({"name": 1, "password": 2}).encode(), "application/json"),
        (b"name=a&password=b", "application/x-www-form-urlencoded"),
    ):
        r = requests.post(url, data=data, headers={"Content-Type": ctype}, timeout=5)
        assert r.status_code == 400, (data, r.status_code)
        assert r.headers["Content-Type"].startswith("application/problem+json")


def test_every_api_route_needs_a_session(console: Running) -> None:
    for path in ("session", "fleet", "alerts", "pipeline", "devices/x", "events"):
        r = requests.get(f"{console.base}/console/api/{path}", timeout=5)
        assert r.status_code == 401, path
    forged = requests.get(
        f"{console.base}/console/api/fleet", cookies={"harstream_console": "forged"}, timeout=5
    )
    assert forged.status_code == 401
    # The alert API itself still wants its own credential.
    assert requests.get(f"{console.base}/v1/alerts", timeout=5).status_code == 401


def test_a_carer_acknowledges_only_with_the_csrf_token(console: Running) -> None:
    name = console.operator(Role.CARER)
    http, session = console.login(name)
    alert_id = console.new_alert(f"dev-{uuid.uuid4().hex[:6]}")
    url = f"{console.base}/console/api/alerts/{alert_id}/ack"
    no_token = http.post(url, json={"note": "on my way"}, timeout=5)
    assert no_token.status_code == 403
    wrong = http.post(url, json={}, headers={"X-CSRF-Token": "nope"}, timeout=5)
    assert wrong.status_code == 403
    other_site = http.post(
        url,
        json={},
        headers={"X-CSRF-Token": session["csrf_token"], "Origin": "https://evil.example"},
        timeout=5,
    )
    assert other_site.status_code == 403
    assert console.store.get(alert_id).state.value == "open"  # type: ignore[union-attr]
    ok = http.post(
        url, json={"note": "on my way"}, headers={"X-CSRF-Token": session["csrf_token"]}, timeout=5
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["acknowledged_by"] == name
    history = http.get(f"{console.base}/console/api/alerts/{alert_id}/history", timeout=5).json()
    assert [(e["event"], e["operator"], e["note"]) for e in history["events"]][-1] == (
        "acknowledged",
        name,
        "on my way",
    )
    bad_note = http.post(
        f"{console.base}/console/api/alerts/{alert_id}/resolve",
        json={"note": "x" * 501},
        headers={"X-CSRF-Token": session["csrf_token"]},
        timeout=5,
    )
    assert bad_note.status_code == 400
    unknown = http.post(
        f"{console.base}/console/api/alerts/no-such-alert/resolve",
        json={},
        headers={"X-CSRF-Token": session["csrf_token"]},
        timeout=5,
    )
    assert unknown.status_code == 404


def test_a_viewer_reads_but_may_not_act(console: Running) -> None:
    http, session = console.login(console.operator(Role.VIEWER))
    alert_id = console.new_alert(f"dev-{uuid.uuid4().hex[:6]}")
    listed = http.get(f"{console.base}/console/api/alerts?state=open", timeout=5).json()
    assert alert_id in [a["alert_id"] for a in listed["alerts"]]
    r = http.post(
        f"{console.base}/console/api/alerts/{alert_id}/ack",
        json={},
        headers={"X-CSRF-Token": session["csrf_token"]},
        timeout=5,
    )
    assert r.status_code == 403
    bad = http.get(f"{console.base}/console/api/alerts?state=sleeping", timeout=5)
    assert bad.status_code == 400


def test_the_inbox_puts_unresolved_and_severe_first(console: Running) -> None:
    http, _ = console.login(console.operator(Role.VIEWER))
    device = f"dev-{uuid.uuid4().hex[:6]}"
    now = time.time()
    older_fall = open_alert(device, AlertType.FALL_SUSPECTED, "impact", now - 60, {})
    newer_info = open_alert(device, AlertType.SENSOR_FAULT, "flatline", now, {})
    console.store.record([older_fall, newer_info], [])
    alerts = http.get(f"{console.base}/console/api/alerts?state=open", timeout=5).json()["alerts"]
    order = [a["alert_id"] for a in alerts]
    severities = {a["alert_id"]: a["severity"] for a in alerts}
    assert severities[older_fall.alert.alert_id] == "critical"
    if severities[newer_info.alert.alert_id] != "critical":
        assert order.index(older_fall.alert.alert_id) < order.index(newer_info.alert.alert_id)


def test_live_updates_carry_alert_changes(console: Running) -> None:
    name = console.operator(Role.CARER)
    http, session = console.login(name)
    alert_id = console.new_alert(f"dev-{uuid.uuid4().hex[:6]}")
    seen: list[dict] = []
    with http.get(f"{console.base}/console/api/events", stream=True, timeout=10) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        lines = stream.iter_lines(decode_unicode=True)
        assert next(lines) == "event: hello"
        acked = http.post(
            f"{console.base}/console/api/alerts/{alert_id}/ack",
            json={},
            headers={"X-CSRF-Token": session["csrf_token"]},
            timeout=5,
        )
        assert acked.status_code == 200
        deadline = time.monotonic() + 10
        event = None
        for line in lines:
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "update":
                seen.extend(json.loads(line[6:])["alerts"])
                if any(a["alert"]["alert_id"] == alert_id for a in seen):
                    break
            assert time.monotonic() < deadline, "no update within 10 s"
    change = next(a for a in seen if a["alert"]["alert_id"] == alert_id)
    assert change["event"] == "acknowledged"
    assert change["alert"]["acknowledged_by"] == name


def test_device_page_says_history_is_unavailable_when_not_configured(console: Running) -> None:
    http, _ = console.login(console.operator(Role.VIEWER))
    device = f"dev-{uuid.uuid4().hex[:6]}"
    alert_id = console.new_alert(device)
    doc = http.get(f"{console.base}/console/api/devices/{device}", timeout=5).json()
    assert doc["history"] == {
        "available": False,
        "reason": "no history service is configured (console.history_url)",
    }
    assert [a["alert_id"] for a in doc["alerts"]] == [alert_id]
    raw = http.get(
        f"{console.base}/console/api/devices/{device}/raw?alert_id={alert_id}", timeout=10
    ).json()
    assert raw["available"] is False  # this worker never saw the device's packets
    assert http.get(f"{console.base}/console/api/devices/unknown-x", timeout=5).status_code == 404
    bad = http.get(f"{console.base}/console/api/devices/{device}?utc_offset_s=abc", timeout=5)
    assert bad.status_code == 400


def test_pipeline_page_reads_the_alerting_metrics(console: Running) -> None:
    http, _ = console.login(console.operator(Role.VIEWER))
    doc = http.get(f"{console.base}/console/api/pipeline", timeout=10).json()
    (alerting,) = [s for s in doc["services"] if s["service"] == "alerting"]
    assert alerting["up"] is True
    assert "predictions judged" in alerting["throughput"]


def test_logout_and_revocation_end_sessions(console: Running) -> None:
    name = console.operator(Role.CARER)
    http, session = console.login(name)
    assert http.get(f"{console.base}/console/api/session", timeout=5).status_code == 200
    out = http.post(
        f"{console.base}/console/api/logout",
        json={},
        headers={"X-CSRF-Token": session["csrf_token"]},
        timeout=5,
    )
    assert out.status_code == 200
    assert http.get(f"{console.base}/console/api/session", timeout=5).status_code == 401
    http, _ = console.login(name)
    console.store.revoke_operator(name, time.time())
    assert http.get(f"{console.base}/console/api/fleet", timeout=5).status_code == 401


def test_failed_logins_are_limited_per_address(console: Running) -> None:
    """Last: it spends the address's budget (BURST failures, barely refilled)."""
    url = f"{console.base}/console/api/login"
    statuses = []
    for _ in range(BURST + 2):
        try:
            r = requests.post(url, json={"name": "nobody", "password": "y" * 12}, timeout=10)
        except requests.ConnectionError:
            statuses.append(0)  # refused at accept: the address is over its budget
            continue
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
    assert 429 in statuses or 0 in statuses, statuses


def test_an_unreachable_history_service_is_reported_not_raised() -> None:
    from services.common.broker import free_port
    from services.console.history import HistoryClient, HistoryUnavailableError
    from services.console.settings import ConsoleSettings

    client = HistoryClient(
        ConsoleSettings(history_url=f"http://127.0.0.1:{free_port()}", history_timeout_s=2)
    )
    with pytest.raises(HistoryUnavailableError, match="cannot be reached"):
        asyncio.run(client.device_history("dev-1", time.time(), 0.0))
