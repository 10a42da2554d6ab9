"""History store: activity segments and each device's builder state.

SQLite by default (one worker), PostgreSQL when configured (several workers, or other
readers), as the alert store does (:mod:`services.alerting.store`): the same SQL, blocking
calls serialised by a lock, run by the service in a worker thread.

:meth:`HistoryStore.save` writes the changed segments (upserted by device and start: a
segment is stored again each time it grows) AND the changed devices' builder states
(:class:`services.history.segments.DeviceState`) in ONE transaction, before the worker
commits the offsets they cover: a restart restores the states and ignores the replay.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from services.common.sqlstore import PostgresStore, SqliteStore, SqlStore
from services.history.segments import Segment
from shared.errors import HarstreamError


class StoreError(HarstreamError):
    """The history store cannot be read or written (connection lost, disk full...)."""

    retriable = True


class StoredDevice(NamedTuple):
    device_id: str
    #: Kafka partition of the device's predictions.
    partition: int
    #: :meth:`DeviceState.to_dict`; empty if the stored text is unreadable.
    state: dict[str, Any]
    #: Wall-clock time of the last store (Unix seconds).
    updated_at: float


class HistoryStore(Protocol):
    def save(
        self,
        segments: Sequence[Segment],
        states: Mapping[str, tuple[int, Mapping[str, Any]]],
        now: float,
    ) -> None:
        """Upsert ``segments`` and the device states (device → (partition, state)) in one
        transaction."""

    def device_states(self, partitions: Collection[int]) -> list[StoredDevice]: ...

    def devices(self) -> list[StoredDevice]:
        """Every device with a stored state, by id."""

    def device(self, device_id: str) -> StoredDevice | None: ...

    def segments(self, device_id: str, start: float, end: float) -> list[Segment]:
        """The device's segments overlapping ``[start, end)``, oldest first."""

    def delete_before(self, cutoff: float) -> int:
        """Delete segments that ended before ``cutoff``; returns how many."""

    def ping(self) -> None: ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS history_segments (
    device_id TEXT NOT NULL,
    start_time DOUBLE PRECISION NOT NULL,
    end_time DOUBLE PRECISION NOT NULL,
    activity TEXT NOT NULL,
    model_version INTEGER NOT NULL,
    windows INTEGER NOT NULL,
    confidence_sum DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (device_id, start_time)
);
CREATE INDEX IF NOT EXISTS history_segments_end ON history_segments (end_time);
CREATE TABLE IF NOT EXISTS history_devices (
    device_id TEXT PRIMARY KEY,
    kafka_partition INTEGER NOT NULL,
    state TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS history_devices_partition ON history_devices (kafka_partition);
"""

_UPSERT_SEGMENT = (
    "INSERT INTO history_segments (device_id, start_time, end_time, activity, model_version, "
    "windows, confidence_sum) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (device_id, start_time) DO UPDATE SET end_time = excluded.end_time, "
    "activity = excluded.activity, model_version = excluded.model_version, "
    "windows = excluded.windows, confidence_sum = excluded.confidence_sum"
)
_UPSERT_DEVICE = (
    "INSERT INTO history_devices (device_id, kafka_partition, state, updated_at) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
    "kafka_partition = excluded.kafka_partition, state = excluded.state, "
    "updated_at = excluded.updated_at"
)
_SEGMENT_COLUMNS = (
    "device_id, start_time, end_time, activity, model_version, windows, confidence_sum"
)
_DEVICE_COLUMNS = "device_id, kafka_partition, state, updated_at"


def _segment(row: Sequence[Any]) -> Segment:
    return Segment(
        device_id=row[0],
        start=float(row[1]),
        end=float(row[2]),
        activity=row[3],
        model_version=int(row[4]),
        windows=int(row[5]),
        confidence_sum=float(row[6]),
    )


def _device(row: Sequence[Any]) -> StoredDevice:
    try:
        state = json.loads(row[2])
    except ValueError:
        state = {}
    return StoredDevice(
        row[0], int(row[1]), state if isinstance(state, dict) else {}, float(row[3])
    )


class _SqlStore(SqlStore):
    """The history SQL; :mod:`services.common.sqlstore` supplies the connections."""

    store_error = StoreError
    store_name = "history"

    def save(
        self,
        segments: Sequence[Segment],
        states: Mapping[str, tuple[int, Mapping[str, Any]]],
        now: float,
    ) -> None:
        segment_rows = [
            (
                s.device_id,
                s.start,
                s.end,
                s.activity,
                s.model_version,
                s.windows,
                s.confidence_sum,
            )
            for s in segments
        ]
        device_rows = [
            (device_id, partition, json.dumps(state, separators=(",", ":")), now)
            for device_id, (partition, state) in states.items()
        ]

        def work(cur: Any) -> None:
            if segment_rows:
                cur.executemany(self._q(_UPSERT_SEGMENT), segment_rows)
            if device_rows:
                cur.executemany(self._q(_UPSERT_DEVICE), device_rows)

        if segment_rows or device_rows:
            self._run(work)

    def device_states(self, partitions: Collection[int]) -> list[StoredDevice]:
        wanted = sorted(partitions)
        if not wanted:
            return []
        marks = ", ".join("?" * len(wanted))

        def work(cur: Any) -> list[StoredDevice]:
            cur.execute(
                self._q(
                    f"SELECT {_DEVICE_COLUMNS} FROM history_devices "
                    f"WHERE kafka_partition IN ({marks})"
                ),
                wanted,
            )
            return [_device(r) for r in cur.fetchall()]

        return self._run(work)

    def devices(self) -> list[StoredDevice]:
        def work(cur: Any) -> list[StoredDevice]:
            cur.execute(f"SELECT {_DEVICE_COLUMNS} FROM history_devices ORDER BY device_id")
            return [_device(r) for r in cur.fetchall()]

        return self._run(work)

    def device(self, device_id: str) -> StoredDevice | None:
        def work(cur: Any) -> StoredDevice | None:
            cur.execute(
                self._q(f"SELECT {_DEVICE_COLUMNS} FROM history_devices WHERE device_id = ?"),
                (device_id,),
            )
            row = cur.fetchone()
            return None if row is None else _device(row)

        return self._run(work)

    def segments(self, device_id: str, start: float, end: float) -> list[Segment]:
        def work(cur: Any) -> list[Segment]:
            cur.execute(
                self._q(
                    f"SELECT {_SEGMENT_COLUMNS} FROM history_segments WHERE device_id = ? "
                    "AND end_time > ? AND start_time < ? ORDER BY start_time"
                ),
                (device_id, start, end),
            )
            return [_segment(r) for r in cur.fetchall()]

        return self._run(work)

    def delete_before(self, cutoff: float) -> int:
        def work(cur: Any) -> int:
            cur.execute(self._q("DELETE FROM history_segments WHERE end_time < ?"), (cutoff,))
            return int(cur.rowcount)

        return self._run(work)

    def ping(self) -> None:
        def work(cur: Any) -> None:
            cur.execute("SELECT 1")
            cur.fetchall()

        self._run(work)


class SqliteHistoryStore(SqliteStore, _SqlStore):
    """A SQLite file (``:memory:`` works too); WAL so API reads do not wait for writes."""

    def _create_sqlite_schema(self, conn: sqlite3.Connection) -> None:
        conn.executescript(_SCHEMA)


class PostgresHistoryStore(PostgresStore, _SqlStore):
    """PostgreSQL via psycopg 3, tables in ``schema``; reconnects after a lost connection."""

    def __init__(self, url: str, schema: str = "harstream_history") -> None:
        super().__init__(url, schema)

    def _create_postgres_schema(self, cur: Any) -> None:
        cur.execute(_SCHEMA)


def open_store(url: str, schema: str = "harstream_history") -> HistoryStore:
    """``sqlite:///relative.db``, ``sqlite:////absolute/history.db``, ``sqlite:///:memory:``,
    or ``postgresql://user@host:port/db``."""
    if url.startswith("sqlite:///"):
        return SqliteHistoryStore(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresHistoryStore(url, schema)
    raise StoreError(f"unsupported store URL {url!r}: use sqlite:///... or postgresql://...")
