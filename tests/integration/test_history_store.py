"""The history store on SQLite and on the local PostgreSQL (own schema, dropped after),
and the registry's time-zone field on both registry stores."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.history.segments import Segment
from services.history.store import (
    HistoryStore,
    PostgresHistoryStore,
    SqliteHistoryStore,
    StoreError,
    open_store,
)
from services.ingest.errors import InvalidDeviceError, UnknownDeviceError
from services.ingest.registry import (
    DeviceRegistry,
    NewDevice,
    PostgresRegistry,
    SqliteRegistry,
    open_registry,
)

pytestmark = pytest.mark.integration

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HistoryStore]:
    if request.param == "sqlite":
        opened = open_store(f"sqlite:///{tmp_path / 'h' / 'history.db'}")
        assert isinstance(opened, SqliteHistoryStore)
        yield opened
        opened.close()
        return
    pg = open_store(PG_URL, f"test_history_{uuid.uuid4().hex[:10]}")
    assert isinstance(pg, PostgresHistoryStore)
    try:
        yield pg
    finally:
        pg.drop()
        pg.close()


def seg(device: str, start: float, end: float, activity: str = "WALKING", n: int = 1) -> Segment:
    return Segment(device, start, end, activity, 1, n, 0.9 * n)


def test_segments_upsert_as_they_grow_and_states_go_with_them(store: HistoryStore) -> None:
    store.save([seg("a", 100.0, 101.28)], {"a": (3, {"watermark": 101.28})}, now=1.0)
    # The same segment, grown: one row, the newest.
    store.save([seg("a", 100.0, 110.0, n=8), seg("a", 110.0, 120.0, "SITTING", 8)], {}, now=2.0)
    store.save([seg("b", 105.0, 130.0)], {"b": (1, {"open": None})}, now=3.0)
    assert store.segments("a", 0, 1000) == [
        seg("a", 100.0, 110.0, n=8),
        seg("a", 110.0, 120.0, "SITTING", 8),
    ]
    # Overlapping [start, end): a segment ending at 'start' is out, one starting at 'end' too.
    assert store.segments("a", 110.0, 115.0) == [seg("a", 110.0, 120.0, "SITTING", 8)]
    assert store.segments("a", 120.0, 200.0) == []
    assert store.segments("nobody", 0, 1000) == []
    (a,) = store.device_states({3})
    assert (a.device_id, a.partition, a.state, a.updated_at) == ("a", 3, {"watermark": 101.28}, 1.0)
    assert store.device_states({0, 2}) == [] and store.device_states(set()) == []
    assert [d.device_id for d in store.devices()] == ["a", "b"]
    assert store.device("b") is not None and store.device("c") is None
    store.save([], {"a": (2, {"watermark": 120.0})}, now=4.0)
    assert store.device_states({2})[0].state == {"watermark": 120.0}


def test_retention_deletes_segments_that_ended_before_the_cutoff(store: HistoryStore) -> None:
    store.save([seg("a", 0.0, 50.0), seg("a", 50.0, 100.0), seg("b", 90.0, 200.0)], {}, now=1.0)
    assert store.delete_before(100.0) == 1
    assert [s.start for s in store.segments("a", 0, 1000)] == [50.0]
    assert store.delete_before(100.0) == 0
    store.ping()


def test_unusable_store_urls_and_a_store_that_is_away() -> None:
    with pytest.raises(StoreError, match="unsupported"):
        open_store("mysql://x")
    with pytest.raises(StoreError, match="cannot open PostgreSQL"):
        open_store("postgresql://postgres@127.0.0.1:1/test")


def test_the_sqlite_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    open_store(f"sqlite:///{path}").close()
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DeviceRegistry]:
    if request.param == "sqlite":
        opened = open_registry(f"sqlite:///{tmp_path / 'devices.db'}")
        yield opened
        opened.close()
        return
    pg = open_registry(PG_URL, f"test_devices_{uuid.uuid4().hex[:10]}")
    assert isinstance(pg, PostgresRegistry)
    try:
        yield pg
    finally:
        pg.drop()
        pg.close()


def test_registry_time_zones(registry: DeviceRegistry) -> None:
    record, _ = registry.add("dev-1", "room 12")
    assert record.timezone == "UTC"
    paris, _ = registry.add("dev-2", timezone="Europe/Paris")
    assert registry.get("dev-2") == paris and paris.timezone == "Europe/Paris"
    assert registry.set_timezone("dev-1", "America/New_York").timezone == "America/New_York"
    assert registry.get("dev-1").timezone == "America/New_York"  # type: ignore[union-attr]
    assert registry.list()[0].public()["timezone"] == "America/New_York"
    (many,) = registry.add_many([NewDevice("dev-3", timezone="Asia/Tokyo")])
    assert many[0].timezone == "Asia/Tokyo"
    for bad in ("Mars/Olympus", "../../etc/passwd", "", "europe/paris", "/usr/share/zoneinfo/UTC"):
        with pytest.raises(InvalidDeviceError, match="IANA"):
            registry.set_timezone("dev-1", bad)
        with pytest.raises(InvalidDeviceError, match="IANA"):
            registry.add(f"dev-bad-{len(bad)}", timezone=bad)
    with pytest.raises(UnknownDeviceError):
        registry.set_timezone("nobody", "UTC")
    assert registry.get("dev-1").timezone == "America/New_York"  # type: ignore[union-attr]


def test_a_registry_made_before_time_zones_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE devices (device_id TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE,"
        " label TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, revoked_at REAL)"
    )
    conn.execute("INSERT INTO devices VALUES ('old-1', 'abc', 'x', 1.0, NULL)")
    conn.commit()
    conn.close()
    registry = SqliteRegistry(path)
    try:
        (old,) = registry.list()
        assert (old.device_id, old.timezone) == ("old-1", "UTC")
        assert registry.set_timezone("old-1", "Europe/Paris").timezone == "Europe/Paris"
    finally:
        registry.close()


def test_devices_cli_sets_time_zones(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from services.ingest.cli import devices

    url = f"sqlite:///{tmp_path / 'devices.db'}"
    runner = CliRunner()
    added = runner.invoke(
        devices, ["--registry", url, "add", "dev-1", "--timezone", "Europe/Paris", "--json"]
    )
    assert added.exit_code == 0, added.output
    assert json.loads(added.output)["timezone"] == "Europe/Paris"
    changed = runner.invoke(devices, ["--registry", url, "timezone", "dev-1", "Asia/Tokyo"])
    assert changed.exit_code == 0 and "Asia/Tokyo" in changed.output
    refused = runner.invoke(devices, ["--registry", url, "timezone", "dev-1", "Mars/Base"])
    assert refused.exit_code != 0 and "IANA" in refused.output
    missing = runner.invoke(devices, ["--registry", url, "timezone", "nobody", "UTC"])
    assert missing.exit_code != 0 and "nobody" in missing.output
    listed = runner.invoke(devices, ["--registry", url, "list"])
    assert "Asia/Tokyo" in listed.output and "TIME ZONE" in listed.output
    bad_add = runner.invoke(devices, ["--registry", url, "add", "dev-2", "--timezone", "CET5"])
    assert bad_add.exit_code != 0 and "IANA" in bad_add.output
