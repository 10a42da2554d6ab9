"""Kafka connection settings for every client library, built in one place from
:class:`~shared.settings.StreamSettings`.

Every Kafka client harstream creates (kafka-python in ingest and the tools, aiokafka in
inference and alerting, faust in preprocess, the admin client) takes its bootstrap servers,
TLS and SASL options from here, so one setting turns TLS and SCRAM on everywhere, and TLS
policy (CA, client certificate, hostname check) cannot differ between services.

The SASL password is read when a client's options are built (a mounted Secret that was
rotated is used by the next client) and is only ever handed to the client library: it is
never logged, and :func:`describe` shows the connection without it.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from aiokafka.helpers import create_ssl_context  # type: ignore[import-untyped]

from shared.settings import StreamSettings

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

__all__ = [
    "aiokafka_kwargs",
    "describe",
    "faust_broker_urls",
    "faust_credentials",
    "kafka_python_kwargs",
    "ssl_context",
]


def ssl_context(settings: StreamSettings) -> ssl.SSLContext:
    """The TLS context of ``settings``: the brokers' certificates are verified against
    ``kafka_ssl_cafile`` (or the system's CAs) with hostname checking, the client
    certificate is presented if one is configured, and nothing below TLS 1.2 is spoken."""
    context: ssl.SSLContext = create_ssl_context(
        cafile=settings.kafka_ssl_cafile,
        certfile=settings.kafka_ssl_certfile,
        keyfile=settings.kafka_ssl_keyfile,
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class RedactedStr(str):
    """A password the client libraries can use as a ``str`` but whose ``repr`` hides it:
    kafka-python's admin client logs its whole configuration (password included) at DEBUG,
    and a dict is logged through the ``repr`` of its values."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'**********'"


def _password(settings: StreamSettings) -> RedactedStr:
    return RedactedStr(settings.kafka_sasl_secret().get_secret_value())


def _sasl(settings: StreamSettings) -> dict[str, Any]:
    # kafka-python and aiokafka share these names ("plain" is historical: SCRAM uses them too).
    return {
        "sasl_mechanism": settings.kafka_sasl_mechanism,
        "sasl_plain_username": settings.kafka_sasl_username,
        "sasl_plain_password": _password(settings),
    }


def _security(settings: StreamSettings) -> dict[str, Any]:
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_uses_tls:
        options["ssl_context"] = ssl_context(settings)
    if settings.kafka_uses_sasl:
        options.update(_sasl(settings))
    return options


def kafka_python_kwargs(settings: StreamSettings, **options: Any) -> dict[str, Any]:
    """Keyword arguments for kafka-python's ``KafkaProducer``, ``KafkaConsumer`` and
    ``KafkaAdminClient``: bootstrap servers and security, plus ``options``."""
    return {"bootstrap_servers": settings.bootstrap_servers, **_security(settings), **options}


def aiokafka_kwargs(settings: StreamSettings, **options: Any) -> dict[str, Any]:
    """Keyword arguments for aiokafka's ``AIOKafkaProducer`` and ``AIOKafkaConsumer``:
    bootstrap servers and security, plus ``options``."""
    return {"bootstrap_servers": settings.bootstrap_servers, **_security(settings), **options}


def faust_broker_urls(settings: StreamSettings) -> list[str]:
    """Faust's ``broker`` setting. The scheme stays ``kafka://`` whatever the security:
    faust takes TLS and SASL from ``broker_credentials`` (:func:`faust_credentials`)."""
    return [f"kafka://{server}" for server in settings.bootstrap_servers]


def faust_credentials(settings: StreamSettings) -> CredentialsT | None:
    """Faust's ``broker_credentials`` (None for PLAINTEXT). Faust hands them to every
    aiokafka client it creates: producer, consumers and the admin client of its topics."""
    import faust  # noqa: PLC0415 - only preprocess uses faust; the other services never load it

    if settings.kafka_uses_sasl:
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=_password(settings),
            ssl_context=ssl_context(settings) if settings.kafka_uses_tls else None,
            mechanism=settings.kafka_sasl_mechanism,
        )
    if settings.kafka_uses_tls:
        return faust.SSLCredentials(ssl_context(settings))
    return None


def describe(settings: StreamSettings) -> str:
    """The connection in words for logs: servers, protocol, mechanism and user, never the
    password or key material."""
    parts = [settings.kafka_bootstrap_servers, settings.kafka_security_protocol]
    if settings.kafka_uses_sasl:
        parts.append(f"{settings.kafka_sasl_mechanism} as {settings.kafka_sasl_username}")
    if settings.kafka_uses_tls:
        parts.append(f"CA {settings.kafka_ssl_cafile or 'system'}")
        if settings.kafka_ssl_certfile:
            parts.append(f"client certificate {settings.kafka_ssl_certfile}")
    return ", ".join(parts)
