"""The SQLite store of the registry: one file, WAL, created 0600 (embedded default, stdlib;
the CLI and the running service can use the same file at once)."""

from __future__ import annotations

import builtins
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from services.common.files import create_private_sqlite
from services.ingest.errors import (
    DeviceExistsError,
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

#: Values per ``IN (...)`` query (SQLite allowed at most 999 bound parameters before 3.32).
_IN_CHUNK = 500


def _in_chunks(values: Sequence[str]) -> Iterator[tuple[str, tuple[str, ...]]]:
    """``(placeholders, values)`` of each ``IN (...)`` query, :data:`_IN_CHUNK` values at a
    time."""
    for start in range(0, len(values), _IN_CHUNK):
        chunk = tuple(values[start : start + _IN_CHUNK])
        yield ", ".join("?" * len(chunk)), chunk


class SqliteRegistry:
    """Registry in one SQLite file (WAL journal).

    Reads (token lookups, gets, lists, pings) reuse one connection per thread: the service
    refreshes every cached token each ``token_cache_ttl_s``, 200 lookups/s for 1,000 live
    devices, and opening a connection per lookup cost ~400 µs of CPU against ~6 µs for the
    query (``python -m benchmarks.bench_ingest``). In autocommit mode every SELECT is a read
    transaction of its own, so a reused connection sees each revocation as soon as it is
    committed. Writes (add, revoke: the CLI) open a connection per call.
    """

    def __init__(self, path: Path | str, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._schema_ready = False
        self._lock = threading.Lock()
        self._local = threading.local()
        #: Every thread's read connection, closed by :meth:`close`.
        self._readers: list[sqlite3.Connection] = []

    def _connect(self) -> sqlite3.Connection:
        try:
            if not self._schema_ready:
                with self._lock:
                    if not self._schema_ready:
                        self._create_schema()
            # check_same_thread off only so close() may close other threads' readers; a
            # connection is used by the thread that opened it alone.
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        except (sqlite3.Error, OSError) as exc:
            raise RegistryUnavailableError(f"device registry {self.path}: {exc}") from exc
        return conn

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """A SELECT on this thread's reused connection (reopened after an error)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn not in self._readers:  # new thread, or closed since
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            self._local.conn = None
            self._forget(conn)
            raise RegistryUnavailableError(f"device registry {self.path}: {exc}") from exc

    def _forget(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if conn in self._readers:
                self._readers.remove(conn)
        conn.close()

    def _create_schema(self) -> None:
        create_private_sqlite(self.path)  # token hashes: readable by us only
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
        try:
            # WAL: readers (the service) never block the writer (the CLI) and vice versa.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS devices ("
                " device_id TEXT PRIMARY KEY,"
                " token_hash TEXT NOT NULL UNIQUE,"
                " label TEXT NOT NULL DEFAULT '',"
                " created_at REAL NOT NULL,"
                f" revoked_at REAL, {_TIMEZONE_COLUMN})"
            )
            present = {row[1] for row in conn.execute("PRAGMA table_info(devices)")}
            if "timezone" not in present:
                conn.execute(f"ALTER TABLE devices ADD COLUMN {_TIMEZONE_COLUMN}")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS gateways ("
                " gateway_id TEXT PRIMARY KEY,"
                " token_hash TEXT NOT NULL UNIQUE,"
                " label TEXT NOT NULL DEFAULT '',"
                " created_at REAL NOT NULL,"
                " revoked_at REAL,"
                " device_ids TEXT NOT NULL DEFAULT '')"
            )
        finally:
            conn.close()
        self._schema_ready = True

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        conn = self._connect()
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise RegistryUnavailableError(f"device registry {self.path}: {exc}") from exc
        finally:
            conn.close()

    def add(
        self, device_id: str, label: str = "", token: str | None = None, timezone: str = "UTC"
    ) -> tuple[DeviceRecord, str]:
        # One code path with add_many: it also keeps gateways' tokens out.
        return self.add_many([NewDevice(device_id, label, token, timezone)])[0]

    def add_many(self, devices: Sequence[NewDevice]) -> list[tuple[DeviceRecord, str]]:
        # One transaction: 5,000 devices in well under a second, where add() commits (an
        # fsync) per device, ~1.3 ms each here.
        added = _new_records(devices)
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                gateway_hashes = {row[0] for row in conn.execute("SELECT token_hash FROM gateways")}
                _no_gateway_token(added, gateway_hashes)
                conn.executemany(
                    f"INSERT INTO devices ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    [_row(record) for record, _ in added],
                )
            except (sqlite3.Error, DeviceExistsError):
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            raise self._which_exists(conn, added, str(exc)) from exc
        except sqlite3.Error as exc:
            raise RegistryUnavailableError(f"device registry {self.path}: {exc}") from exc
        finally:
            conn.close()
        return added

    @staticmethod
    def _which_exists(
        conn: sqlite3.Connection, added: list[tuple[DeviceRecord, str]], message: str
    ) -> DeviceExistsError:
        """The error naming the first device of ``added`` already registered (by id, or
        by token)."""
        for record, _ in added:
            row = conn.execute(
                "SELECT device_id FROM devices WHERE device_id = ? OR token_hash = ?",
                (record.device_id, record.token_hash),
            ).fetchone()
            if row is not None:
                what = "token_hash" if row[0] != record.device_id else ""
                return _exists_error(record.device_id, what or message)
        return _exists_error(added[0][0].device_id if added else "?", message)

    def get(self, device_id: str) -> DeviceRecord | None:
        rows = self._read(
            f"SELECT {_COLUMNS} FROM devices WHERE device_id = ?",
            (device_id,),
        )
        return _record(rows[0]) if rows else None

    def find_by_token(self, token: str) -> DeviceRecord | None:
        rows = self._read(
            f"SELECT {_COLUMNS} FROM devices WHERE token_hash = ?",
            (hash_token(token),),
        )
        return _matching(_record(rows[0]) if rows else None, token)

    def find_by_token_hashes(self, token_hashes: Sequence[str]) -> dict[str, DeviceRecord]:
        records = (_record(r) for r in self._read_in("token_hash", token_hashes))
        return {record.token_hash: record for record in records}

    def get_many(self, device_ids: Sequence[str]) -> dict[str, DeviceRecord]:
        records = (_record(r) for r in self._read_in("device_id", device_ids))
        return {record.device_id: record for record in records}

    def _read_in(self, column: str, values: Sequence[str]) -> list[Any]:
        """The device rows whose ``column`` is one of ``values``."""
        rows: list[Any] = []
        for marks, chunk in _in_chunks(values):
            rows += self._read(f"SELECT {_COLUMNS} FROM devices WHERE {column} IN ({marks})", chunk)
        return rows

    def list(self) -> list[DeviceRecord]:
        rows = self._read(f"SELECT {_COLUMNS} FROM devices ORDER BY device_id")
        return [_record(r) for r in rows]

    def revoke(self, device_id: str) -> DeviceRecord:
        self._query(
            "UPDATE devices SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL",
            (time.time(), device_id),
        )
        record = self.get(device_id)
        if record is None:
            raise UnknownDeviceError(f"no device {device_id!r} in the registry")
        return record

    def set_timezone(self, device_id: str, timezone: str) -> DeviceRecord:
        self._query(
            "UPDATE devices SET timezone = ? WHERE device_id = ?",
            (check_timezone(timezone), device_id),
        )
        record = self.get(device_id)
        if record is None:
            raise UnknownDeviceError(f"no device {device_id!r} in the registry")
        return record

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` in one write transaction (BEGIN IMMEDIATE: no other writer in between)."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            raise RegistryUnavailableError(f"device registry {self.path}: {exc}") from exc
        finally:
            conn.close()

    @staticmethod
    def _registered(conn: sqlite3.Connection, device_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for marks, chunk in _in_chunks(sorted(set(device_ids))):
            rows = conn.execute(
                f"SELECT device_id FROM devices WHERE device_id IN ({marks})", chunk
            ).fetchall()
            found.update(row[0] for row in rows)
        return found

    def add_gateway(
        self, gateway_id: str, device_ids: Sequence[str], label: str = "", token: str | None = None
    ) -> tuple[GatewayRecord, str]:
        token = _check_new_gateway(gateway_id, device_ids, token)
        record = GatewayRecord(
            gateway_id, hash_token(token), label, time.time(), None, frozenset(device_ids)
        )

        def insert(conn: sqlite3.Connection) -> None:
            unknown = _unknown_devices(device_ids, self._registered(conn, device_ids))
            if unknown is not None:
                raise unknown
            if conn.execute(
                "SELECT 1 FROM devices WHERE token_hash = ?", (record.token_hash,)
            ).fetchone():
                raise _gateway_exists(gateway_id, "token_hash")
            try:
                conn.execute(
                    f"INSERT INTO gateways ({_GATEWAY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    _gateway_row(record),
                )
            except sqlite3.IntegrityError as exc:
                raise _gateway_exists(gateway_id, str(exc)) from exc

        self._write(insert)
        return record, token

    def get_gateway(self, gateway_id: str) -> GatewayRecord | None:
        rows = self._read(
            f"SELECT {_GATEWAY_COLUMNS} FROM gateways WHERE gateway_id = ?", (gateway_id,)
        )
        return _gateway_record(rows[0]) if rows else None

    def find_gateway_by_token(self, token: str) -> GatewayRecord | None:
        rows = self._read(
            f"SELECT {_GATEWAY_COLUMNS} FROM gateways WHERE token_hash = ?", (hash_token(token),)
        )
        return _matching(_gateway_record(rows[0]) if rows else None, token)

    def list_gateways(self) -> builtins.list[GatewayRecord]:
        rows = self._read(f"SELECT {_GATEWAY_COLUMNS} FROM gateways ORDER BY gateway_id")
        return [_gateway_record(r) for r in rows]

    def bind_gateway(
        self, gateway_id: str, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> GatewayRecord:
        _check_device_ids([*add, *remove])

        def rebind(conn: sqlite3.Connection) -> GatewayRecord:
            row = conn.execute(
                f"SELECT {_GATEWAY_COLUMNS} FROM gateways WHERE gateway_id = ?", (gateway_id,)
            ).fetchone()
            if row is None:
                raise UnknownGatewayError(f"no gateway {gateway_id!r} in the registry")
            unknown = _unknown_devices(add, self._registered(conn, add))
            if unknown is not None:
                raise unknown
            record = _rebound(_gateway_record(row), add, remove)
            conn.execute(
                "UPDATE gateways SET device_ids = ? WHERE gateway_id = ?",
                (_encode_ids(record.device_ids), gateway_id),
            )
            return record

        return self._write(rebind)

    def revoke_gateway(self, gateway_id: str) -> GatewayRecord:
        self._query(
            "UPDATE gateways SET revoked_at = ? WHERE gateway_id = ? AND revoked_at IS NULL",
            (time.time(), gateway_id),
        )
        record = self.get_gateway(gateway_id)
        if record is None:
            raise UnknownGatewayError(f"no gateway {gateway_id!r} in the registry")
        return record

    def ping(self) -> None:
        self._read("SELECT 1 FROM devices LIMIT 1")

    def close(self) -> None:
        with self._lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
