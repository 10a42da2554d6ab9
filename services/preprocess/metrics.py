"""Prometheus metrics of the preprocess worker (registry injected; no per-device labels)."""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Histogram


class PreprocessMetrics(NamedTuple):
    #: Raw packets consumed (decoded or not).
    packets: Counter
    #: Raw samples fed to the filters (at the devices' own rates).
    samples: Counter
    windows: Counter
    duplicates: Counter
    gaps: Counter
    reordered: Counter
    resampled_packets: Counter
    #: Filter resets by reason (gap, rate_change, seq_restart, bad_state).
    resets: Counter
    batch_size: Histogram
    batch_seconds: Histogram
    dead_letters: Counter
    #: Raw messages read again because the committed offset was ahead of the restored state.
    rewound: Counter
    #: Checkpoints written (device states and raw positions to the table).
    checkpoints: Counter
    #: Device states written to the table (each one changelog record).
    states_written: Counter


def create(registry: CollectorRegistry) -> PreprocessMetrics:
    return PreprocessMetrics(
        packets=Counter(
            "harstream_preprocess_packets_total", "Raw packets consumed.", registry=registry
        ),
        samples=Counter(
            "harstream_preprocess_samples_total",
            "Raw IMU samples fed to the filters.",
            registry=registry,
        ),
        windows=Counter(
            "harstream_windows_emitted_total",
            "Windows produced to the windows topic.",
            registry=registry,
        ),
        duplicates=Counter(
            "harstream_preprocess_duplicates_total",
            "Packets dropped because their seq was already processed or buffered.",
            registry=registry,
        ),
        gaps=Counter(
            "harstream_preprocess_gaps_total",
            "Gaps (missing packets given up on, time jumps) that reset a device's filters.",
            registry=registry,
        ),
        reordered=Counter(
            "harstream_preprocess_reordered_total",
            "Packets that arrived ahead of a missing one and waited in the reorder buffer.",
            registry=registry,
        ),
        resampled_packets=Counter(
            "harstream_preprocess_resampled_packets_total",
            "Packets of devices not at 50 Hz, resampled before the filters.",
            registry=registry,
        ),
        resets=Counter(
            "harstream_preprocess_resets_total",
            "Device filter resets, by reason.",
            ["reason"],
            registry=registry,
        ),
        batch_size=Histogram(
            "harstream_preprocess_batch_size",
            "Raw records per processed batch (a bundle of packets is one).",
            # Powers of ~2.5 from single packets (idle stream) to 2000 (batch_max_size
            # raised for backlogs); the default maximum, 500, is a bucket edge.
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000),
            registry=registry,
        ),
        batch_seconds=Histogram(
            "harstream_preprocess_batch_seconds",
            "Time to process one batch: decode, filters, produce windows, update state.",
            # 1 ms (a few packets) to 2.5 s (a full batch waiting on a slow broker); the
            # produce round trip dominates, ~5-50 ms on a healthy cluster.
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        ),
        dead_letters=Counter(
            "harstream_dead_letters_total",
            "Messages sent to the dead-letter topic, by error type.",
            ["error_type"],
            registry=registry,
        ),
        rewound=Counter(
            "harstream_preprocess_rewound_messages_total",
            "Raw messages read again after a recovery because the group's committed offset "
            "was ahead of what the restored device states cover (after a crash: up to "
            "checkpoint_interval_s of packets; else 0).",
            registry=registry,
        ),
        checkpoints=Counter(
            "harstream_preprocess_checkpoints_total",
            "Checkpoints: the changed device states and the raw positions they cover written "
            "to the state table.",
            registry=registry,
        ),
        states_written=Counter(
            "harstream_preprocess_states_written_total",
            "Device states written to the state table (one changelog record each).",
            registry=registry,
        ),
    )
