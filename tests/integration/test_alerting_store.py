"""The alert store contract, on SQLite and on the local PostgreSQL (own schema, dropped after)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.alerting.lifecycle import acknowledge, open_alert, resolve
from services.alerting.store import (
    AlertStore,
    DeviceSnapshot,
    PostgresAlertStore,
    SqliteAlertStore,
    StoreError,
    open_store,
)
from shared.messages import AlertState, AlertType

pytestmark = pytest.mark.integration

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
URLS = ["http://a.example/hook", "http://b.example/hook"]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AlertStore]:
    if request.param == "sqlite":
        opened: AlertStore = open_store(f"sqlite:///{tmp_path / 'a' / 'alerts.db'}")
        assert isinstance(opened, SqliteAlertStore)
        yield opened
        opened.close()
        return
    schema = f"test_alerting_{uuid.uuid4().hex[:10]}"
    pg = open_store(PG_URL, schema)
    assert isinstance(pg, PostgresAlertStore)
    try:
        yield pg
    finally:
        pg.drop()
        pg.close()


def test_transitions_history_and_queries(store: AlertStore) -> None:
    fall = open_alert("dev-1", AlertType.FALL_SUSPECTED, "impact 3.1 g", 100.0, {"impact_g": 3.1})
    offline = open_alert("dev-2", AlertType.DEVICE_OFFLINE, "no data for 300 s", 200.0, {})
    store.record([fall, offline], URLS)
    assert store.get(fall.alert.alert_id) == fall.alert
    assert store.get("missing") is None
    assert [a.alert_id for a in store.list_alerts()] == [
        offline.alert.alert_id,
        fall.alert.alert_id,
    ]
    assert store.list_alerts(kind=AlertType.FALL_SUSPECTED) == [fall.alert]
    assert store.list_alerts(device_id="dev-2") == [offline.alert]
    assert store.list_alerts(limit=1) == [offline.alert]

    acked = acknowledge(fall.alert, "nurse-ana", 110.0)
    assert acked is not None
    done = resolve(offline.alert, "auto", 210.0, "data again")
    store.record([acked, done], URLS)
    assert store.get(fall.alert.alert_id) == acked.alert
    assert store.list_alerts(state=AlertState.RESOLVED) == [done.alert]
    assert store.active() == [acked.alert]
    counts = store.count_active()
    assert counts[AlertType.FALL_SUSPECTED] == 1
    assert counts[AlertType.DEVICE_OFFLINE] == 0

    # History, in order, waiting to be published; then marked.
    pending = store.unpublished()
    assert [(a.alert_id, a.state) for _, a in pending] == [
        (fall.alert.alert_id, AlertState.OPEN),
        (offline.alert.alert_id, AlertState.OPEN),
        (fall.alert.alert_id, AlertState.ACKNOWLEDGED),
        (offline.alert.alert_id, AlertState.RESOLVED),
    ]
    store.mark_published([i for i, _ in pending[:3]])
    assert [i for i, _ in store.unpublished()] == [pending[3][0]]
    store.ping()


def test_outbox_claims_leases_retries_and_final_states(store: AlertStore) -> None:
    fall = open_alert("dev-1", AlertType.FALL_SUSPECTED, "impact", 100.0, {})
    store.record([fall], URLS)
    store.record([fall], URLS)  # the same event again (replay): no second delivery
    rows = store.deliveries(fall.alert.alert_id)
    assert [(r["url"], r["idempotency_key"], r["status"]) for r in rows] == [
        (URLS[0], f"{fall.alert.alert_id}:opened", "pending"),
        (URLS[1], f"{fall.alert.alert_id}:opened", "pending"),
    ]
    claimed = store.claim_deliveries(now=100.0, limit=10, lease_s=30.0)
    assert [d.url for d in claimed] == URLS
    assert all(d.attempts == 0 and '"event":"opened"' in d.body for d in claimed)
    assert store.claim_deliveries(now=110.0, limit=10, lease_s=30.0) == []  # leased
    first, second = claimed
    store.delivery_done(first.id, 1, "delivered", "")
    store.delivery_retry(second.id, 1, next_at=150.0, error="HTTP 503")
    assert store.claim_deliveries(now=149.0, limit=10, lease_s=30.0) == []
    (again,) = store.claim_deliveries(now=150.0, limit=10, lease_s=30.0)
    assert again.id == second.id
    assert again.attempts == 1
    assert again.idempotency_key == second.idempotency_key
    store.delivery_done(again.id, 2, "failed", "HTTP 404")
    assert store.claim_deliveries(now=1e12, limit=10, lease_s=30.0) == []
    states = {r["url"]: (r["status"], r["attempts"]) for r in store.deliveries()}
    assert states == {URLS[0]: ("delivered", 1), URLS[1]: ("failed", 2)}


def test_device_snapshots_are_stored_with_the_transitions_and_loaded_by_partition(
    store: AlertStore,
) -> None:
    fall = open_alert("dev-1", AlertType.FALL_SUSPECTED, "impact", 100.0, {})
    state = {"v": 1, "fall": {"impact_g": 3.1}, "last_traffic_wall": 99.5}
    store.record(
        [fall],
        URLS,
        [DeviceSnapshot("dev-1", 2, state), DeviceSnapshot("dev-2", 3, {"v": 1})],
    )
    store.record([], URLS, [DeviceSnapshot("dev-3", 2, {"v": 1, "x": [1.5, None]})])
    found = {d.device_id: d for d in store.devices([2])}
    assert set(found) == {"dev-1", "dev-3"}
    assert found["dev-1"].partition == 2
    assert found["dev-1"].state == state
    assert found["dev-1"].alerts == [fall.alert]
    assert found["dev-3"].state == {"v": 1, "x": [1.5, None]}
    assert found["dev-3"].alerts == []
    # Newer snapshot (and a device that moved partition) replaces the row.
    store.record(
        [resolve(fall.alert, "auto", 120.0, "done")],
        [],
        [DeviceSnapshot("dev-1", 3, {"v": 1, "fall": None})],
    )
    assert [d.device_id for d in store.devices([2])] == ["dev-3"]
    moved = {d.device_id: d for d in store.devices([3, 7])}
    assert moved["dev-1"].state == {"v": 1, "fall": None}
    assert moved["dev-1"].alerts == []  # resolved alerts are not loaded
    assert store.devices([]) == []
    assert store.devices([9]) == []


def test_partition_clocks_are_stored_and_loaded(store: AlertStore) -> None:
    store.record([], [], (), {0: {"active": 12.5, "heartbeat_at": 99.0}, 3: {"active": 0.0}})
    store.record([], [], (), {0: {"active": 13.5, "heartbeat_at": 100.0}})
    assert store.clocks([0, 1, 3]) == {
        0: {"active": 13.5, "heartbeat_at": 100.0},
        3: {"active": 0.0},
    }
    assert store.clocks([]) == {}


def test_a_failed_transaction_stores_neither_alerts_nor_snapshots(store: AlertStore) -> None:
    good = open_alert("dev-1", AlertType.FALL_SUSPECTED, "impact", 100.0, {})
    # The second transition fails after the snapshot and the first alert were written.
    bad = open_alert("dev-1", AlertType.INACTIVITY, "still", 100.0, {"x": object()})
    with pytest.raises(TypeError):
        store.record([good, bad], URLS, [DeviceSnapshot("dev-1", 0, {"v": 1})])
    assert store.get(good.alert.alert_id) is None
    assert store.devices([0]) == []
    assert store.deliveries() == []


def test_bad_store_urls() -> None:
    with pytest.raises(StoreError, match="unsupported"):
        open_store("mysql://nope")
    with pytest.raises(StoreError, match="cannot open PostgreSQL"):
        open_store("postgresql://postgres@127.0.0.1:1/test")
