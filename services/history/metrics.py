"""Prometheus metrics of the history service (no per-device labels: fleets are large)."""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Outcomes of a prediction: those of :class:`services.history.segments.Outcome`, and
#: ``dead_letter`` for a record that is not a usable prediction.
OUTCOMES = ("accepted", "duplicate", "stale", "dead_letter")


class HistoryMetrics(NamedTuple):
    #: Predictions read, by outcome (accepted, duplicate, stale, dead_letter).
    predictions: Counter
    #: Segment rows written (a segment is written again each time it grows).
    segments_stored: Counter
    #: Segments deleted by the retention task.
    segments_deleted: Counter
    #: Duration of one checkpoint's store transaction.
    checkpoint_seconds: Histogram
    #: Devices this worker keeps a builder state for.
    devices_tracked: Gauge
    #: Partitions of the predictions topic this worker owns.
    partitions_assigned: Gauge


def create(registry: CollectorRegistry) -> HistoryMetrics:
    predictions = Counter(
        "harstream_history_predictions_total",
        "Predictions read by the history service, by outcome.",
        ["outcome"],
        registry=registry,
    )
    for outcome in OUTCOMES:  # every series present from the start (rates need a zero)
        predictions.labels(outcome)
    return HistoryMetrics(
        predictions=predictions,
        segments_stored=Counter(
            "harstream_history_segments_stored_total",
            "Segment rows written (upserts: a growing segment is written again).",
            registry=registry,
        ),
        segments_deleted=Counter(
            "harstream_history_segments_deleted_total",
            "Segments deleted by retention.",
            registry=registry,
        ),
        checkpoint_seconds=Histogram(
            "harstream_history_checkpoint_seconds",
            "Duration of one checkpoint's store transaction.",
            # A SQLite commit takes milliseconds, a PostgreSQL one over a network tens;
            # seconds mean the store is struggling.
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        ),
        devices_tracked=Gauge(
            "harstream_history_devices_tracked",
            "Devices whose segments this worker builds.",
            registry=registry,
        ),
        partitions_assigned=Gauge(
            "harstream_history_partitions_assigned",
            "Partitions of the predictions topic this worker owns.",
            registry=registry,
        ),
    )
