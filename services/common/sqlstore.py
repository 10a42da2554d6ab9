"""SQLite / PostgreSQL plumbing shared by the services' stores (alerting, history).

A store writes its SQL once, with ``?`` placeholders, in a subclass of :class:`SqlStore`
(``self._run(work)`` runs ``work(cursor)`` in one transaction, ``self._q(sql)`` adapts the
placeholders). The concrete classes mix that SQL with one of the two connections here:

- :class:`SqliteStore`: one file (or ``:memory:``), created readable by the service's user
  only, WAL so API reads do not wait for writes;
- :class:`PostgresStore`: psycopg 3, tables in their own schema, reconnecting on the next
  call after the connection was lost.

Calls are blocking and serialised by a lock: the services run them in a worker thread.
Every database error becomes the store's own error class (``store_error``, retriable), so
callers catch one type whichever database is configured.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from services.common.files import create_private_sqlite
from shared.errors import HarstreamError

T = TypeVar("T")


class SqlStore:
    """The lock, the placeholders and the transaction runner; subclasses add the SQL."""

    _placeholder = "?"
    #: Raised for every database error (the service's own ``StoreError``).
    store_error: ClassVar[type[HarstreamError]]
    #: In error messages: "cannot open SQLite <store_name> store ...".
    store_name: ClassVar[str]

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def _transaction(self) -> AbstractContextManager[Any]:
        """A cursor inside one transaction; errors become :attr:`store_error`."""
        raise NotImplementedError

    def _q(self, sql: str) -> str:
        return sql if self._placeholder == "?" else sql.replace("?", self._placeholder)

    def _run(self, work: Callable[[Any], T]) -> T:
        with self._lock, self._transaction() as cursor:
            return work(cursor)


class SqliteStore(SqlStore):
    """A SQLite file (``:memory:`` works too). WAL mode so API reads do not wait for writes."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        if str(path) != ":memory:":
            # What the stores hold (operator hashes, where people were): readable by the
            # service's user only.
            create_private_sqlite(path)
        try:
            self._conn = sqlite3.connect(str(path), check_same_thread=False, timeout=10.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._create_sqlite_schema(self._conn)
        except sqlite3.Error as exc:
            raise self.store_error(
                f"cannot open SQLite {self.store_name} store {path}: {exc}"
            ) from exc

    def _create_sqlite_schema(self, conn: sqlite3.Connection) -> None:
        """Create (or upgrade) the tables; sqlite3 errors are turned into the store's."""
        raise NotImplementedError

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        try:
            with self._conn:  # commits, or rolls back on an exception
                cursor = self._conn.cursor()
                try:
                    yield cursor
                finally:
                    cursor.close()
        except sqlite3.Error as exc:
            raise self.store_error(f"SQLite {self.store_name} store: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PostgresStore(SqlStore):
    """PostgreSQL via psycopg 3, tables in ``schema``; reconnects after a lost connection."""

    _placeholder = "%s"

    def __init__(self, url: str, schema: str) -> None:
        super().__init__()
        if not schema.replace("_", "").isalnum():
            raise self.store_error(f"bad schema name {schema!r}")
        self._url = url
        self.schema = schema
        self._conn: Any = None
        with self._lock:
            self._connect()

    def _create_postgres_schema(self, cur: Any) -> None:
        """Create (or upgrade) the tables, with ``search_path`` already set to the schema."""
        raise NotImplementedError

    def _connect(self) -> Any:
        import psycopg  # noqa: PLC0415 - only PostgreSQL deployments need it

        try:
            conn = psycopg.connect(self._url, connect_timeout=10)
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                cur.execute(f'SET search_path TO "{self.schema}"')
                self._create_postgres_schema(cur)
        except psycopg.Error as exc:
            raise self.store_error(
                f"cannot open PostgreSQL {self.store_name} store: {exc}"
            ) from exc
        self._conn = conn
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        import psycopg  # noqa: PLC0415

        conn = self._conn
        try:
            if conn is None or conn.closed or conn.broken:
                conn = self._connect()
            with conn.transaction(), conn.cursor() as cursor:
                yield cursor
        except psycopg.Error as exc:
            if conn is not None and (conn.closed or conn.broken):
                self._conn = None
            raise self.store_error(f"PostgreSQL {self.store_name} store: {exc}") from exc

    def drop(self) -> None:
        """Drop the schema and everything in it (tests)."""
        with self._lock, self._transaction() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
