"""Configuration of the MQTT bridge (env prefix ``HARSTREAM_MQTT_BRIDGE_``)."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.ingest.settings import PacketLimitSettings
from shared.settings import StreamSettings


def default_client_id() -> str:
    """``harstream-mqtt-bridge-<hostname>``: stable across restarts of one replica, so the
    broker hands a restarted bridge the messages its previous run left unacknowledged."""
    return f"harstream-mqtt-bridge-{socket.gethostname()}"[:64]


class MqttBridgeSettings(StreamSettings, PacketLimitSettings):
    """MQTT broker → validation (ingest's) → Kafka raw topic, acknowledged after Kafka's."""

    model_config = SettingsConfigDict(
        env_prefix="HARSTREAM_MQTT_BRIDGE_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    mqtt_host: str = Field("127.0.0.1", description="MQTT broker host.")
    mqtt_port: int = Field(1883, ge=1, le=65535, description="MQTT broker port.")
    mqtt_username: str = Field(
        "harstream-bridge",
        description="The bridge's MQTT user (allowed to read every device's packets topic).",
    )
    mqtt_password: SecretStr = Field(
        SecretStr(""), description="The bridge's MQTT password (or mqtt_password_file)."
    )
    mqtt_password_file: Path | None = Field(
        None,
        description=(
            "File holding the bridge's MQTT password (a mounted Secret); read at each "
            "connection, so a rotated Secret is used on the next reconnect."
        ),
    )
    mqtt_tls: bool = Field(False, description="Connect to the broker over TLS.")
    mqtt_ca_file: Path | None = Field(
        None, description="CA of the broker's certificate (TLS; default: the system's CAs)."
    )
    client_id: str = Field(
        default_factory=default_client_id,
        min_length=1,
        max_length=64,
        description=(
            "MQTT client id (default harstream-mqtt-bridge-<hostname>); keep it stable per "
            "replica: the broker keeps the bridge's session (its unacknowledged messages) "
            "under it for session_expiry_s."
        ),
    )
    share_group: str = Field(
        "harstream-ingest",
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="Shared-subscription group: the broker spreads messages over its bridges.",
    )
    session_expiry_s: int = Field(
        3600,
        ge=0,
        description=(
            "How long the broker keeps the bridge's session and queues its messages while "
            "the bridge is away (seconds; MQTT 5 session expiry)."
        ),
    )
    receive_maximum: int = Field(
        200,
        ge=1,
        le=65535,
        description=(
            "Most messages the broker sends the bridge before it acknowledges them (MQTT 5 "
            "receive maximum): the bridge's window while Kafka acknowledges a batch."
        ),
    )
    max_batch: int = Field(
        200, ge=1, description="Most messages produced to Kafka (and then acknowledged) together."
    )
    kafka_ack_timeout_s: float = Field(
        10.0,
        gt=0,
        description=(
            "How long a batch waits for Kafka's acknowledgements (seconds). Longer counts as "
            "an outage: the bridge disconnects from MQTT without acknowledging, waits until "
            "Kafka answers, and reconnects; the broker then delivers those messages again."
        ),
    )
    producer_linger_ms: int = Field(
        5, ge=0, le=1000, description="Kafka producer linger (ms), as ingest's."
    )
    health_host: str = Field(
        "127.0.0.1",
        description="Bind address of /healthz, /readyz and /metrics (k8s sets 0.0.0.0).",
    )
    health_port: int = Field(
        9104, ge=0, le=65535, description="Port of /healthz, /readyz and /metrics (0: off)."
    )
    shutdown_timeout_s: float = Field(
        10.0, gt=0, description="On SIGTERM: how long the batch in flight may take."
    )
    # Packet limits: set them as HTTP ingest's (HARSTREAM_INGEST_*), so both accept the same.
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest message payload (bytes), as ingest's."
    )
    max_samples: int = Field(2000, ge=1, description="Most samples in one packet, as ingest's.")
    acc_limit_g: float = Field(16.0, gt=0, description="Largest |acc| per axis (g), as ingest's.")
    gyro_limit_rad_s: float = Field(
        35.0, gt=0, description="Largest |gyro| per axis (rad/s), as ingest's."
    )
    min_sample_rate_hz: float = Field(10.0, gt=0, description="Lowest sample rate (Hz).")
    max_sample_rate_hz: float = Field(400.0, gt=0, description="Highest sample rate (Hz).")
    max_future_skew_s: float = Field(
        300.0, ge=0, description="How far first_sample_time may lie ahead (s), as ingest's."
    )

    @model_validator(mode="after")
    def _consistent(self) -> MqttBridgeSettings:
        if self.min_sample_rate_hz > self.max_sample_rate_hz:
            raise ValueError("min_sample_rate_hz must not exceed max_sample_rate_hz")
        return self

    def password(self) -> str:
        """The bridge's MQTT password: the file's (stripped) if configured, else the value."""
        if self.mqtt_password_file is not None:
            return self.mqtt_password_file.read_text().strip()
        return self.mqtt_password.get_secret_value()
