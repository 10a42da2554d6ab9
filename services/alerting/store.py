"""Alert store: current alerts, their event history (with who acted, the audit trail), the
webhook outbox, what every device's rules are waiting on (monitor snapshots), and the
operators who may use the alert API (:mod:`services.common.operators`).

One :class:`AlertStore` protocol, two implementations: SQLite (a single worker, the default)
and PostgreSQL (several workers, or when the care platform reads the tables). Every alert
transition is written in ONE transaction with its history row and its webhook outbox rows,
so a crash never leaves an alert without its notifications (at least once: deliveries and
unpublished Kafka events are picked up again after a restart). The same transaction stores
the monitor snapshots of the devices the batch touched, with their Kafka partition, before
the worker commits the batch's offsets: a restarted worker, or the new owner of a partition
after a rebalance, continues every rule exactly where it was (a fall waiting for its
confirmation, a device falling silent, cooldowns).

Calls are blocking and serialised by a lock; the service runs them in a worker thread.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import orjson

from services.alerting.lifecycle import AlertTransition
from services.common.operators import (
    OperatorExistsError,
    OperatorRecord,
    RevokedOperatorError,
    Role,
    UnknownOperatorError,
)
from services.common.sqlstore import PostgresStore, SqliteStore, SqlStore
from shared.errors import HarstreamError
from shared.messages import Alert, AlertState, AlertType, Severity


class StoreError(HarstreamError):
    """The alert store cannot be read or written (connection lost, disk full...)."""

    retriable = True


class Delivery(NamedTuple):
    """One webhook POST to make (or retry)."""

    id: int
    url: str
    #: ``<alert_id>:<event>``: the Idempotency-Key header, the same on every attempt.
    idempotency_key: str
    #: The JSON body, exactly as first built.
    body: str
    #: Attempts made so far.
    attempts: int
    #: When the delivery was recorded (Unix time): retries stop ``give_up_after_s`` later.
    created_at: float


class DeviceSnapshot(NamedTuple):
    """One device's monitor snapshot as stored."""

    device_id: str
    #: Kafka partition of the device's records (the same in every harstream topic).
    partition: int
    #: :meth:`DeviceMonitor.snapshot` (JSON-ready).
    state: dict[str, Any]


class StoredDevice(NamedTuple):
    """What a worker needs to take a device over: its snapshot and its open alerts."""

    device_id: str
    partition: int
    state: dict[str, Any]
    alerts: list[Alert]


class HistoryEntry(NamedTuple):
    """One step in an alert's life, as the audit trail shows it."""

    #: Order of the steps (the store's event id).
    event_id: int
    #: ``opened``, ``acknowledged`` or ``resolved``.
    event: str
    #: Unix seconds.
    at: float
    #: The authenticated operator who asked for it; None when the rules took the step.
    operator: str | None
    note: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "at": self.at,
            "operator": self.operator,
            "note": self.note,
        }


class OperatorStore(Protocol):
    """Operators as stored (the hashes, never the secrets)."""

    def add_operator(self, record: OperatorRecord) -> None:
        """Raises :class:`OperatorExistsError` if the name is taken (also when revoked)."""

    def operator(self, name: str) -> OperatorRecord | None: ...

    def operator_by_key(self, key_id: str) -> OperatorRecord | None:
        """The operator whose current API key has this (public) id."""

    def operators(self) -> list[OperatorRecord]:
        """All of them, revoked ones included, by name."""

    def revoke_operator(self, name: str, now: float) -> OperatorRecord:
        """Revoke ``name`` and forget its key (idempotent); :class:`UnknownOperatorError`."""

    def set_operator_key(self, name: str, key_id: str, key_hash: str, now: float) -> OperatorRecord:
        """Replace the API key: the old one stops working with this commit."""

    def set_operator_password(
        self, name: str, password_hash: str | None, now: float
    ) -> OperatorRecord: ...


class AlertStore(OperatorStore, Protocol):
    def record(
        self,
        transitions: Sequence[AlertTransition],
        webhook_urls: Sequence[str],
        snapshots: Sequence[DeviceSnapshot] = (),
        clocks: Mapping[int, dict[str, Any]] | None = None,
    ) -> None:
        """Store alerts' new state, their history, their webhook deliveries, the given
        device snapshots and partition clocks (:mod:`services.alerting.liveness`) atomically."""

    def devices(self, partitions: Collection[int]) -> list[StoredDevice]:
        """Snapshots and open/acknowledged alerts of the devices of ``partitions``."""

    def clocks(self, partitions: Collection[int]) -> dict[int, dict[str, Any]]:
        """Stored partition clocks of ``partitions`` (those never stored are missing)."""

    def get(self, alert_id: str) -> Alert | None: ...

    def history(self, alert_id: str) -> list[HistoryEntry]:
        """The alert's steps, oldest first (empty for an unknown alert)."""

    def list_alerts(
        self,
        state: AlertState | None = None,
        kind: AlertType | None = None,
        device_id: str | None = None,
        limit: int = 100,
    ) -> list[Alert]:
        """Newest first."""

    def active(self) -> list[Alert]:
        """Open and acknowledged alerts."""

    def count_active(self) -> dict[AlertType, int]: ...

    def unpublished(self, limit: int = 500) -> list[tuple[int, Alert]]:
        """History rows not yet confirmed on the alerts topic, oldest first."""

    def mark_published(self, event_ids: Sequence[int]) -> None: ...

    def claim_deliveries(self, now: float, limit: int, lease_s: float) -> list[Delivery]:
        """Pending deliveries due at ``now``; hidden from other claims for ``lease_s``."""

    def delivery_retry(
        self, delivery_id: int, attempts: int, next_at: float, error: str
    ) -> None: ...

    def delivery_done(self, delivery_id: int, attempts: int, status: str, error: str) -> None:
        """Final state: ``delivered`` or ``failed``."""

    def deliveries(self, alert_id: str | None = None) -> list[dict[str, Any]]:
        """Outbox rows (for inspection and tests)."""

    def ping(self) -> None:
        """Raise :class:`StoreError` if the store cannot answer."""

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    alert_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    severity TEXT NOT NULL,
    reason TEXT NOT NULL,
    opened_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    acknowledged_by TEXT,
    details TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_device_type ON alerts (device_id, type, state);
CREATE INDEX IF NOT EXISTS alerts_state_opened ON alerts (state, opened_at);
CREATE TABLE IF NOT EXISTS alert_events (
    id {serial},
    alert_id TEXT NOT NULL,
    event TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    alert TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS alert_events_alert ON alert_events (alert_id);
CREATE INDEX IF NOT EXISTS alert_events_unpublished ON alert_events (published, id);
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id {serial},
    alert_id TEXT NOT NULL,
    url TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    last_error TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    UNIQUE (url, idempotency_key)
);
CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox (status, next_attempt_at);
CREATE TABLE IF NOT EXISTS device_state (
    device_id TEXT PRIMARY KEY,
    kafka_partition INTEGER NOT NULL,
    state TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS device_state_partition ON device_state (kafka_partition);
CREATE TABLE IF NOT EXISTS partition_clock (
    kafka_partition INTEGER PRIMARY KEY,
    clock TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS operators (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION,
    key_id TEXT UNIQUE,
    key_hash TEXT,
    password_hash TEXT
);
"""

#: Columns added to tables of stores created before they existed: (table, column, type).
_ADDED_COLUMNS = (
    ("alert_events", "operator", "TEXT"),
    ("alert_events", "note", "TEXT"),
)

_OPERATOR_COLUMNS = (
    "name, role, created_at, updated_at, revoked_at, key_id, key_hash, password_hash"
)

_ALERT_COLUMNS = (
    "alert_id, device_id, type, state, severity, reason, opened_at, updated_at, "
    "acknowledged_by, details"
)


def webhook_body(transition: AlertTransition) -> str:
    """``{"event": "opened|acknowledged|resolved", "alert": {...}}``."""
    return json.dumps(
        {"event": transition.event.value, "alert": transition.alert.to_dict()},
        separators=(",", ":"),
    )


def _alert_from_row(row: Sequence[Any]) -> Alert:
    return Alert(
        alert_id=row[0],
        device_id=row[1],
        type=AlertType(row[2]),
        state=AlertState(row[3]),
        severity=Severity(row[4]),
        reason=row[5],
        opened_at=float(row[6]),
        updated_at=float(row[7]),
        acknowledged_by=row[8],
        details=json.loads(row[9]),
    )


def _operator_from_row(row: Sequence[Any]) -> OperatorRecord:
    return OperatorRecord(
        name=row[0],
        role=Role(row[1]),
        created_at=float(row[2]),
        updated_at=float(row[3]),
        revoked_at=None if row[4] is None else float(row[4]),
        key_id=row[5],
        key_hash=row[6],
        password_hash=row[7],
    )


def _json_text(state: Mapping[str, Any]) -> str:
    """A snapshot or clock as compact JSON text. orjson: a checkpoint writes one snapshot per
    changed device, and ``json.dumps`` of one (~650 bytes of nested lists) took ~17 µs,
    orjson ~1 µs. Values orjson cannot write (numpy scalars from in-process callers) go the
    ``json`` way; both write floats as their shortest repr, so either reads back exactly."""
    try:
        return orjson.dumps(state).decode()
    except TypeError:
        return json.dumps(state, separators=(",", ":"))


def _state_from_text(text: str) -> dict[str, Any]:
    """A stored snapshot; an unreadable one comes back empty (the monitor then refuses it
    and the device restarts from its open alerts, which are stored apart)."""
    try:
        state = json.loads(text)
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


class _SqlStore(SqlStore):
    """The SQL both databases share; :mod:`services.common.sqlstore` supplies the
    connections and placeholders."""

    store_error = StoreError
    store_name = "alert"
    _claim_sql: str

    # AlertStore
    def record(
        self,
        transitions: Sequence[AlertTransition],
        webhook_urls: Sequence[str],
        snapshots: Sequence[DeviceSnapshot] = (),
        clocks: Mapping[int, dict[str, Any]] | None = None,
    ) -> None:
        if not transitions and not snapshots and not clocks:
            return
        q = self._q
        now = time.time()

        def work(cur: Any) -> None:
            if clocks:
                cur.executemany(
                    q(
                        "INSERT INTO partition_clock (kafka_partition, clock, updated_at) "
                        "VALUES (?,?,?) ON CONFLICT (kafka_partition) DO UPDATE SET "
                        "clock = excluded.clock, updated_at = excluded.updated_at"
                    ),
                    [(p, _json_text(c), now) for p, c in clocks.items()],
                )
            if snapshots:
                cur.executemany(
                    q(
                        "INSERT INTO device_state (device_id, kafka_partition, state, updated_at) "
                        "VALUES (?,?,?,?) ON CONFLICT (device_id) DO UPDATE SET "
                        "kafka_partition = excluded.kafka_partition, state = excluded.state, "
                        "updated_at = excluded.updated_at"
                    ),
                    [(s.device_id, s.partition, _json_text(s.state), now) for s in snapshots],
                )
            for step in transitions:
                a = step.alert
                cur.execute(
                    q(
                        f"INSERT INTO alerts ({_ALERT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?) "
                        "ON CONFLICT (alert_id) DO UPDATE SET state = excluded.state, "
                        "reason = excluded.reason, updated_at = excluded.updated_at, "
                        "acknowledged_by = excluded.acknowledged_by, details = excluded.details"
                    ),
                    (
                        a.alert_id,
                        a.device_id,
                        a.type.value,
                        a.state.value,
                        a.severity.value,
                        a.reason,
                        a.opened_at,
                        a.updated_at,
                        a.acknowledged_by,
                        json.dumps(a.details),
                    ),
                )
                cur.execute(
                    q(
                        "INSERT INTO alert_events (alert_id, event, at, alert, operator, note) "
                        "VALUES (?,?,?,?,?,?)"
                    ),
                    (
                        a.alert_id,
                        step.event.value,
                        a.updated_at,
                        json.dumps(a.to_dict()),
                        step.operator,
                        step.note,
                    ),
                )
                body = webhook_body(step)
                for url in webhook_urls:
                    cur.execute(
                        q(
                            "INSERT INTO webhook_outbox (alert_id, url, idempotency_key, body, "
                            "status, attempts, next_attempt_at, created_at, updated_at) "
                            "VALUES (?,?,?,?,'pending',0,?,?,?) "
                            "ON CONFLICT (url, idempotency_key) DO NOTHING"
                        ),
                        (
                            a.alert_id,
                            url,
                            step.idempotency_key,
                            body,
                            a.updated_at,
                            a.updated_at,
                            a.updated_at,
                        ),
                    )

        self._run(work)

    def devices(self, partitions: Collection[int]) -> list[StoredDevice]:
        wanted = sorted({int(p) for p in partitions})
        if not wanted:
            return []
        marks = ",".join("?" * len(wanted))

        def work(cur: Any) -> list[StoredDevice]:
            cur.execute(
                self._q(
                    "SELECT device_id, kafka_partition, state FROM device_state "
                    f"WHERE kafka_partition IN ({marks})"
                ),
                tuple(wanted),
            )
            rows = cur.fetchall()
            cur.execute(
                self._q(
                    f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE state <> ? AND device_id IN "
                    f"(SELECT device_id FROM device_state WHERE kafka_partition IN ({marks})) "
                    "ORDER BY opened_at"
                ),
                (AlertState.RESOLVED.value, *wanted),
            )
            alerts: dict[str, list[Alert]] = {}
            for row in cur.fetchall():
                alert = _alert_from_row(row)
                alerts.setdefault(alert.device_id, []).append(alert)
            return [
                StoredDevice(d, int(p), _state_from_text(state), alerts.get(d, []))
                for d, p, state in rows
            ]

        return self._run(work)

    def clocks(self, partitions: Collection[int]) -> dict[int, dict[str, Any]]:
        wanted = sorted({int(p) for p in partitions})
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))

        def work(cur: Any) -> dict[int, dict[str, Any]]:
            cur.execute(
                self._q(
                    "SELECT kafka_partition, clock FROM partition_clock "
                    f"WHERE kafka_partition IN ({marks})"
                ),
                tuple(wanted),
            )
            return {int(p): _state_from_text(c) for p, c in cur.fetchall()}

        return self._run(work)

    def get(self, alert_id: str) -> Alert | None:
        def work(cur: Any) -> Alert | None:
            cur.execute(
                self._q(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE alert_id = ?"), (alert_id,)
            )
            row = cur.fetchone()
            return None if row is None else _alert_from_row(row)

        return self._run(work)

    def history(self, alert_id: str) -> list[HistoryEntry]:
        def work(cur: Any) -> list[HistoryEntry]:
            cur.execute(
                self._q(
                    "SELECT id, event, at, operator, note FROM alert_events WHERE alert_id = ? "
                    "ORDER BY id"
                ),
                (alert_id,),
            )
            return [HistoryEntry(int(i), e, float(at), o, n) for i, e, at, o, n in cur.fetchall()]

        return self._run(work)

    def list_alerts(
        self,
        state: AlertState | None = None,
        kind: AlertType | None = None,
        device_id: str | None = None,
        limit: int = 100,
    ) -> list[Alert]:
        where, args = [], []
        for column, value in (("state", state), ("type", kind), ("device_id", device_id)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(str(value))
        sql = f"SELECT {_ALERT_COLUMNS} FROM alerts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY opened_at DESC, alert_id LIMIT ?"

        def work(cur: Any) -> list[Alert]:
            cur.execute(self._q(sql), (*args, limit))
            return [_alert_from_row(r) for r in cur.fetchall()]

        return self._run(work)

    def active(self) -> list[Alert]:
        def work(cur: Any) -> list[Alert]:
            cur.execute(
                self._q(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE state <> ? ORDER BY opened_at"),
                (AlertState.RESOLVED.value,),
            )
            return [_alert_from_row(r) for r in cur.fetchall()]

        return self._run(work)

    def count_active(self) -> dict[AlertType, int]:
        def work(cur: Any) -> dict[AlertType, int]:
            cur.execute(
                self._q("SELECT type, COUNT(*) FROM alerts WHERE state <> ? GROUP BY type"),
                (AlertState.RESOLVED.value,),
            )
            found = {AlertType(t): int(n) for t, n in cur.fetchall()}
            return {kind: found.get(kind, 0) for kind in AlertType}

        return self._run(work)

    def unpublished(self, limit: int = 500) -> list[tuple[int, Alert]]:
        def work(cur: Any) -> list[tuple[int, Alert]]:
            cur.execute(
                self._q(
                    "SELECT id, alert FROM alert_events WHERE published = 0 ORDER BY id LIMIT ?"
                ),
                (limit,),
            )
            return [(int(i), Alert.from_dict(json.loads(body))) for i, body in cur.fetchall()]

        return self._run(work)

    def mark_published(self, event_ids: Sequence[int]) -> None:
        if not event_ids:
            return

        def work(cur: Any) -> None:
            marks = ",".join("?" * len(event_ids))
            cur.execute(
                self._q(f"UPDATE alert_events SET published = 1 WHERE id IN ({marks})"),
                tuple(event_ids),
            )

        self._run(work)

    def claim_deliveries(self, now: float, limit: int, lease_s: float) -> list[Delivery]:
        def work(cur: Any) -> list[Delivery]:
            cur.execute(self._q(self._claim_sql), (now + lease_s, now, limit))
            rows = [
                Delivery(int(r[0]), r[1], r[2], r[3], int(r[4]), float(r[5]))
                for r in cur.fetchall()
            ]
            return sorted(rows, key=lambda d: d.id)

        return self._run(work)

    def delivery_retry(self, delivery_id: int, attempts: int, next_at: float, error: str) -> None:
        def work(cur: Any) -> None:
            cur.execute(
                self._q(
                    "UPDATE webhook_outbox SET attempts = ?, next_attempt_at = ?, last_error = ?, "
                    "updated_at = ? WHERE id = ?"
                ),
                (attempts, next_at, error[:500], next_at, delivery_id),
            )

        self._run(work)

    def delivery_done(self, delivery_id: int, attempts: int, status: str, error: str) -> None:
        def work(cur: Any) -> None:
            cur.execute(
                self._q(
                    "UPDATE webhook_outbox SET attempts = ?, status = ?, last_error = ? "
                    "WHERE id = ?"
                ),
                (attempts, status, error[:500] or None, delivery_id),
            )

        self._run(work)

    def deliveries(self, alert_id: str | None = None) -> list[dict[str, Any]]:
        columns = ("id", "alert_id", "url", "idempotency_key", "status", "attempts", "last_error")
        sql = f"SELECT {', '.join(columns)} FROM webhook_outbox"
        args: tuple[Any, ...] = ()
        if alert_id is not None:
            sql += " WHERE alert_id = ?"
            args = (alert_id,)

        def work(cur: Any) -> list[dict[str, Any]]:
            cur.execute(self._q(sql + " ORDER BY id"), args)
            return [dict(zip(columns, r, strict=True)) for r in cur.fetchall()]

        return self._run(work)

    def ping(self) -> None:
        def work(cur: Any) -> None:
            cur.execute("SELECT 1")
            cur.fetchone()

        self._run(work)

    # OperatorStore
    def add_operator(self, record: OperatorRecord) -> None:
        def work(cur: Any) -> None:
            cur.execute(
                self._q(
                    f"INSERT INTO operators ({_OPERATOR_COLUMNS}) VALUES (?,?,?,?,?,?,?,?) "
                    "ON CONFLICT (name) DO NOTHING"
                ),
                (
                    record.name,
                    record.role.value,
                    record.created_at,
                    record.updated_at,
                    record.revoked_at,
                    record.key_id,
                    record.key_hash,
                    record.password_hash,
                ),
            )
            if cur.rowcount != 1:
                raise OperatorExistsError(f"operator {record.name!r} exists already")

        self._run(work)

    def _operator_where(self, cur: Any, column: str, value: str) -> OperatorRecord | None:
        cur.execute(
            self._q(f"SELECT {_OPERATOR_COLUMNS} FROM operators WHERE {column} = ?"), (value,)
        )
        row = cur.fetchone()
        return None if row is None else _operator_from_row(row)

    def operator(self, name: str) -> OperatorRecord | None:
        return self._run(lambda cur: self._operator_where(cur, "name", name))

    def operator_by_key(self, key_id: str) -> OperatorRecord | None:
        return self._run(lambda cur: self._operator_where(cur, "key_id", key_id))

    def operators(self) -> list[OperatorRecord]:
        def work(cur: Any) -> list[OperatorRecord]:
            cur.execute(f"SELECT {_OPERATOR_COLUMNS} FROM operators ORDER BY name")
            return [_operator_from_row(r) for r in cur.fetchall()]

        return self._run(work)

    def _update_operator(
        self, name: str, assignments: str, args: tuple[Any, ...], allow_revoked: bool = False
    ) -> OperatorRecord:
        def work(cur: Any) -> OperatorRecord:
            current = self._operator_where(cur, "name", name)
            if current is None:
                raise UnknownOperatorError(f"no operator {name!r}")
            if current.revoked:
                if allow_revoked:
                    return current
                raise RevokedOperatorError(f"operator {name!r} is revoked")
            cur.execute(
                self._q(f"UPDATE operators SET {assignments} WHERE name = ?"), (*args, name)
            )
            updated = self._operator_where(cur, "name", name)
            assert updated is not None
            return updated

        return self._run(work)

    def revoke_operator(self, name: str, now: float) -> OperatorRecord:
        # The key id goes too: a revoked operator's key no longer even finds the row.
        return self._update_operator(
            name,
            "revoked_at = ?, updated_at = ?, key_id = NULL, key_hash = NULL, password_hash = NULL",
            (now, now),
            allow_revoked=True,
        )

    def set_operator_key(self, name: str, key_id: str, key_hash: str, now: float) -> OperatorRecord:
        return self._update_operator(
            name, "key_id = ?, key_hash = ?, updated_at = ?", (key_id, key_hash, now)
        )

    def set_operator_password(
        self, name: str, password_hash: str | None, now: float
    ) -> OperatorRecord:
        return self._update_operator(
            name, "password_hash = ?, updated_at = ?", (password_hash, now)
        )


class SqliteAlertStore(SqliteStore, _SqlStore):
    """A SQLite file (``:memory:`` works too). WAL mode so API reads do not wait for writes."""

    _claim_sql = (
        "UPDATE webhook_outbox SET next_attempt_at = ? WHERE id IN (SELECT id FROM "
        "webhook_outbox WHERE status = 'pending' AND next_attempt_at <= ? ORDER BY id LIMIT ?) "
        "RETURNING id, url, idempotency_key, body, attempts, created_at"
    )

    def _create_sqlite_schema(self, conn: sqlite3.Connection) -> None:
        conn.executescript(_SCHEMA.format(serial="INTEGER PRIMARY KEY AUTOINCREMENT"))
        with conn:
            for table, column, kind in _ADDED_COLUMNS:
                present = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
                if column not in present:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


class PostgresAlertStore(PostgresStore, _SqlStore):
    """PostgreSQL via psycopg 3, tables in ``schema``; reconnects after a lost connection."""

    _claim_sql = (
        "UPDATE webhook_outbox SET next_attempt_at = ? WHERE id IN (SELECT id FROM "
        "webhook_outbox WHERE status = 'pending' AND next_attempt_at <= ? "
        "ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED) "
        "RETURNING id, url, idempotency_key, body, attempts, created_at"
    )

    def __init__(self, url: str, schema: str = "harstream_alerting") -> None:
        super().__init__(url, schema)

    def _create_postgres_schema(self, cur: Any) -> None:
        cur.execute(_SCHEMA.format(serial="BIGSERIAL PRIMARY KEY"))
        for table, column, kind in _ADDED_COLUMNS:
            cur.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")


def open_store(url: str, schema: str = "harstream_alerting") -> AlertStore:
    """``sqlite:///relative.db``, ``sqlite:////absolute/alerts.db``, ``sqlite:///:memory:``, or
    ``postgresql://user@host:port/db``."""
    if url.startswith("sqlite:///"):
        return SqliteAlertStore(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresAlertStore(url, schema)
    raise StoreError(f"unsupported store URL {url!r}: use sqlite:///... or postgresql://...")
