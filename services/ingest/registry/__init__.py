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

Layout: the records, the interface and the pure helpers both stores share in :mod:`.core`;
the stores in :mod:`.sqlite` and :mod:`.postgres`. Every public name is importable from
here.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote, urlsplit

# Re-exported: importable from here as they were before the split into modules.
from services.ingest.errors import (
    DeviceExistsError,
    GatewayExistsError,
    InvalidDeviceError,
    RegistryConfigError,
    RegistryUnavailableError,
    UnknownDeviceError,
    UnknownGatewayError,
)
from services.ingest.registry.core import (
    DEFAULT_TIMEZONE,
    DeviceRecord,
    DeviceRegistry,
    GatewayRecord,
    NewDevice,
    check_timezone,
)
from services.ingest.registry.postgres import PostgresRegistry
from services.ingest.registry.sqlite import SqliteRegistry

__all__ = [
    "DEFAULT_TIMEZONE",
    "DeviceExistsError",
    "DeviceRecord",
    "DeviceRegistry",
    "GatewayExistsError",
    "GatewayRecord",
    "InvalidDeviceError",
    "NewDevice",
    "PostgresRegistry",
    "RegistryConfigError",
    "RegistryUnavailableError",
    "SqliteRegistry",
    "UnknownDeviceError",
    "UnknownGatewayError",
    "check_timezone",
    "open_registry",
    "redact_url",
]

logger = logging.getLogger(__name__)


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
