"""Kafka client options for every client library, built in one place from
:class:`~shared.settings.StreamSettings`: connection and security, and the settings that
depend on the broker (``kafka_profile``).

Every Kafka client harstream creates (kafka-python in ingest and the tools, aiokafka in
inference and alerting, faust in preprocess, the admin client) takes its bootstrap servers,
TLS and SASL options from here, so one setting turns TLS and SCRAM on everywhere, and TLS
policy (CA, client certificate, hostname check) cannot differ between services.

Profiles. ``apache`` is Apache Kafka (production, docker-compose, k8s); ``tansu`` is the
embedded development broker, whose gaps were measured in ``shared/notes/tansu.md``: a
JoinGroup answered only after half the session timeout, fetches held for the whole max wait
while any partition is empty, wrong end offsets after multi-record batches, and no aiokafka
idempotent producer. :data:`PROFILES` and the producer builders below are the only
places that know it; services take option dicts from here and never test the profile.

The SASL password is read when a client's options are built (a mounted Secret that was
rotated is used by the next client) and is only ever handed to the client library: it is
never logged, and :func:`describe` shows the connection without it.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from aiokafka.helpers import create_ssl_context  # type: ignore[import-untyped]

from shared.settings import KafkaProfile, StreamSettings

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

__all__ = [
    "PROFILES",
    "ClientProfile",
    "aiokafka_consumer_kwargs",
    "aiokafka_kwargs",
    "aiokafka_producer_kwargs",
    "describe",
    "faust_broker_urls",
    "faust_credentials",
    "faust_options",
    "kafka_python_kwargs",
    "kafka_python_producer_kwargs",
    "producer_batch_bytes",
    "producer_linger_ms",
    "profile",
    "ssl_context",
]


#: The client libraries' default batch sizes (bytes), kept unless a profile asks for more.
AIOKAFKA_BATCH_BYTES = 16384
KAFKA_PYTHON_BATCH_BYTES = 16384


class ClientProfile(NamedTuple):
    """The client settings that depend on the broker."""

    #: Consumer-group session timeout (seconds). Tansu answers a JoinGroup only after half
    #: of it, so it is short there: 6 s gives a 3 s join (faust's 60 s default: 30 s).
    group_session_timeout_s: float
    #: Consumer-group heartbeat interval (seconds), a fraction of the session timeout.
    group_heartbeat_interval_s: float
    #: faust's rebalance timeout (seconds); None keeps faust's default.
    group_rebalance_timeout_s: float | None
    #: Longest a fetch may wait for data (ms). Tansu holds a fetch for the whole max wait
    #: whenever one of its partitions has no data, even if others do (measured: 4
    #: partitions, one with data: 465 ms at 500 ms, 65 ms at 100 ms; one partition: 2 ms).
    #: Apache Kafka answers as soon as min bytes are there, so a long poll costs nothing.
    fetch_max_wait_ms: int
    #: The fetch wait faust's consumer must be patched to (faust hard-codes 1500 ms, see
    #: ``services.preprocess.faust_internals.shorten_fetch_wait``); None: leave faust's.
    faust_fetch_max_wait_ms: int | None
    #: Whether faust's high-water marks must be corrected (patched in, see
    #: ``services.preprocess.faust_internals.correct_highwaters``): Tansu's ListOffsets
    #: answers the first offset of a partition's last batch + 1, and faust's table recovery
    #: trusts it (a memory table lost updates, RocksDB crashed). Corrected, producers can
    #: batch many records on Tansu too (one record per batch was the earlier workaround).
    faust_fetched_highwaters: bool
    #: The shortest linger (ms) and the smallest batch (bytes) a producer may use; a
    #: service asking for less gets these. Tansu's memory storage keeps each produced batch
    #: as an object and, on every Fetch and ListOffsets, lists every batch object of the
    #: partition to find the offset (tansu-storage ``dynostore.rs`` ``fetch``, commit
    #: 510f3e2): its CPU per fetch grows with the batches it holds, so a steady load costs
    #: it more every second. Measured (4 consumer groups on 4 partitions, 460 records/s of
    #: 3 KB sent evenly): 0.09 → 0.37 CPU-s/s within 50 s with a 5 ms linger, 0.06 → 0.15
    #: with 25 ms. Fewer, larger batches slow that growth for ~25 ms more latency per hop.
    #: Apache Kafka finds an offset through its segment index: 0 keeps each service's own.
    min_producer_linger_ms: int
    min_producer_batch_bytes: int


PROFILES: Mapping[KafkaProfile, ClientProfile] = {
    "apache": ClientProfile(
        group_session_timeout_s=30.0,
        group_heartbeat_interval_s=3.0,
        group_rebalance_timeout_s=None,
        fetch_max_wait_ms=500,
        faust_fetch_max_wait_ms=None,
        faust_fetched_highwaters=False,
        min_producer_linger_ms=0,
        min_producer_batch_bytes=0,
    ),
    "tansu": ClientProfile(
        group_session_timeout_s=6.0,
        group_heartbeat_interval_s=1.0,
        group_rebalance_timeout_s=6.0,
        fetch_max_wait_ms=50,
        faust_fetch_max_wait_ms=50,
        faust_fetched_highwaters=True,
        min_producer_linger_ms=25,
        min_producer_batch_bytes=256 * 1024,
    ),
}


def profile(settings: StreamSettings) -> ClientProfile:
    """The broker-dependent client settings of ``settings.kafka_profile``."""
    return PROFILES[settings.kafka_profile]


def producer_linger_ms(settings: StreamSettings, wanted_ms: int) -> int:
    """The linger a producer asking for ``wanted_ms`` gets on this broker (at least the
    profile's ``min_producer_linger_ms``)."""
    return max(wanted_ms, profile(settings).min_producer_linger_ms)


def producer_batch_bytes(settings: StreamSettings, wanted_bytes: int) -> int:
    """The batch size a producer asking for ``wanted_bytes`` gets on this broker (at least
    the profile's ``min_producer_batch_bytes``)."""
    return max(wanted_bytes, profile(settings).min_producer_batch_bytes)


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


def aiokafka_consumer_kwargs(
    settings: StreamSettings, *, group_id: str | None, **options: Any
) -> dict[str, Any]:
    """Keyword arguments for aiokafka's ``AIOKafkaConsumer``: :func:`aiokafka_kwargs`, the
    profile's fetch wait and, in a consumer group (``group_id``), its session timeout and
    heartbeat. Offsets are committed by the caller (after its output was acknowledged),
    never automatically; ``options`` override any of these."""
    p = profile(settings)
    defaults: dict[str, Any] = {
        "group_id": group_id,
        "enable_auto_commit": False,
        "fetch_max_wait_ms": p.fetch_max_wait_ms,
    }
    if group_id is not None:
        defaults["session_timeout_ms"] = int(p.group_session_timeout_s * 1000)
        defaults["heartbeat_interval_ms"] = int(p.group_heartbeat_interval_s * 1000)
    return aiokafka_kwargs(settings, **{**defaults, **options})


def aiokafka_producer_kwargs(settings: StreamSettings, **options: Any) -> dict[str, Any]:
    """Keyword arguments for aiokafka's ``AIOKafkaProducer``: every record acknowledged by
    all in-sync replicas (``acks="all"``), not idempotent: aiokafka's idempotent producer
    fails on the local broker (InitProducerId answered with UnknownError), and our
    deliveries are at-least-once with ids consumers deduplicate by anyway. ``options``
    (e.g. ``linger_ms``) are added."""
    options["linger_ms"] = producer_linger_ms(settings, options.get("linger_ms", 0))
    options["max_batch_size"] = producer_batch_bytes(
        settings, options.get("max_batch_size", AIOKAFKA_BATCH_BYTES)
    )
    return aiokafka_kwargs(settings, acks="all", enable_idempotence=False, **options)


def kafka_python_producer_kwargs(
    settings: StreamSettings, *, produce_timeout_s: float, **options: Any
) -> dict[str, Any]:
    """Keyword arguments for kafka-python's ``KafkaProducer`` when a caller waits at most
    ``produce_timeout_s`` for each acknowledgement: idempotent, ``acks="all"`` (kafka-
    python's idempotent producer works on both brokers, aiokafka's not on the local one).
    ``options`` (e.g. ``client_id``, ``linger_ms``) are added."""
    timeout_ms = int(produce_timeout_s * 1000)
    options["linger_ms"] = producer_linger_ms(settings, options.get("linger_ms", 0))
    options["batch_size"] = producer_batch_bytes(
        settings, options.get("batch_size", KAFKA_PYTHON_BATCH_BYTES)
    )
    return kafka_python_kwargs(
        settings,
        acks="all",
        enable_idempotence=True,
        # send() must not block the producer's thread much longer than a caller waits when
        # metadata is missing.
        max_block_ms=timeout_ms,
        request_timeout_ms=max(timeout_ms, 10_000),
        # A record its caller gave up on may still be delivered if Kafka recovers within
        # this: the caller's retry then duplicates it, which consumers drop by seq. Bounded
        # so the buffer does not grow for minutes. (A batch that expires after it was sent
        # is also what wedges kafka-python's idempotent producer: services.ingest.health.)
        delivery_timeout_ms=max(2 * timeout_ms + 10_000, 30_000),
        bootstrap_timeout_ms=3000,
        # Topics are created by operators (or `create_topics`) with chosen partitions.
        allow_auto_create_topics=False,
        **options,
    )


def faust_options(settings: StreamSettings) -> dict[str, Any]:
    """faust ``App`` settings the broker dictates: the group timeouts. Broker URLs and
    credentials are :func:`faust_broker_urls` and :func:`faust_credentials`; faust has no
    setting for ``faust_fetch_max_wait_ms`` or ``faust_fetched_highwaters`` (patches)."""
    p = profile(settings)
    options: dict[str, Any] = {
        "broker_session_timeout": p.group_session_timeout_s,
        "broker_heartbeat_interval": p.group_heartbeat_interval_s,
    }
    if p.group_rebalance_timeout_s is not None:
        options["broker_rebalance_timeout"] = p.group_rebalance_timeout_s
    return options


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
