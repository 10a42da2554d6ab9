"""Prometheus metrics of the alerting service (no per-device labels: fleets are large)."""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AlertingMetrics(NamedTuple):
    #: Alert lifecycle transitions by type and new state (open/acknowledged/resolved).
    alerts: Counter
    #: Open + acknowledged alerts by type (from the store, so all devices count).
    alerts_open: Gauge
    #: Suspected falls cancelled because the person got up before confirmation.
    falls_cancelled: Counter
    #: Webhook attempts by outcome: delivered, retried, failed.
    webhook_deliveries: Counter
    #: Duration of one webhook POST attempt.
    webhook_delivery_seconds: Histogram
    #: Devices whose traffic or predictions this worker tracks.
    devices_tracked: Gauge
    #: Predictions decoded, duplicates included.
    predictions: Counter
    #: Predictions ignored as duplicates or older than the newest of their device.
    duplicates: Counter
    #: Messages sent to the dead-letter topic, by exception class.
    dead_letters: Counter
    #: Alert events published to the alerts topic.
    events_published: Counter
    #: Raw-topic records not counted as device traffic (not a raw frame, or keyed wrongly).
    raw_skipped: Counter
    #: Heartbeats-topic records that are not heartbeats.
    heartbeats_skipped: Counter
    #: How far predictions lag behind device traffic, in ingest time (worst owned partition).
    pipeline_delay: Gauge
    #: Partitions (of predictions and raw alike) this worker owns.
    partitions_assigned: Gauge


def create(registry: CollectorRegistry) -> AlertingMetrics:
    return AlertingMetrics(
        alerts=Counter(
            "harstream_alerts_total",
            "Alert lifecycle transitions.",
            ["type", "state"],
            registry=registry,
        ),
        alerts_open=Gauge(
            "harstream_alerts_open",
            "Open or acknowledged alerts.",
            ["type"],
            registry=registry,
        ),
        falls_cancelled=Counter(
            "harstream_alert_falls_cancelled_total",
            "Suspected falls cancelled because the person got up before confirmation.",
            registry=registry,
        ),
        webhook_deliveries=Counter(
            "harstream_webhook_deliveries_total",
            "Webhook delivery attempts by outcome (delivered, retried, failed).",
            ["outcome"],
            registry=registry,
        ),
        webhook_delivery_seconds=Histogram(
            "harstream_webhook_delivery_seconds",
            "Duration of one webhook POST attempt.",
            # Pager/chat webhooks answer in 50-500 ms; the top buckets show receivers nearing
            # the default 5 s timeout.
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=registry,
        ),
        devices_tracked=Gauge(
            "harstream_alerting_devices_tracked",
            "Devices whose traffic or predictions this worker tracks.",
            registry=registry,
        ),
        predictions=Counter(
            "harstream_alerting_predictions_total",
            "Predictions decoded (duplicates included; see the duplicate counter).",
            registry=registry,
        ),
        duplicates=Counter(
            "harstream_alerting_duplicate_predictions_total",
            "Predictions ignored: redelivered or older than the newest window of their device.",
            registry=registry,
        ),
        dead_letters=Counter(
            "harstream_dead_letters_total",
            "Messages sent to the dead-letter topic.",
            ["error_type"],
            registry=registry,
        ),
        events_published=Counter(
            "harstream_alert_events_published_total",
            "Alert events written to the alerts topic.",
            registry=registry,
        ),
        raw_skipped=Counter(
            "harstream_alerting_raw_records_skipped_total",
            "Raw-topic records, or packets of a bundle, not counted as device traffic (not "
            "a raw frame, keyed other than by their device id, or a bundle read from another "
            "partition than it was built for; preprocess dead-letters them).",
            registry=registry,
        ),
        heartbeats_skipped=Counter(
            "harstream_alerting_heartbeats_skipped_total",
            "Records of the heartbeats topic that are not heartbeats (ignored).",
            registry=registry,
        ),
        pipeline_delay=Gauge(
            "harstream_alerting_pipeline_delay_seconds",
            "Ingest-time lag of the newest prediction behind the newest device packet, worst "
            "owned partition (healthy: ~1.3-3 s; PIPELINE_STALLED at pipeline_stall_s).",
            registry=registry,
        ),
        partitions_assigned=Gauge(
            "harstream_alerting_partitions_assigned",
            "Partitions of the predictions and raw topics this worker owns.",
            registry=registry,
        ),
    )
