"""Prometheus metrics of the ingest service (registry injected; no per-device labels)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from services.common.http_server import LIMIT_REASONS, REFUSAL_REASONS
from services.ingest.validation import Reason

# HTTP request latency: a healthy request is a few ms (parse + validate + Kafka ack on a
# local broker), the produce timeout caps it at 5 s by default; buckets span 1 ms .. 10 s.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Kafka acknowledgement (acks=all): sub-ms on a local broker, tens of ms across racks,
# seconds when the cluster struggles; the same span resolves all three.
ACK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Packets per batch: a phone forwards one or a few wearables, a care-home hub tens to
# hundreds, max_batch_packets (1,000 by default) caps it.
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
#: Outcomes of a batch request: every packet accepted (202), some not (207), the whole
#: request refused.
BATCH_OUTCOMES = ("accepted", "partial", "rejected")


class IngestMetrics(NamedTuple):
    packets: Counter
    samples: Counter
    rejections: Counter
    request_seconds: Histogram
    batch_seconds: Histogram
    batch_packets: Histogram
    kafka_ack_seconds: Histogram
    devices_active: Gauge
    clock_corrections: Counter
    http_refusals: Counter
    connection_limits: Counter
    registry_refreshes: Counter


class _ReplacementsCollector(Collector):
    """The sink counts its producer replacements; read at each scrape."""

    def __init__(self, read: Callable[[], float]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "harstream_ingest_producer_replacements",
            "Kafka producers replaced because they got no acknowledgements while the broker "
            "answered (a wedged client).",
            value=self._read(),
        )


def create(
    registry: CollectorRegistry,
    active_devices: Callable[[], float],
    producer_replacements: Callable[[], float] = lambda: 0.0,
) -> IngestMetrics:
    """The ingest metrics in ``registry``; ``active_devices`` and ``producer_replacements``
    are called at each scrape."""
    registry.register(_ReplacementsCollector(producer_replacements))
    metrics = IngestMetrics(
        packets=Counter(
            "harstream_ingest_packets_total",
            "Packets accepted (acknowledged by Kafka).",
            registry=registry,
        ),
        samples=Counter(
            "harstream_ingest_samples_total",
            "IMU samples in accepted packets.",
            registry=registry,
        ),
        rejections=Counter(
            "harstream_ingest_rejections_total",
            "Requests to POST /v1/packets or POST /v1/packets:batch answered with an error, "
            "and packets of a batch refused, by reason.",
            ["reason"],
            registry=registry,
        ),
        request_seconds=Histogram(
            "harstream_ingest_request_seconds",
            "Time to answer POST /v1/packets, by outcome (accepted, rejected).",
            ["outcome"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        ),
        batch_seconds=Histogram(
            "harstream_ingest_batch_request_seconds",
            "Time to answer POST /v1/packets:batch, by outcome (accepted: every packet; "
            "partial: a 207; rejected: the whole request).",
            ["outcome"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        ),
        batch_packets=Histogram(
            "harstream_ingest_batch_packets",
            "Packets per POST /v1/packets:batch request (of batches whose shape was valid).",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        ),
        kafka_ack_seconds=Histogram(
            "harstream_ingest_kafka_ack_seconds",
            "Time from handing a record to the producer to Kafka's acknowledgement.",
            buckets=ACK_BUCKETS,
            registry=registry,
        ),
        devices_active=Gauge(
            "harstream_ingest_devices_active",
            "Devices with an accepted packet in the last 60 s.",
            registry=registry,
        ),
        clock_corrections=Counter(
            "harstream_ingest_clock_corrections_total",
            "Accepted packets whose device time starts before the device's previous packet "
            "(higher seq): a device clock set back.",
            registry=registry,
        ),
        http_refusals=Counter(
            "harstream_ingest_http_refusals_total",
            "Requests refused by the HTTP parser before any handler ran (bad request line, "
            "headers, Content-Length or chunked encoding), by reason.",
            ["reason"],
            registry=registry,
        ),
        connection_limits=Counter(
            "harstream_ingest_connection_limits_total",
            "Connections closed or refused by a listener limit: header_timeout, body_timeout, "
            "idle_timeout (keep-alive), over_capacity (max_connections).",
            ["limit"],
            registry=registry,
        ),
        registry_refreshes=Counter(
            "harstream_ingest_registry_refreshes_total",
            "Rounds re-reading the cached devices from the registry in one call per cache "
            "(every half token_cache_ttl_s), by outcome (ok, failed: the cached answers "
            "then expire and are looked up one request at a time).",
            ["outcome"],
            registry=registry,
        ),
    )
    metrics.devices_active.set_function(active_devices)
    for reason in Reason:  # every series exists from the start, so rate() sees the first one
        metrics.rejections.labels(reason=reason.value)
    for outcome in ("accepted", "rejected"):
        metrics.request_seconds.labels(outcome=outcome)
    for outcome in BATCH_OUTCOMES:
        metrics.batch_seconds.labels(outcome=outcome)
    for refusal in REFUSAL_REASONS:  # aiohttp's own parser refusals
        metrics.http_refusals.labels(reason=refusal)
    for limit in LIMIT_REASONS:
        metrics.connection_limits.labels(limit=limit)
    for outcome in ("ok", "failed"):
        metrics.registry_refreshes.labels(outcome=outcome)
    return metrics
