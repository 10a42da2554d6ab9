"""Settings every streaming service shares. Each service subclasses :class:`StreamSettings`
with its own env prefix (``HARSTREAM_INGEST_``, ``HARSTREAM_PREPROCESS_``, ...), builds it once
in ``main`` and passes it down; nothing reads ``os.environ`` anywhere else."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.topics import Topics

KafkaProfile = Literal["apache", "tansu"]
#: SASL_PLAINTEXT authenticates (SCRAM never sends the password) but does not encrypt:
#: for a private network only, such as docker-compose's.
KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_SSL", "SASL_PLAINTEXT"]
KafkaSaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256"]
EventLoopKind = Literal["uvloop", "asyncio"]


class StreamSettings(BaseSettings):
    """Kafka connection and topic layout."""

    # hide_input_in_errors: a validation error would otherwise quote the inputs, the SASL
    # password among them, in the message a service logs when it refuses to start.
    model_config = SettingsConfigDict(frozen=True, extra="ignore", hide_input_in_errors=True)

    kafka_bootstrap_servers: str = Field(
        "localhost:9092", description="Comma-separated Kafka bootstrap servers (host:port)."
    )
    kafka_profile: KafkaProfile = Field(
        "apache",
        description=(
            "Client settings profile: 'apache' for Apache Kafka (production, docker-compose, k8s); "
            "'tansu' for the embedded development broker (short group session timeouts and "
            "fetch waits, faust's end offsets corrected; services.common.kafka.clients)."
        ),
    )
    event_loop: EventLoopKind = Field(
        "uvloop",
        description=(
            "The service's asyncio event loop: 'uvloop' (libuv's, less CPU per message; "
            "asyncio's own with a warning where uvloop is not installed) or 'asyncio'."
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
    kafka_security_protocol: KafkaSecurityProtocol = Field(
        "PLAINTEXT",
        description=(
            "PLAINTEXT (local broker only), SSL (TLS, optionally with a client certificate), "
            "SASL_SSL (TLS + SCRAM, the production setting) or SASL_PLAINTEXT (SCRAM without "
            "encryption: private networks only)."
        ),
    )
    kafka_ssl_cafile: Path | None = Field(
        None,
        description=(
            "PEM file of the CA that signed the brokers' certificates (Strimzi: the cluster "
            "CA's ca.crt); unset: the system's trusted CAs."
        ),
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="PEM client certificate for mutual TLS (with kafka_ssl_keyfile)."
    )
    kafka_ssl_keyfile: Path | None = Field(
        None, description="PEM private key of kafka_ssl_certfile."
    )
    kafka_sasl_mechanism: KafkaSaslMechanism = Field(
        "SCRAM-SHA-512", description="SASL mechanism for the SASL_* protocols."
    )
    kafka_sasl_username: str | None = Field(
        None, description="SASL user (Strimzi: the KafkaUser's name)."
    )
    kafka_sasl_password: SecretStr | None = Field(
        None,
        description=(
            "SASL password; prefer kafka_sasl_password_file. Never logged or shown in repr."
        ),
    )
    kafka_sasl_password_file: Path | None = Field(
        None,
        description=(
            "File holding the SASL password (a mounted Secret, e.g. Strimzi's KafkaUser "
            "secret key 'password'); read each time a client is created, so a rotated "
            "secret is used by the next client."
        ),
    )

    @model_validator(mode="after")
    def _check_kafka_security(self) -> Self:
        problems = kafka_security_problems(self)
        if problems:
            raise ValueError("Kafka security settings: " + "; ".join(problems))
        return self

    @property
    def kafka_uses_tls(self) -> bool:
        return self.kafka_security_protocol in ("SSL", "SASL_SSL")

    @property
    def kafka_uses_sasl(self) -> bool:
        return self.kafka_security_protocol in ("SASL_SSL", "SASL_PLAINTEXT")

    def kafka_sasl_secret(self) -> SecretStr:
        """The SASL password, from ``kafka_sasl_password`` or read from its file now.

        Raises:
            ValueError: SASL is not configured, or the file cannot be read or is empty.
        """
        if self.kafka_sasl_password is not None:
            return self.kafka_sasl_password
        if self.kafka_sasl_password_file is None:
            raise ValueError("no SASL password configured")
        return SecretStr(_read_secret_file(self.kafka_sasl_password_file))

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @property
    def bootstrap_servers(self) -> list[str]:
        return [s.strip() for s in self.kafka_bootstrap_servers.split(",") if s.strip()]


def _read_secret_file(path: Path) -> str:
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        # The message names the file and the failure, never any of its content.
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ValueError(f"cannot read the SASL password file {path}: {reason}") from None
    if not secret:
        raise ValueError(f"the SASL password file {path} is empty")
    return secret


def kafka_security_problems(settings: StreamSettings) -> list[str]:
    """Every inconsistency of the Kafka security fields, in words; empty if none. A service
    refuses to start on any: a half-configured secure connection must not quietly become
    an insecure one."""
    s = settings
    problems: list[str] = []
    if s.kafka_uses_sasl:
        if not s.kafka_sasl_username:
            problems.append(f"{s.kafka_security_protocol} needs kafka_sasl_username")
        if s.kafka_sasl_password is None and s.kafka_sasl_password_file is None:
            problems.append(
                f"{s.kafka_security_protocol} needs kafka_sasl_password or kafka_sasl_password_file"
            )
        elif s.kafka_sasl_password is not None and s.kafka_sasl_password_file is not None:
            problems.append("set kafka_sasl_password or kafka_sasl_password_file, not both")
        elif s.kafka_sasl_password is not None and not s.kafka_sasl_password.get_secret_value():
            problems.append("kafka_sasl_password is empty")
        elif s.kafka_sasl_password_file is not None:
            try:
                _read_secret_file(s.kafka_sasl_password_file)
            except ValueError as exc:
                problems.append(str(exc))
    elif s.kafka_sasl_username or s.kafka_sasl_password or s.kafka_sasl_password_file:
        problems.append(
            f"SASL credentials are set but kafka_security_protocol is "
            f"{s.kafka_security_protocol}: use SASL_SSL (or SASL_PLAINTEXT on a private network)"
        )
    files = {
        "kafka_ssl_cafile": s.kafka_ssl_cafile,
        "kafka_ssl_certfile": s.kafka_ssl_certfile,
        "kafka_ssl_keyfile": s.kafka_ssl_keyfile,
    }
    if s.kafka_uses_tls:
        if (s.kafka_ssl_certfile is None) != (s.kafka_ssl_keyfile is None):
            problems.append("kafka_ssl_certfile and kafka_ssl_keyfile go together")
        for name, path in files.items():
            if path is not None and not path.is_file():
                problems.append(f"{name} {path} is not a readable file")
    elif any(path is not None for path in files.values()):
        problems.append(
            f"TLS files are set but kafka_security_protocol is {s.kafka_security_protocol}: "
            "use SSL or SASL_SSL"
        )
    return problems
