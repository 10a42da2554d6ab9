"""Configuration of the alerting service (env prefix ``HARSTREAM_ALERTING_``).

Rule thresholds are the nested :class:`~services.alerting.rules.AlertRules`, set with a double
underscore: ``HARSTREAM_ALERTING_RULES__FALL_CONFIRM_S=45``, or as one JSON object in
``HARSTREAM_ALERTING_RULES``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.alerting.rules import AlertRules
from services.common.clientaddr import check_proxy_settings
from services.common.listener_settings import ListenerSettings
from services.console.settings import ConsoleSettings
from shared.settings import StreamSettings
from shared.xdg import harstream_dir


def default_store_url() -> str:
    """``sqlite:///$XDG_DATA_HOME/harstream/alerts.db`` (``~/.local/share/...``)."""
    return f"sqlite:///{harstream_dir('data') / 'alerts.db'}"


class AlertingSettings(StreamSettings, ListenerSettings):
    """Kafka, HTTP, store, webhook and rule settings of ``harstream alerting``."""

    model_config = SettingsConfigDict(
        env_prefix="HARSTREAM_ALERTING_",
        env_nested_delimiter="__",
        frozen=True,
        extra="ignore",
    )

    group_id: str = Field(
        "harstream-alerting", description="Kafka consumer group of the alerting workers."
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "latest",
        description=(
            "Where a new consumer group starts: 'latest' so a first deployment does not raise "
            "alerts for days-old predictions; 'earliest' in tests and replays."
        ),
    )
    max_batch_records: int = Field(
        500,
        ge=1,
        description="Most records (predictions, raw packets, heartbeats) handled per batch.",
    )
    commit_interval_s: float = Field(
        5.0,
        gt=0,
        description=(
            "How often the worker stores what its rules wait on (the snapshot of each device "
            "whose records changed it, once however many records it had) and then commits "
            "the offsets that state covers (seconds). Alert transitions are stored at once "
            "whatever this is. A crash replays at most this much of the topics; the replay "
            "is recognised as duplicates."
        ),
    )
    fetch_wait_ms: int = Field(
        500,
        ge=0,
        le=2000,
        description=(
            "Longest the broker may hold a fetch to gather fetch_min_bytes (ms; Kafka's "
            "fetch.max.wait.ms): the worker reads in bulk, and an alert waits at most this "
            "much longer (a fall waits 30 s for its confirmation anyway). At most 2,000: a "
            "partition is judged for DEVICE_OFFLINE only after a fetch of the last 5 s."
        ),
    )
    fetch_min_bytes: int = Field(
        1024 * 1024,
        ge=1,
        description=(
            "Bytes a fetch waits for (up to fetch_wait_ms) before the broker answers "
            "(Kafka's fetch.min.bytes): the raw topic, read for device liveness, brings "
            "~2.5 KB per packet."
        ),
    )
    host: str = Field(
        "127.0.0.1",
        description=(
            "HTTP API bind address: loopback unless configured (k8s and docker-compose set "
            "0.0.0.0 and limit who may connect with NetworkPolicies and published ports)."
        ),
    )
    port: int = Field(8083, ge=0, le=65535, description="HTTP API port (0: any free port).")
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description=(
            "Alert API: longest time a request's headers may take to arrive, from the "
            "connection's start or the request's first byte (seconds); then 408 and closed."
        ),
    )
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        description=(
            "Alert API: longest time a request's body may take to arrive after its headers "
            "(seconds; bodies are ack/resolve notes of a few hundred bytes); then 408 and closed."
        ),
    )
    keepalive_timeout_s: float = Field(
        15.0,
        gt=0,
        description="Alert API: how long an idle keep-alive connection stays open (seconds).",
    )
    max_connections: int = Field(
        256,
        ge=1,
        description=(
            "Alert API: most connections served at once (operators, consoles, Prometheus); "
            "one more is answered 503 without being read and closed."
        ),
    )
    max_body_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description=(
            "Alert API: largest request body in bytes (413 above it; refused from "
            "Content-Length before the body is read). A note is at most 500 characters."
        ),
    )
    auth_failure_rate_per_s: float = Field(
        0.5,
        gt=0,
        description=(
            "Failed operator authentications allowed per source address and second (token "
            "bucket): past the burst, requests from that address get 429 before any "
            "credential is checked (a Basic password check costs ~70 ms of scrypt)."
        ),
    )
    auth_failure_burst: int = Field(
        10,
        ge=1,
        description="Failed authentications a source address may make at once before 429s.",
    )
    client_ip_header: str = Field(
        "",
        description=(
            "Header carrying the client's address when the alert API sits behind a proxy, "
            "e.g. 'X-Forwarded-For' (empty: the peer address is the client). Honoured only "
            "for requests from trusted_proxies."
        ),
    )
    trusted_proxies: str = Field(
        "",
        description=(
            "Comma-separated addresses or networks (CIDR) of the proxies whose "
            "client_ip_header is believed, e.g. '10.0.0.0/8'."
        ),
    )
    store_url: str = Field(
        default_factory=default_store_url,
        description=(
            "Alert store: 'sqlite:///path/alerts.db' (default under the XDG data dir) or "
            "'postgresql://user@host:5432/db'."
        ),
    )
    store_schema: str = Field(
        "harstream_alerting",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="PostgreSQL schema of the alert tables (created if missing).",
    )
    webhook_urls: str = Field(
        "",
        description="Comma-separated URLs that receive every alert event as a JSON POST.",
    )
    webhook_timeout_s: float = Field(5.0, gt=0, description="Timeout of one webhook POST (s).")
    webhook_give_up_after_s: float = Field(
        86_400.0,
        gt=0,
        description=(
            "How long a webhook delivery is retried after its alert event before it is "
            "marked failed (s): retries are bounded by time, so a receiver outage shorter "
            "than this loses nothing."
        ),
    )
    webhook_backoff_base_s: float = Field(
        1.0, gt=0, description="First retry delay (s); doubles per attempt, with full jitter."
    )
    webhook_backoff_max_s: float = Field(
        60.0, gt=0, description="Longest retry delay (s), also caps a server's Retry-After."
    )
    webhook_concurrency: int = Field(8, ge=1, description="Webhook POSTs in flight at once.")
    webhook_poll_interval_s: float = Field(
        1.0, gt=0, description="How often the outbox is checked for due retries (s)."
    )
    shutdown_timeout_s: float = Field(
        25.0,
        gt=0,
        description=(
            "Longest a stop (SIGTERM/SIGINT) may take before the worker exits with status 1 "
            "anyway (seconds); a stop can hang on a broker or store that is gone. Keep it "
            "above webhook_timeout_s + 5 (the wait for webhook deliveries in flight) and below "
            "the orchestrator's kill timeout (30 s in k8s/). A forced exit is a crash: "
            "uncommitted predictions are read again (at-least-once)."
        ),
    )
    tick_interval_s: float = Field(
        1.0, gt=0, description="Period of the wall-clock rule check (device offline), s."
    )
    rules: AlertRules = Field(
        default_factory=AlertRules,
        description="Alert thresholds (HARSTREAM_ALERTING_RULES__<FIELD>=...).",
    )
    console: ConsoleSettings = Field(
        default_factory=ConsoleSettings,
        description="The web console served under /console/ (HARSTREAM_ALERTING_CONSOLE__<FIELD>).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> AlertingSettings:
        check_proxy_settings(self.client_ip_header, self.trusted_proxies)
        return self

    @property
    def webhook_url_list(self) -> list[str]:
        return [u.strip() for u in self.webhook_urls.split(",") if u.strip()]
