"""The device registry: which devices may post, with which token, and the wearer's time
zone (an IANA name: the history service's daily summaries follow the wearer's day); and
which gateways may forward the packets of which devices.

A gateway (a care-home hub, a phone paired with several wearables) holds one credential of
its own, bound to a set of registered devices: ``POST /v1/packets:batch`` with that token
authenticates the packets of exactly those devices, so the hub needs none of their tokens.
A device revoked on its own stays refused through every gateway; a revoked gateway
authenticates nothing.

One interface (:class:`DeviceRegistry`) and two stores: SQLite (embedded default, stdlib,
WAL so the CLI and the running service can use the same file at once) and PostgreSQL
(psycopg 3). Both create their table on first use and keep only SHA-256 hashes of tokens
(see :mod:`services.ingest.tokens`); the SQLite file is created 0600. The calls are
blocking: the service runs them in a thread executor and caches the answers for
``token_cache_ttl_s``.
"""

from __future__ import annotations

import builtins
import logging
import sqlite3
import threading
import time
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

from services.common.files import create_private_sqlite
from services.ingest.errors import (
    DeviceExistsError,
    GatewayExistsError,
    InvalidDeviceError,
    RegistryConfigError,
    RegistryUnavailableError,
    UnknownDeviceError,
    UnknownGatewayError,
)
from services.ingest.tokens import check_token_format, generate_token, hash_token, verify_token
from services.ingest.validation import DEVICE_ID_RE

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DeviceRecord:
    device_id: str
    #: SHA-256 hex of the device's token.
    token_hash: str
    label: str
    #: Unix seconds.
    created_at: float
    #: Unix seconds, or None while the device may post.
    revoked_at: float | None
    #: IANA time zone of the wearer (``Europe/Paris``): where its days start and end.
    timezone: str = "UTC"

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def public(self) -> dict[str, Any]:
        """The record without its token hash (for listings)."""
        data = asdict(self)
        del data["token_hash"]
        return data


@dataclass(frozen=True)
class GatewayRecord:
    gateway_id: str
    #: SHA-256 hex of the gateway's token.
    token_hash: str
    label: str
    #: Unix seconds.
    created_at: float
    #: Unix seconds, or None while the gateway may forward.
    revoked_at: float | None
    #: The devices whose packets this gateway's token authenticates.
    device_ids: frozenset[str]

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def public(self) -> dict[str, Any]:
        """The record without its token hash (for listings), device ids sorted."""
        return {
            "gateway_id": self.gateway_id,
            "label": self.label,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "device_ids": sorted(self.device_ids),
        }


class NewDevice(NamedTuple):
    """A device to register with :meth:`DeviceRegistry.add_many`."""

    device_id: str
    label: str = ""
    #: The device's token; None: one is generated.
    token: str | None = None
    #: IANA time zone name (checked with :func:`check_timezone`).
    timezone: str = "UTC"


class DeviceRegistry(Protocol):
    """Blocking registry operations (thread-safe)."""

    def add(
        self, device_id: str, label: str = "", token: str | None = None, timezone: str = "UTC"
    ) -> tuple[DeviceRecord, str]:
        """Register a device; returns its record and its token (generated unless given).
        :class:`DeviceExistsError` if the id (or the given token) is already registered."""
        ...

    def add_many(self, devices: Sequence[NewDevice]) -> list[tuple[DeviceRecord, str]]:
        """Register ``devices`` in one transaction: all of them, or (any id or given token
        already registered, or repeated among them) none, with :class:`DeviceExistsError`
        naming one. Returns each one's record and token, in order."""
        ...

    def get(self, device_id: str) -> DeviceRecord | None: ...

    def find_by_token(self, token: str) -> DeviceRecord | None:
        """The device this token belongs to (revoked or not), or None."""
        ...

    def list(self) -> list[DeviceRecord]: ...

    def revoke(self, device_id: str) -> DeviceRecord:
        """Mark a device revoked (idempotent); :class:`UnknownDeviceError` if absent."""
        ...

    def set_timezone(self, device_id: str, timezone: str) -> DeviceRecord:
        """Set the device's IANA time zone (:class:`InvalidDeviceError` if unknown);
        :class:`UnknownDeviceError` if the device is absent."""
        ...

    def add_gateway(
        self, gateway_id: str, device_ids: Sequence[str], label: str = "", token: str | None = None
    ) -> tuple[GatewayRecord, str]:
        """Register a gateway bound to ``device_ids`` (each a registered device, else
        :class:`UnknownDeviceError`); returns its record and its token (generated unless
        given). :class:`GatewayExistsError` if the id or the token is already registered
        (for a gateway or a device)."""
        ...

    def get_gateway(self, gateway_id: str) -> GatewayRecord | None: ...

    def find_gateway_by_token(self, token: str) -> GatewayRecord | None:
        """The gateway this token belongs to (revoked or not), or None."""
        ...

    # builtins.list: in a class body, "list" is the class's own list method.
    def list_gateways(self) -> builtins.list[GatewayRecord]: ...

    def bind_gateway(
        self, gateway_id: str, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> GatewayRecord:
        """Bind the devices ``add`` (registered ones, else :class:`UnknownDeviceError`) to
        the gateway and unbind ``remove``; :class:`UnknownGatewayError` if it is absent."""
        ...

    def revoke_gateway(self, gateway_id: str) -> GatewayRecord:
        """Mark a gateway revoked (idempotent); :class:`UnknownGatewayError` if absent."""
        ...

    def ping(self) -> None:
        """Raise :class:`RegistryUnavailableError` unless the store answers."""
        ...

    def close(self) -> None: ...


DEFAULT_TIMEZONE = "UTC"


@cache
def _known_timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_timezone(name: str) -> str:
    """``name`` if it is an IANA time zone this system knows (``Europe/Paris``, ``UTC``),
    else :class:`InvalidDeviceError`. Membership of the tz database's list, not a ZoneInfo
    lookup: a lookup would also take file-like names the registry should not store."""
    if name not in _known_timezones():
        raise InvalidDeviceError(
            f"time zone {name!r} is not an IANA time zone name such as 'Europe/Paris' or 'UTC'"
        )
    return name


def _check_new_device(device_id: str, token: str | None) -> str:
    if not DEVICE_ID_RE.fullmatch(device_id):
        raise InvalidDeviceError(
            f"device id {device_id!r} must be 1–64 characters of [A-Za-z0-9._:-]"
        )
    if token is None:
        return generate_token()
    problem = check_token_format(token)
    if problem:
        raise InvalidDeviceError(problem)
    return token


def _new_records(devices: Sequence[NewDevice]) -> list[tuple[DeviceRecord, str]]:
    """Records and tokens of ``devices``, checked as :meth:`DeviceRegistry.add` checks one,
    and against each other (a repeated id or token would fail the transaction anyway; here
    it is named)."""
    now = time.time()
    out = []
    ids: set[str] = set()
    hashes: set[str] = set()
    for device in devices:
        token = _check_new_device(device.device_id, device.token)
        record = DeviceRecord(
            device.device_id,
            hash_token(token),
            device.label,
            now,
            None,
            check_timezone(device.timezone),
        )
        if device.device_id in ids:
            raise DeviceExistsError(f"device {device.device_id!r} is listed twice")
        if record.token_hash in hashes:
            raise DeviceExistsError(f"device {device.device_id!r} repeats another one's token")
        ids.add(device.device_id)
        hashes.add(record.token_hash)
        out.append((record, token))
    return out


def _row(record: DeviceRecord) -> tuple[Any, ...]:
    return (
        record.device_id,
        record.token_hash,
        record.label,
        record.created_at,
        None,
        record.timezone,
    )


def _matching(record: DeviceRecord | None, token: str) -> DeviceRecord | None:
    # The lookup is by hash equality in the store; re-check in constant time so the
    # answer never depends on a store's collation or comparison quirks. A miss compares
    # against a dummy, so found and not found cost the same.
    if verify_token(token, None if record is None else record.token_hash):
        return record
    return None


_COLUMNS = "device_id, token_hash, label, created_at, revoked_at, timezone"
#: Added after the first release: registries created before it get it on open (ALTER).
_TIMEZONE_COLUMN = f"timezone TEXT NOT NULL DEFAULT '{DEFAULT_TIMEZONE}'"


def _record(row: Any) -> DeviceRecord:
    device_id, token_hash, label, created_at, revoked_at, timezone = row
    return DeviceRecord(
        device_id=device_id,
        token_hash=token_hash,
        label=label,
        created_at=float(created_at),
        revoked_at=None if revoked_at is None else float(revoked_at),
        timezone=timezone,
    )


# -- gateways -------------------------------------------------------------------------------

_GATEWAY_COLUMNS = "gateway_id, token_hash, label, created_at, revoked_at, device_ids"


def _check_new_gateway(gateway_id: str, device_ids: Sequence[str], token: str | None) -> str:
    if not DEVICE_ID_RE.fullmatch(gateway_id):
        raise InvalidDeviceError(
            f"gateway id {gateway_id!r} must be 1–64 characters of [A-Za-z0-9._:-]"
        )
    _check_device_ids(device_ids)
    if token is None:
        return generate_token()
    problem = check_token_format(token)
    if problem:
        raise InvalidDeviceError(problem)
    return token


def _check_device_ids(device_ids: Sequence[str]) -> None:
    for device_id in device_ids:
        if not DEVICE_ID_RE.fullmatch(device_id):
            raise InvalidDeviceError(
                f"device id {device_id!r} must be 1–64 characters of [A-Za-z0-9._:-]"
            )


def _unknown_devices(wanted: Sequence[str], registered: set[str]) -> UnknownDeviceError | None:
    missing = sorted(set(wanted) - registered)
    if not missing:
        return None
    shown = ", ".join(repr(m) for m in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return UnknownDeviceError(
        f"no device {shown}{more} in the registry: register devices before binding them "
        "to a gateway"
    )


def _encode_ids(device_ids: frozenset[str]) -> str:
    # Device ids hold no spaces (DEVICE_ID_RE), so one sorted, space-separated column keeps
    # a gateway in one row: its token lookup is one indexed read.
    return " ".join(sorted(device_ids))


def _gateway_row(record: GatewayRecord) -> tuple[Any, ...]:
    return (
        record.gateway_id,
        record.token_hash,
        record.label,
        record.created_at,
        record.revoked_at,
        _encode_ids(record.device_ids),
    )


def _gateway_record(row: Any) -> GatewayRecord:
    gateway_id, token_hash, label, created_at, revoked_at, device_ids = row
    return GatewayRecord(
        gateway_id=gateway_id,
        token_hash=token_hash,
        label=label,
        created_at=float(created_at),
        revoked_at=None if revoked_at is None else float(revoked_at),
        device_ids=frozenset(device_ids.split()),
    )


def _matching_gateway(record: GatewayRecord | None, token: str) -> GatewayRecord | None:
    # As _matching: a constant-time re-check, the same cost found or not.
    if verify_token(token, None if record is None else record.token_hash):
        return record
    return None


def _gateway_exists(gateway_id: str, message: str) -> GatewayExistsError:
    if "token_hash" in message:
        return GatewayExistsError("that token is already registered")
    return GatewayExistsError(f"gateway {gateway_id!r} is already registered")


def _no_gateway_token(added: Sequence[tuple[DeviceRecord, str]], gateway_hashes: set[str]) -> None:
    """:class:`DeviceExistsError` if a new device's token is a gateway's: one secret must
    not authenticate both (the gateways are few, so their hashes are read whole)."""
    for record, _ in added:
        if record.token_hash in gateway_hashes:
            raise DeviceExistsError(
                f"device {record.device_id!r}: that token is already registered for a gateway"
            )


def _rebound(record: GatewayRecord, add: Sequence[str], remove: Sequence[str]) -> GatewayRecord:
    return GatewayRecord(
        record.gateway_id,
        record.token_hash,
        record.label,
        record.created_at,
        record.revoked_at,
        (record.device_ids | frozenset(add)) - frozenset(remove),
    )


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
        unique = sorted(set(device_ids))
        for start in range(0, len(unique), 500):  # SQLite's bound-parameter limit
            chunk = unique[start : start + 500]
            marks = ", ".join("?" * len(chunk))
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
        return _matching_gateway(_gateway_record(rows[0]) if rows else None, token)

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


def _exists_error(device_id: str, message: str) -> DeviceExistsError:
    if "token_hash" in message:
        return DeviceExistsError("that token is already registered for another device")
    return DeviceExistsError(f"device {device_id!r} is already registered")


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

    def add(
        self, device_id: str, label: str = "", token: str | None = None, timezone: str = "UTC"
    ) -> tuple[DeviceRecord, str]:
        # One code path with add_many: it also keeps gateways' tokens out.
        return self.add_many([NewDevice(device_id, label, token, timezone)])[0]

    def add_many(self, devices: Sequence[NewDevice]) -> list[tuple[DeviceRecord, str]]:
        added = _new_records(devices)
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction(), conn.cursor() as cursor:
                    cursor.execute(self._sql["gateway_hashes"])
                    _no_gateway_token(added, {row[0] for row in cursor.fetchall()})
                    cursor.executemany(self._sql["insert"], [_row(r) for r, _ in added])
            except self._psycopg.errors.UniqueViolation as exc:
                # The server names the conflicting key: "Key (device_id)=(x) already exists".
                detail = getattr(exc.diag, "message_detail", None) or str(exc)
                device_id = detail.split(")=(", 1)[1].split(")", 1)[0] if ")=(" in detail else "?"
                raise _exists_error(device_id, detail) from exc
            except self._psycopg.Error as exc:
                if self._conn is not None and self._conn.broken:
                    self._conn = None
                raise RegistryUnavailableError(f"device registry (PostgreSQL): {exc}") from exc
        return added

    def get(self, device_id: str) -> DeviceRecord | None:
        rows = self._run("get", (device_id,))
        return _record(rows[0]) if rows else None

    def find_by_token(self, token: str) -> DeviceRecord | None:
        rows = self._run("by_token", (hash_token(token),))
        return _matching(_record(rows[0]) if rows else None, token)

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
        return _matching_gateway(_gateway_record(rows[0]) if rows else None, token)

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


def open_registry(url: str, table: str = "harstream_devices") -> DeviceRegistry:
    """A registry for ``sqlite:////ABSOLUTE/PATH`` (``sqlite:///RELATIVE/PATH``) or
    ``postgresql://...`` (``table`` applies to PostgreSQL only)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        # As in SQLAlchemy: sqlite:////abs/path.db is absolute, sqlite:///rel/path.db relative.
        path = unquote(url[len("sqlite:///") :]) if url.lower().startswith("sqlite:///") else ""
        if not path or ":memory:" in path:
            raise RegistryConfigError(
                f"registry URL {url!r}: give a file path, e.g. sqlite:////var/lib/harstream/d.db"
            )
        return SqliteRegistry(path)
    if scheme in ("postgresql", "postgres"):
        return PostgresRegistry(url, table=table)
    raise RegistryConfigError(
        f"registry URL {url!r}: expected sqlite:///PATH or postgresql://USER@HOST/DB"
    )


def redact_url(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()
