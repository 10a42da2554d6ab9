"""Prometheus metrics of the MQTT bridge, built on an injected registry. No per-device
labels (cardinality)."""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.ingest.validation import Reason

# Kafka acknowledges a batch in a few ms on a healthy broker; the top buckets reach the
# default kafka_ack_timeout_s (10 s), beyond which the bridge counts an outage instead.
ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Powers of two up to the default max_batch (200): whether batches fill under load.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class BridgeMetrics(NamedTuple):
    #: Messages acknowledged to the broker, by outcome: ``accepted`` (on the raw topic) or
    #: ``dead_lettered``.
    messages: Counter
    #: Dead-lettered messages by ingest's refusal reason.
    rejections: Counter
    samples: Counter
    #: Messages the broker delivered again (MQTT DUP flag): after an outage or a restart.
    redeliveries: Counter
    #: Batches Kafka did not acknowledge within kafka_ack_timeout_s (then: reconnect).
    kafka_outages: Counter
    kafka_ack_seconds: Histogram
    batch_size: Histogram
    #: 1 while connected and subscribed to the broker.
    connected: Gauge
    #: Messages received and not yet acknowledged.
    in_flight: Gauge

    def refused(self, reason: Reason) -> None:
        self.messages.labels(outcome="dead_lettered").inc()
        self.rejections.labels(reason=reason.value).inc()


def create(registry: CollectorRegistry) -> BridgeMetrics:
    return BridgeMetrics(
        messages=Counter(
            "harstream_mqtt_messages",
            "MQTT messages acknowledged after Kafka acknowledged their record or dead letter.",
            ["outcome"],
            registry=registry,
        ),
        rejections=Counter(
            "harstream_mqtt_rejections",
            "MQTT messages refused by ingest's validation (dead-lettered), by reason.",
            ["reason"],
            registry=registry,
        ),
        samples=Counter(
            "harstream_mqtt_samples", "Samples of accepted MQTT packets.", registry=registry
        ),
        redeliveries=Counter(
            "harstream_mqtt_redeliveries",
            "MQTT messages the broker delivered again (DUP flag set).",
            registry=registry,
        ),
        kafka_outages=Counter(
            "harstream_mqtt_kafka_outages",
            "Batches Kafka did not acknowledge in time: left unacknowledged, bridge reconnected.",
            registry=registry,
        ),
        kafka_ack_seconds=Histogram(
            "harstream_mqtt_kafka_ack_seconds",
            "Time for Kafka to acknowledge a batch of MQTT packets.",
            buckets=ACK_BUCKETS,
            registry=registry,
        ),
        batch_size=Histogram(
            "harstream_mqtt_batch_size",
            "MQTT messages per Kafka batch.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        ),
        connected=Gauge(
            "harstream_mqtt_connected",
            "1 while connected and subscribed to the MQTT broker.",
            registry=registry,
        ),
        in_flight=Gauge(
            "harstream_mqtt_in_flight",
            "MQTT messages received and not yet acknowledged.",
            registry=registry,
        ),
    )
