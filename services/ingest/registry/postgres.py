"""The PostgreSQL store of the registry (psycopg 3, imported on first use: only this store
needs it)."""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from services.ingest.errors import (
    RegistryUnavailableError,
    UnknownDeviceError,
    UnknownGatewayError,
)
from services.ingest.registry.core import (
    _COLUMNS,
    _GATEWAY_COLUMNS,
    _TIMEZONE_COLUMN,
    DeviceRecord,
    GatewayRecord,
    NewDevice,
    _check_device_ids,
    _check_new_gateway,
    _encode_ids,
    _exists_error,
    _gateway_exists,
    _gateway_record,
    _gateway_row,
    _matching,
    _new_records,
    _no_gateway_token,
    _rebound,
    _record,
    _row,
    _unknown_devices,
    check_timezone,
)
from services.ingest.tokens import hash_token

T = TypeVar("T")


class PostgresRegistry:
    """Registry in PostgreSQL tables (psycopg 3): devices in ``table``, gateways in
    ``<table>_gateways``; one autocommit connection behind a lock, reopened after a
    failure."""

    def __init__(
        self, url: str, table: str = "harstream_devices", connect_timeout_s: float = 5.0
    ) -> None:
        import psycopg  # noqa: PLC0415 - only the PostgreSQL store needs it
        from psycopg import sql  # noqa: PLC0415

        self._psycopg = psycopg
        self.url = url
        self.table = table
        self._connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._conn: Any = None
        name = sql.Identifier(table)
        columns = sql.SQL(_COLUMNS)
        gateways = sql.Identifier(f"{table}_gateways")
        gateway_columns = sql.SQL(_GATEWAY_COLUMNS)
        self._sql = {
            "schema": sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " device_id TEXT PRIMARY KEY,"
                " token_hash TEXT NOT NULL UNIQUE,"
                " label TEXT NOT NULL DEFAULT '',"
                " created_at DOUBLE PRECISION NOT NULL,"
                " revoked_at DOUBLE PRECISION)"
            ).format(name),
            "migrate": sql.SQL(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS " + _TIMEZONE_COLUMN
            ).format(name),
            "insert": sql.SQL("INSERT INTO {} ({}) VALUES (%s, %s, %s, %s, %s, %s)").format(
                name, columns
            ),
            "timezone": sql.SQL("UPDATE {} SET timezone = %s WHERE device_id = %s").format(name),
            "get": sql.SQL("SELECT {} FROM {} WHERE device_id = %s").format(columns, name),
            "by_token": sql.SQL("SELECT {} FROM {} WHERE token_hash = %s").format(columns, name),
            "by_token_hashes": sql.SQL("SELECT {} FROM {} WHERE token_hash = ANY(%s)").format(
                columns, name
            ),
            "get_many": sql.SQL("SELECT {} FROM {} WHERE device_id = ANY(%s)").format(
                columns, name
            ),
            "list": sql.SQL("SELECT {} FROM {} ORDER BY device_id").format(columns, name),
            "revoke": sql.SQL(
                "UPDATE {} SET revoked_at = %s WHERE device_id = %s AND revoked_at IS NULL"
            ).format(name),
            "ping": sql.SQL("SELECT 1 FROM {} LIMIT 1").format(name),
            "gateway_schema": sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " gateway_id TEXT PRIMARY KEY,"
                " token_hash TEXT NOT NULL UNIQUE,"
                " label TEXT NOT NULL DEFAULT '',"
                " created_at DOUBLE PRECISION NOT NULL,"
                " revoked_at DOUBLE PRECISION,"
                " device_ids TEXT NOT NULL DEFAULT '')"
            ).format(gateways),
            "registered": sql.SQL("SELECT device_id FROM {} WHERE device_id = ANY(%s)").format(
                name
            ),
            "device_token": sql.SQL("SELECT 1 FROM {} WHERE token_hash = %s").format(name),
            "gateway_insert": sql.SQL("INSERT INTO {} ({}) VALUES (%s, %s, %s, %s, %s, %s)").format(
                gateways, gateway_columns
            ),
            "gateway_get": sql.SQL("SELECT {} FROM {} WHERE gateway_id = %s").format(
                gateway_columns, gateways
            ),
            "gateway_lock": sql.SQL("SELECT {} FROM {} WHERE gateway_id = %s FOR UPDATE").format(
                gateway_columns, gateways
            ),
            "gateway_by_token": sql.SQL("SELECT {} FROM {} WHERE token_hash = %s").format(
                gateway_columns, gateways
            ),
            "gateway_list": sql.SQL("SELECT {} FROM {} ORDER BY gateway_id").format(
                gateway_columns, gateways
            ),
            "gateway_bind": sql.SQL("UPDATE {} SET device_ids = %s WHERE gateway_id = %s").format(
                gateways
            ),
            "gateway_revoke": sql.SQL(
                "UPDATE {} SET revoked_at = %s WHERE gateway_id = %s AND revoked_at IS NULL"
            ).format(gateways),
            "gateway_drop": sql.SQL("DROP TABLE IF EXISTS {}").format(gateways),
            "gateway_hashes": sql.SQL("SELECT token_hash FROM {}").format(gateways),
        }

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            conn = self._psycopg.connect(
                self.url, autocommit=True, connect_timeout=max(1, int(self._connect_timeout_s))
            )
            conn.execute(self._sql["schema"])
            conn.execute(self._sql["migrate"])
            conn.execute(self._sql["gateway_schema"])
            self._conn = conn
        return self._conn

    def _run(self, name: str, params: tuple[Any, ...] = (), fetch: bool = True) -> list[Any]:
        with self._lock:
            try:
                cursor = self._connection().execute(self._sql[name], params)
                return cursor.fetchall() if fetch else []
            except self._psycopg.errors.UniqueViolation:
                raise
            except self._psycopg.Error as exc:
                if self._conn is not None and self._conn.broken:
                    self._conn = None
                raise RegistryUnavailableError(f"device registry (PostgreSQL): {exc}") from exc

    def _transaction(self, work: Callable[[Any], T]) -> T:
        """``work(cursor)`` in one transaction."""
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction(), conn.cursor() as cursor:
                    return work(cursor)
            except self._psycopg.errors.UniqueViolation:
                raise
            except self._psycopg.Error as exc:
                if self._conn is not None and self._conn.broken:
                    self._conn = None
                raise RegistryUnavailableError(f"device registry (PostgreSQL): {exc}") from exc

    def add(
        self, device_id: str, label: str = "", token: str | None = None, timezone: str = "UTC"
    ) -> tuple[DeviceRecord, str]:
        # One code path with add_many: it also keeps gateways' tokens out.
        return self.add_many([NewDevice(device_id, label, token, timezone)])[0]

    def add_many(self, devices: Sequence[NewDevice]) -> list[tuple[DeviceRecord, str]]:
        added = _new_records(devices)

        def insert(cursor: Any) -> None:
            cursor.execute(self._sql["gateway_hashes"])
            _no_gateway_token(added, {row[0] for row in cursor.fetchall()})
            cursor.executemany(self._sql["insert"], [_row(r) for r, _ in added])

        try:
            self._transaction(insert)
        except self._psycopg.errors.UniqueViolation as exc:
            # The server names the conflicting key: "Key (device_id)=(x) already exists".
            detail = getattr(exc.diag, "message_detail", None) or str(exc)
            device_id = detail.split(")=(", 1)[1].split(")", 1)[0] if ")=(" in detail else "?"
            raise _exists_error(device_id, detail) from exc
        return added

    def get(self, device_id: str) -> DeviceRecord | None:
        rows = self._run("get", (device_id,))
        return _record(rows[0]) if rows else None

    def find_by_token(self, token: str) -> DeviceRecord | None:
        rows = self._run("by_token", (hash_token(token),))
        return _matching(_record(rows[0]) if rows else None, token)

    def find_by_token_hashes(self, token_hashes: Sequence[str]) -> dict[str, DeviceRecord]:
        records = (_record(r) for r in self._run("by_token_hashes", (list(token_hashes),)))
        return {record.token_hash: record for record in records}

    def get_many(self, device_ids: Sequence[str]) -> dict[str, DeviceRecord]:
        records = (_record(r) for r in self._run("get_many", (list(device_ids),)))
        return {record.device_id: record for record in records}

    def list(self) -> list[DeviceRecord]:
        return [_record(r) for r in self._run("list")]

    def revoke(self, device_id: str) -> DeviceRecord:
        self._run("revoke", (time.time(), device_id), fetch=False)
        record = self.get(device_id)
        if record is None:
            raise UnknownDeviceError(f"no device {device_id!r} in the registry")
        return record

    def set_timezone(self, device_id: str, timezone: str) -> DeviceRecord:
        self._run("timezone", (check_timezone(timezone), device_id), fetch=False)
        record = self.get(device_id)
        if record is None:
            raise UnknownDeviceError(f"no device {device_id!r} in the registry")
        return record

    def _registered(self, cursor: Any, device_ids: Sequence[str]) -> set[str]:
        if not device_ids:
            return set()
        cursor.execute(self._sql["registered"], (sorted(set(device_ids)),))
        return {row[0] for row in cursor.fetchall()}

    def add_gateway(
        self, gateway_id: str, device_ids: Sequence[str], label: str = "", token: str | None = None
    ) -> tuple[GatewayRecord, str]:
        token = _check_new_gateway(gateway_id, device_ids, token)
        record = GatewayRecord(
            gateway_id, hash_token(token), label, time.time(), None, frozenset(device_ids)
        )

        def insert(cursor: Any) -> None:
            unknown = _unknown_devices(device_ids, self._registered(cursor, device_ids))
            if unknown is not None:
                raise unknown
            cursor.execute(self._sql["device_token"], (record.token_hash,))
            if cursor.fetchone() is not None:
                raise _gateway_exists(gateway_id, "token_hash")
            cursor.execute(self._sql["gateway_insert"], _gateway_row(record))

        try:
            self._transaction(insert)
        except self._psycopg.errors.UniqueViolation as exc:
            detail = getattr(exc.diag, "message_detail", None) or str(exc)
            raise _gateway_exists(gateway_id, detail) from exc
        return record, token

    def get_gateway(self, gateway_id: str) -> GatewayRecord | None:
        rows = self._run("gateway_get", (gateway_id,))
        return _gateway_record(rows[0]) if rows else None

    def find_gateway_by_token(self, token: str) -> GatewayRecord | None:
        rows = self._run("gateway_by_token", (hash_token(token),))
        return _matching(_gateway_record(rows[0]) if rows else None, token)

    def list_gateways(self) -> builtins.list[GatewayRecord]:
        return [_gateway_record(r) for r in self._run("gateway_list")]

    def bind_gateway(
        self, gateway_id: str, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> GatewayRecord:
        _check_device_ids([*add, *remove])

        def rebind(cursor: Any) -> GatewayRecord:
            cursor.execute(self._sql["gateway_lock"], (gateway_id,))
            row = cursor.fetchone()
            if row is None:
                raise UnknownGatewayError(f"no gateway {gateway_id!r} in the registry")
            unknown = _unknown_devices(add, self._registered(cursor, add))
            if unknown is not None:
                raise unknown
            record = _rebound(_gateway_record(row), add, remove)
            cursor.execute(self._sql["gateway_bind"], (_encode_ids(record.device_ids), gateway_id))
            return record

        return self._transaction(rebind)

    def revoke_gateway(self, gateway_id: str) -> GatewayRecord:
        self._run("gateway_revoke", (time.time(), gateway_id), fetch=False)
        record = self.get_gateway(gateway_id)
        if record is None:
            raise UnknownGatewayError(f"no gateway {gateway_id!r} in the registry")
        return record

    def ping(self) -> None:
        self._run("ping")

    def drop(self) -> None:
        """Drop the tables (tests)."""
        from psycopg import sql  # noqa: PLC0415

        with self._lock:
            self._connection().execute(self._sql["gateway_drop"])
            self._connection().execute(
                sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(self.table))
            )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
