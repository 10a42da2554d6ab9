"""The SQLite device registry (a file in tmp_path)."""

from __future__ import annotations

import secrets
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from services.ingest.errors import (
    DeviceExistsError,
    InvalidDeviceError,
    RegistryConfigError,
    UnknownDeviceError,
)
from services.ingest.registry import NewDevice, SqliteRegistry, open_registry, redact_url
from services.ingest.tokens import hash_token


@pytest.fixture
def registry(tmp_path: Path) -> SqliteRegistry:
    return SqliteRegistry(tmp_path / "sub" / "devices.db")


def test_add_lookup_and_token_stored_only_as_hash(registry: SqliteRegistry) -> None:
    record, token = registry.add("watch-1", label="room 12")
    assert record.token_hash == hash_token(token)
    assert not record.revoked
    assert registry.get("watch-1") == record
    assert registry.find_by_token(token) == record
    assert registry.find_by_token(token + "x") is None
    assert registry.get("nope") is None
    for path in registry.path.parent.iterdir():  # the database and its WAL, if any
        assert token.encode() not in path.read_bytes()


def test_given_token(registry: SqliteRegistry) -> None:
    token = secrets.token_hex(32)
    record, returned = registry.add("d1", token=token)
    assert returned == token
    assert registry.find_by_token(token) == record
    with pytest.raises(DeviceExistsError, match="token"):
        registry.add("d2", token=token)
    with pytest.raises(InvalidDeviceError):
        registry.add("d3", token="short")
    # long enough, printable, but guessable: refused, since only its SHA-256 is stored
    for weak in ("t" * 40, "password1234" * 5, "correct-horse-battery-staple-correct-horse"):
        with pytest.raises(InvalidDeviceError, match="256 bits"):
            registry.add("d4", token=weak)
    assert registry.get("d4") is None


def test_database_file_is_private(registry: SqliteRegistry) -> None:
    registry.add("d1")
    files = [p for p in registry.path.parent.iterdir() if p.name.startswith("devices.db")]
    assert registry.path in files
    for path in files:  # the database and its WAL and shared-memory files
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_existing_world_readable_database_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    SqliteRegistry(path).add("d1")
    path.chmod(0o644)  # as created by an older version, under umask 022
    SqliteRegistry(path).list()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_duplicate_and_invalid_ids(registry: SqliteRegistry) -> None:
    registry.add("d1")
    with pytest.raises(DeviceExistsError, match="d1"):
        registry.add("d1")
    for bad in ("", "a b", "x" * 65, "d\n"):
        with pytest.raises(InvalidDeviceError):
            registry.add(bad)


def test_revoke_is_idempotent_and_keeps_the_record(registry: SqliteRegistry) -> None:
    _, token = registry.add("d1")
    first = registry.revoke("d1")
    assert first.revoked and first.revoked_at is not None
    again = registry.revoke("d1")
    assert again.revoked_at == first.revoked_at
    found = registry.find_by_token(token)
    assert found is not None and found.revoked
    with pytest.raises(UnknownDeviceError):
        registry.revoke("ghost")


def test_list_sorted(registry: SqliteRegistry) -> None:
    for device in ("c", "a", "b"):
        registry.add(device)
    assert [r.device_id for r in registry.list()] == ["a", "b", "c"]
    assert "token_hash" not in registry.list()[0].public()


def test_wal_and_shared_between_instances(tmp_path: Path) -> None:
    path = tmp_path / "devices.db"
    service_side, cli_side = SqliteRegistry(path), SqliteRegistry(path)
    service_side.ping()
    _, token = cli_side.add("d1")
    assert service_side.find_by_token(token) is not None
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrent_use_from_threads(registry: SqliteRegistry) -> None:
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            _, token = registry.add(f"d{i}")
            assert registry.find_by_token(token) is not None
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(registry.list()) == 8


def test_open_registry_urls(tmp_path: Path) -> None:
    # SQLAlchemy's convention: four slashes for an absolute path, three for a relative one.
    registry = open_registry(f"sqlite:///{tmp_path}/r.db")
    assert isinstance(registry, SqliteRegistry) and registry.path == tmp_path / "r.db"
    relative = open_registry("sqlite:///data/r.db")
    assert isinstance(relative, SqliteRegistry) and relative.path == Path("data/r.db")
    for bad in ("sqlite://", "sqlite:///", "sqlite:///:memory:", "mysql://x/y", "devices.db"):
        with pytest.raises(RegistryConfigError):
            open_registry(bad)


def test_redact_url() -> None:
    assert redact_url("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("sqlite:////x.db") == "sqlite:////x.db"


def test_add_many_registers_all_in_one_transaction(registry: SqliteRegistry) -> None:
    given = secrets.token_hex(32)
    added = registry.add_many(
        [NewDevice(f"m-{i:04d}", "ward 2") for i in range(2000)] + [NewDevice("m-own", "", given)]
    )
    assert len(added) == 2001 and added[-1][1] == given
    for record, token in added[::97]:
        assert registry.find_by_token(token) == record
        assert record.token_hash == hash_token(token) and record.label in ("ward 2", "")
    assert len(registry.list()) == 2001


def test_bulk_reads_by_token_hash_and_by_id(registry: SqliteRegistry) -> None:
    # More than one IN (...) chunk, a revoked device, and keys of nothing.
    added = registry.add_many([NewDevice(f"b-{i:04d}") for i in range(1200)])
    registry.revoke("b-0007")
    hashes = [record.token_hash for record, _ in added] + [hash_token("unknown")]
    by_hash = registry.find_by_token_hashes(hashes)
    assert len(by_hash) == 1200
    assert by_hash[added[7][0].token_hash].revoked
    assert by_hash[added[1100][0].token_hash] == registry.get("b-1100")
    by_id = registry.get_many([f"b-{i:04d}" for i in range(0, 1200, 3)] + ["nope"])
    assert sorted(by_id) == [f"b-{i:04d}" for i in range(0, 1200, 3)]
    assert by_id["b-0999"] == registry.get("b-0999")
    assert registry.find_by_token_hashes([]) == {} == registry.get_many([])


@pytest.mark.parametrize(
    ("batch", "words"),
    [
        ([NewDevice("n-1"), NewDevice("taken")], "'taken' is already registered"),
        ([NewDevice("n-1"), NewDevice("n-1")], "listed twice"),
        ([NewDevice("n-1"), NewDevice("n-2", token="SAME")], "token is already registered"),
    ],
)
def test_add_many_adds_nothing_when_one_is_refused(
    registry: SqliteRegistry, batch: list[NewDevice], words: str
) -> None:
    _, taken_token = registry.add("taken")
    batch = [d._replace(token=taken_token) if d.token == "SAME" else d for d in batch]
    with pytest.raises(DeviceExistsError, match=words):
        registry.add_many(batch)
    assert [r.device_id for r in registry.list()] == ["taken"]  # all or nothing
    with pytest.raises(InvalidDeviceError):
        registry.add_many([NewDevice("ok"), NewDevice("bad id")])
    assert registry.add_many([]) == []
