"""Settings every streaming service shares. Each service subclasses :class:`StreamSettings`
with its own env prefix (``HARSTREAM_INGEST_``, ``HARSTREAM_PREPROCESS_``, ...), builds it once
in ``main`` and passes it down; nothing reads ``os.environ`` anywhere else."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.topics import Topics

KafkaProfile = Literal["apache", "tansu"]


class StreamSettings(BaseSettings):
    """Kafka connection and topic layout."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    kafka_bootstrap_servers: str = Field(
        "localhost:9092", description="Comma-separated Kafka bootstrap servers (host:port)."
    )
    kafka_profile: KafkaProfile = Field(
        "apache",
        description=(
            "Client settings profile: 'apache' for Apache Kafka (production, docker-compose, k8s); "
            "'tansu' for the embedded development broker (short group session timeouts, "
            "one record per producer batch so faust tables recover exactly)."
        ),
    )
    topic_prefix: str = Field("harstream", description="Prefix of every topic name.")
    topic_partitions: int = Field(
        8,
        ge=1,
        description="Partitions per topic when harstream creates them; caps worker replicas.",
    )
    topic_replication_factor: int = Field(
        1, ge=1, description="Replication factor of created topics."
    )

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @property
    def bootstrap_servers(self) -> list[str]:
        return [s.strip() for s in self.kafka_bootstrap_servers.split(",") if s.strip()]

    @property
    def group_session_timeout_s(self) -> float:
        # Tansu answers JoinGroup only after half the session timeout: keep it short there.
        return 6.0 if self.kafka_profile == "tansu" else 30.0

    @property
    def group_heartbeat_interval_s(self) -> float:
        return 1.0 if self.kafka_profile == "tansu" else 3.0

    @property
    def fetch_max_wait_ms(self) -> int:
        # Tansu holds a fetch for the whole max wait whenever one of its partitions has no
        # data, even if others do (measured: 4 partitions, one with data: 465 ms at 500 ms,
        # 65 ms at 100 ms; one partition: 2 ms). Apache Kafka answers as soon as min bytes
        # are there, so the default long poll costs no latency there.
        return 50 if self.kafka_profile == "tansu" else 500
