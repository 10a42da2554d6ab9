"""The PostgreSQL device registry (local server) and the `harstream devices` commands."""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from services.cli import cli
from services.ingest.errors import DeviceExistsError, UnknownDeviceError
from services.ingest.registry import NewDevice, PostgresRegistry, SqliteRegistry, open_registry
from services.ingest.tokens import hash_token

pytestmark = pytest.mark.integration

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_registry() -> Iterator[PostgresRegistry]:
    table = f"test_devices_{uuid.uuid4().hex[:10]}"
    registry = PostgresRegistry(POSTGRES_URL, table=table)
    try:
        yield registry
    finally:
        registry.drop()
        registry.close()


def test_postgres_add_lookup_revoke(pg_registry: PostgresRegistry) -> None:
    pg_registry.ping()  # creates the table
    record, token = pg_registry.add("pg-dev-1", label="ward 3")
    assert record.token_hash == hash_token(token)
    assert pg_registry.get("pg-dev-1") == record
    assert pg_registry.find_by_token(token) == record
    assert pg_registry.find_by_token("x" * 43) is None
    with pytest.raises(DeviceExistsError):
        pg_registry.add("pg-dev-1")
    with pytest.raises(DeviceExistsError, match="token"):
        pg_registry.add("pg-dev-2", token=token)
    pg_registry.add("pg-dev-0")
    assert [r.device_id for r in pg_registry.list()] == ["pg-dev-0", "pg-dev-1"]
    revoked = pg_registry.revoke("pg-dev-1")
    assert revoked.revoked
    assert pg_registry.revoke("pg-dev-1").revoked_at == revoked.revoked_at
    found = pg_registry.find_by_token(token)
    assert found is not None and found.revoked
    with pytest.raises(UnknownDeviceError):
        pg_registry.revoke("ghost")


def test_postgres_bulk_reads_by_token_hash_and_by_id(pg_registry: PostgresRegistry) -> None:
    added = pg_registry.add_many([NewDevice(f"pg-b-{i}") for i in range(5)])
    pg_registry.revoke("pg-b-3")
    by_hash = pg_registry.find_by_token_hashes(
        [record.token_hash for record, _ in added] + [hash_token("unknown")]
    )
    assert by_hash == {r.token_hash: pg_registry.get(r.device_id) for r, _ in added}
    assert by_hash[added[3][0].token_hash].revoked
    assert sorted(pg_registry.get_many(["pg-b-1", "pg-b-4", "nope"])) == ["pg-b-1", "pg-b-4"]
    assert pg_registry.find_by_token_hashes([]) == {} == pg_registry.get_many([])


def test_postgres_add_many_is_one_transaction(pg_registry: PostgresRegistry) -> None:
    added = pg_registry.add_many([NewDevice(f"pg-m-{i}", "bulk") for i in range(300)])
    assert len(added) == 300
    assert pg_registry.find_by_token(added[123][1]) == added[123][0]
    with pytest.raises(DeviceExistsError, match="pg-m-7"):
        pg_registry.add_many([NewDevice("pg-new"), NewDevice("pg-m-7")])
    with pytest.raises(DeviceExistsError, match="token"):
        pg_registry.add_many([NewDevice("pg-new-2", token=added[0][1])])
    assert pg_registry.get("pg-new") is None and pg_registry.get("pg-new-2") is None
    assert len(pg_registry.list()) == 300


def test_postgres_reconnects_after_the_connection_drops(pg_registry: PostgresRegistry) -> None:
    _, token = pg_registry.add("d")
    pg_registry.close()  # as if the server had dropped it
    assert pg_registry.find_by_token(token) is not None


def test_open_registry_picks_postgres() -> None:
    registry = open_registry(POSTGRES_URL, table="harstream_devices")
    assert isinstance(registry, PostgresRegistry)
    registry.close()


def test_devices_cli_add_list_revoke(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'devices.db'}"
    runner = CliRunner()

    added = runner.invoke(cli, ["devices", "--registry", url, "add", "w-1", "--label", "bed 4"])
    assert added.exit_code == 0, added.output
    token = added.output.split("token: ")[1].strip()
    assert SqliteRegistry(tmp_path / "devices.db").find_by_token(token) is not None

    given = secrets.token_hex(32)
    as_json = runner.invoke(
        cli, ["devices", "--registry", url, "add", "w-2", "--token", given, "--json"]
    )
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.output)
    assert doc["device_id"] == "w-2" and doc["token"] == given and "token_hash" not in doc

    duplicate = runner.invoke(cli, ["devices", "--registry", url, "add", "w-1"])
    assert duplicate.exit_code == 1 and "already registered" in duplicate.output
    bad = runner.invoke(cli, ["devices", "--registry", url, "add", "bad id"])
    assert bad.exit_code == 1

    revoked = runner.invoke(cli, ["devices", "--registry", url, "revoke", "w-1"])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    missing = runner.invoke(cli, ["devices", "--registry", url, "revoke", "nope"])
    assert missing.exit_code == 1

    listed = runner.invoke(cli, ["devices", "--registry", url, "list", "--json"])
    assert listed.exit_code == 0
    rows = json.loads(listed.output)
    assert [(r["device_id"], r["revoked_at"] is not None, r["label"]) for r in rows] == [
        ("w-1", True, "bed 4"),
        ("w-2", False, ""),
    ]
    assert token not in listed.output and given not in listed.output
    table = runner.invoke(cli, ["devices", "--registry", url, "list"])
    assert "w-1" in table.output and "revoked" in table.output and "active" in table.output


def test_devices_cli_registry_from_env(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'env.db'}"
    runner = CliRunner(env={"HARSTREAM_INGEST_REGISTRY_URL": url})
    assert runner.invoke(cli, ["devices", "add", "e-1"]).exit_code == 0
    assert [r.device_id for r in SqliteRegistry(tmp_path / "env.db").list()] == ["e-1"]
    wrong = runner.invoke(cli, ["devices", "--registry", "mysql://x/y", "list"])
    assert wrong.exit_code == 1 and "registry URL" in wrong.output
