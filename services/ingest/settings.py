"""Configuration of the ingest service (env prefix ``HARSTREAM_INGEST_``)."""

from __future__ import annotations

from typing import Protocol

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.clientaddr import check_proxy_settings
from services.common.listener_settings import ListenerSettings
from services.ingest.validation import PacketLimits
from shared.settings import StreamSettings
from shared.xdg import harstream_dir


def default_registry_url() -> str:
    """``sqlite:///`` + ``$XDG_DATA_HOME/harstream/devices.db`` (``~/.local/share/...``)."""
    return f"sqlite:///{harstream_dir('data') / 'devices.db'}"


class _PacketLimitFields(Protocol):
    @property
    def max_samples(self) -> int: ...

    @property
    def acc_limit_g(self) -> float: ...

    @property
    def gyro_limit_rad_s(self) -> float: ...

    @property
    def min_sample_rate_hz(self) -> float: ...

    @property
    def max_sample_rate_hz(self) -> float: ...

    @property
    def max_future_skew_s(self) -> float: ...


class PacketLimitSettings:
    """Mixin: the :class:`PacketLimits` of settings with the packet-limit fields (HTTP
    ingest's and the MQTT bridge's, each with its own descriptions)."""

    @property
    def limits(self: _PacketLimitFields) -> PacketLimits:
        return PacketLimits(
            max_samples=self.max_samples,
            acc_limit_g=self.acc_limit_g,
            gyro_limit_rad_s=self.gyro_limit_rad_s,
            min_sample_rate_hz=self.min_sample_rate_hz,
            max_sample_rate_hz=self.max_sample_rate_hz,
            max_future_skew_s=self.max_future_skew_s,
        )


class IngestSettings(StreamSettings, ListenerSettings, PacketLimitSettings):
    """HTTP ingest: authenticated device packets → validation → Kafka raw topic."""

    model_config = SettingsConfigDict(env_prefix="HARSTREAM_INGEST_", frozen=True, extra="ignore")

    host: str = Field("0.0.0.0", description="Address the HTTP server binds to.")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port (0: any free port).")
    metrics_host: str = Field(
        "127.0.0.1",
        description=(
            "Bind address of the /metrics listener (not served on the device port): loopback "
            "unless configured (k8s and docker-compose set 0.0.0.0; only Prometheus may "
            "connect)."
        ),
    )
    metrics_port: int = Field(
        9101, ge=0, le=65535, description="Port of the Prometheus /metrics listener (0: off)."
    )
    registry_url: str = Field(
        default_factory=default_registry_url,
        description=(
            "Device registry: 'sqlite:////absolute/path.db' or 'sqlite:///relative/path.db' "
            "(embedded; default $XDG_DATA_HOME/harstream/devices.db, i.e. "
            "~/.local/share/harstream/devices.db) or 'postgresql://user@host:port/db'."
        ),
    )
    registry_table: str = Field(
        "harstream_devices",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$",
        description="Table of the PostgreSQL registry (SQLite always uses 'devices').",
    )
    max_body_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description=(
            "Largest request body in bytes, compressed and decompressed alike (413 above it; "
            "rejected from Content-Length before the body is read)."
        ),
    )
    max_samples: int = Field(2000, ge=1, description="Most samples (rows) in one packet.")
    max_batch_packets: int = Field(
        1000,
        ge=1,
        description=(
            "Most packets in one POST /v1/packets:batch request (422 above it); the body is "
            "held to max_body_bytes as well."
        ),
    )
    acc_limit_g: float = Field(
        16.0, gt=0, description="Largest plausible |acc| per axis (g); IMUs saturate at ±16 g."
    )
    gyro_limit_rad_s: float = Field(
        35.0,
        gt=0,
        description="Largest plausible |gyro| per axis (rad/s); 35 rad/s ≈ 2000 °/s full scale.",
    )
    min_sample_rate_hz: float = Field(10.0, gt=0, description="Lowest accepted sample rate (Hz).")
    max_sample_rate_hz: float = Field(400.0, gt=0, description="Highest accepted sample rate (Hz).")
    max_future_skew_s: float = Field(
        300.0,
        ge=0,
        description=(
            "How far first_sample_time may lie ahead of the server clock (seconds); device "
            "clocks drift, a packet from further in the future is rejected (422)."
        ),
    )
    rate_limit_samples_per_s: float = Field(
        800.0,
        gt=0,
        description=(
            "Per-device sustained rate limit (samples/s, token bucket); twice the fastest "
            "accepted sample rate so replays and catch-up uploads pass."
        ),
    )
    rate_limit_burst_samples: int = Field(
        8000,
        ge=1,
        description=(
            "Per-device bucket size (samples): a reconnecting device may upload this much "
            "backlog at once. Must be at least max_samples."
        ),
    )
    produce_timeout_s: float = Field(
        5.0,
        gt=0,
        description=(
            "How long a request waits for Kafka to acknowledge its record before answering 503 "
            "(seconds)."
        ),
    )
    producer_linger_ms: int = Field(
        5,
        ge=0,
        le=1000,
        description=(
            "How long the Kafka producer waits to fill a batch before sending it (ms): "
            "records of concurrent requests share produce requests, for up to this much "
            "more latency per packet. kafka-python's sender costs more per produce request "
            "than per record: 5 ms took 25-35 % off ingest's CPU per packet at 500-1,000 "
            "live devices (python -m benchmarks.bench_ingest) and halved the broker's. "
            "On the local broker (kafka_profile tansu) at least 25 ms: it lists every "
            "stored batch on each fetch, so fewer batches cost it less."
        ),
    )
    raw_bundle_linger_ms: int = Field(
        0,
        ge=0,
        le=1000,
        description=(
            "Raw bundles (ms; 0: one Kafka record per packet): > 0 sends the packets bound for "
            "one raw partition as one record (a bundle, see shared.messages.raw). A packet "
            "for a partition with no bundle awaiting its acknowledgement goes at once; those "
            "that come meanwhile go together when it is acknowledged, or once the first has "
            "waited this long (the acknowledgement time ingest reports includes the wait). "
            "Every reader of the raw topic takes both forms, so it can be turned on once they "
            "all run this version."
        ),
    )
    heartbeat_interval_s: float = Field(
        1.0,
        ge=0,
        description=(
            "How often ingest writes a heartbeat to every partition of the heartbeats topic "
            "(seconds; 0: never). Alerting counts a device's silence only while heartbeats "
            "flow, so a broker or ingest outage does not raise DEVICE_OFFLINE for the fleet."
        ),
    )
    broker_retry_after_s: int = Field(
        5, ge=1, description="Retry-After (seconds) sent with 503 when Kafka is unavailable."
    )
    token_cache_ttl_s: float = Field(
        5.0,
        ge=0,
        description=(
            "How long a token lookup is cached (seconds): a revoked device is refused at most "
            "this long after `harstream devices revoke`."
        ),
    )
    token_cache_size: int = Field(
        10_000, ge=1, description="Most cached token lookups (least recently used go first)."
    )
    registry_timeout_s: float = Field(
        3.0, gt=0, description="Longest wait for one registry call before answering 503."
    )
    readiness_timeout_s: float = Field(
        2.0, gt=0, description="Broker metadata / registry timeout of GET /readyz (seconds)."
    )
    shutdown_timeout_s: float = Field(
        10.0,
        gt=0,
        description="On SIGTERM: how long in-flight requests and the producer flush may take.",
    )
    access_log: bool = Field(
        False, description="Log every HTTP request (aiohttp access log); noisy under load."
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description=(
            "Longest time a request's headers may take to arrive, from the connection's start "
            "or the request's first byte (seconds); the connection is then closed (slowloris)."
        ),
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description=(
            "Longest time a request's body may take to arrive after its headers (seconds); "
            "the connection is then answered 408 and closed."
        ),
    )
    keepalive_timeout_s: float = Field(
        15.0, gt=0, description="How long an idle keep-alive connection stays open (seconds)."
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description=(
            "Most connections served at once; one more is answered 503 without being read and "
            "closed. Keep it below the process's open-file limit (ulimit -n)."
        ),
    )
    auth_failure_rate_per_s: float = Field(
        1.0,
        gt=0,
        description=(
            "Failed authentications allowed per source address and second (token bucket): "
            "past the burst, requests from that address get 429 before any token lookup."
        ),
    )
    auth_failure_burst: int = Field(
        20,
        ge=1,
        description="Failed authentications a source address may make at once before 429s.",
    )
    client_ip_header: str = Field(
        "",
        description=(
            "Header carrying the client's address when ingest sits behind a proxy, e.g. "
            "'X-Forwarded-For' (empty: the peer address is the client). Honoured only for "
            "requests from trusted_proxies."
        ),
    )
    trusted_proxies: str = Field(
        "",
        description=(
            "Comma-separated addresses or networks (CIDR) of the proxies whose "
            "client_ip_header is believed, e.g. '10.0.0.0/8'."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> IngestSettings:
        if self.min_sample_rate_hz > self.max_sample_rate_hz:
            raise ValueError("min_sample_rate_hz must not exceed max_sample_rate_hz")
        check_proxy_settings(self.client_ip_header, self.trusted_proxies)
        if self.metrics_port and self.metrics_port == self.port:
            raise ValueError("metrics_port must differ from port: /metrics has its own listener")
        if self.rate_limit_burst_samples < self.max_samples:
            raise ValueError(
                "rate_limit_burst_samples must be at least max_samples, or the largest "
                "packets could never pass the rate limiter"
            )
        return self
