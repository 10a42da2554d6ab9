"""Configuration of the history service (env prefix ``HARSTREAM_HISTORY_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.alerting.settings import default_store_url as default_operators_url
from services.common.clientaddr import check_proxy_settings
from services.common.listener_settings import ListenerSettings
from services.history.segments import SegmentConfig
from services.ingest.settings import default_registry_url
from shared.settings import StreamSettings
from shared.xdg import harstream_dir


def default_store_url() -> str:
    """``sqlite:///$XDG_DATA_HOME/harstream/history.db`` (``~/.local/share/...``)."""
    return f"sqlite:///{harstream_dir('data') / 'history.db'}"


class HistorySettings(StreamSettings, ListenerSettings):
    """Kafka, store, registry, operators and HTTP settings of ``harstream history``."""

    model_config = SettingsConfigDict(env_prefix="HARSTREAM_HISTORY_", frozen=True, extra="ignore")

    group_id: str = Field(
        "harstream-history", description="Kafka consumer group of the history workers."
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest",
        description=(
            "Where a new consumer group starts: 'earliest' so a first deployment builds the "
            "history of what the predictions topic still holds."
        ),
    )
    max_batch_records: int = Field(1000, ge=1, description="Most predictions read per batch.")
    commit_interval_s: float = Field(
        5.0,
        gt=0,
        description=(
            "How often segments and device states are stored and THEN the offsets they "
            "cover committed (seconds). A crash replays at most this much; the replay is "
            "recognised and not counted twice. Also how stale the API may be."
        ),
    )
    max_gap_s: float = Field(
        5.0,
        gt=0,
        description=(
            "Longest gap between consecutive windows that one segment bridges (seconds); a "
            "longer silence ends the segment (and is missing from the day's coverage)."
        ),
    )
    lateness_s: float = Field(
        5.0,
        ge=0,
        description=(
            "How long (device time) a window waits for earlier windows that arrive after "
            "it; windows later than this are not counted."
        ),
    )
    idle_flush_s: float = Field(
        10.0,
        gt=0,
        description=(
            "A device silent this long (wall clock) has its waiting windows counted at once."
        ),
    )
    max_ahead_s: float = Field(
        86_400.0,
        gt=0,
        description=(
            "A prediction whose window ends further ahead of the wall clock than this "
            "(seconds) is a dead letter: one window from a clock set years ahead would "
            "otherwise make every later window of the device look like a replay."
        ),
    )
    retention_days: float = Field(
        90.0,
        gt=0,
        description="Segments that ended longer ago than this are deleted (days).",
    )
    retention_interval_s: float = Field(
        3600.0, gt=0, description="How often old segments are deleted (seconds)."
    )
    store_url: str = Field(
        default_factory=default_store_url,
        description=(
            "History store: 'sqlite:///path/history.db' (default under the XDG data dir) or "
            "'postgresql://user@host:5432/db'."
        ),
    )
    store_schema: str = Field(
        "harstream_history",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="PostgreSQL schema of the history tables (created if missing).",
    )
    registry_url: str = Field(
        default_factory=default_registry_url,
        description=(
            "The device registry ingest uses (time zones and the list of devices): same "
            "value as HARSTREAM_INGEST_REGISTRY_URL."
        ),
    )
    registry_table: str = Field(
        "harstream_devices",
        description="Table of a PostgreSQL registry (as HARSTREAM_INGEST_REGISTRY_TABLE).",
    )
    registry_cache_s: float = Field(
        60.0, gt=0, description="How long device time zones read from the registry are reused."
    )
    operators_store_url: str = Field(
        default_factory=default_operators_url,
        description=(
            "Where operators are kept: the alert store (same value as "
            "HARSTREAM_ALERTING_STORE_URL), so the history API takes the alert API's logins."
        ),
    )
    operators_store_schema: str = Field(
        "harstream_alerting",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="PostgreSQL schema of the alert store (as HARSTREAM_ALERTING_STORE_SCHEMA).",
    )
    host: str = Field("127.0.0.1", description="HTTP API bind address (loopback by default).")
    port: int = Field(8084, ge=0, le=65535, description="HTTP API port (0: any free port).")
    max_range_days: float = Field(
        31.0, gt=0, description="Longest from-to range GET /v1/devices/{id}/activity serves."
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="History API: longest wait for a request's headers (s)."
    )
    body_timeout_s: float = Field(
        10.0, gt=0, description="History API: longest wait for a request's body (s)."
    )
    keepalive_timeout_s: float = Field(
        15.0, gt=0, description="History API: idle keep-alive connection lifetime (s)."
    )
    max_connections: int = Field(
        256, ge=1, description="History API: most connections served at once."
    )
    max_body_bytes: int = Field(
        16 * 1024, ge=1024, description="History API: largest request body (bytes; GETs only)."
    )
    auth_failure_rate_per_s: float = Field(
        0.5,
        gt=0,
        description="Failed authentications allowed per source address and second.",
    )
    auth_failure_burst: int = Field(
        10, ge=1, description="Failed authentications a source address may make at once."
    )
    client_ip_header: str = Field(
        "", description="Header carrying the client address behind a proxy (trusted_proxies)."
    )
    trusted_proxies: str = Field(
        "",
        description="Proxies (addresses or CIDR, comma-separated) client_ip_header is read from.",
    )
    shutdown_timeout_s: float = Field(
        20.0,
        gt=0,
        description="Longest a stop may take before the worker exits with status 1 (s).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> HistorySettings:
        check_proxy_settings(self.client_ip_header, self.trusted_proxies)
        return self

    @property
    def segment_config(self) -> SegmentConfig:
        return SegmentConfig(max_gap_s=self.max_gap_s, lateness_s=self.lateness_s)
