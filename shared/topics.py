"""Kafka topic names, versioned, in one place.

Every message is keyed by device id so one device's data stays in one partition, in order.
A ``prefix`` lets tests and side-by-side deployments use their own topics on one broker.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Bump a topic's version when its message schema changes incompatibly; old and new
#: topics can then run side by side during a migration.
RAW_VERSION = 1
WINDOWS_VERSION = 1
PREDICTIONS_VERSION = 1
SHADOW_PREDICTIONS_VERSION = 1
ALERTS_VERSION = 1
DLQ_VERSION = 1
HEARTBEATS_VERSION = 1


@dataclass(frozen=True)
class Topics:
    """The topic names of one harstream deployment."""

    prefix: str = "harstream"

    @property
    def raw(self) -> str:
        """Sensor packets accepted by ingest (key: device id)."""
        return f"{self.prefix}.raw.v{RAW_VERSION}"

    @property
    def windows(self) -> str:
        """2.56 s preprocessed windows with motion features (key: device id)."""
        return f"{self.prefix}.windows.v{WINDOWS_VERSION}"

    @property
    def predictions(self) -> str:
        """One activity prediction per window (key: device id)."""
        return f"{self.prefix}.predictions.v{PREDICTIONS_VERSION}"

    @property
    def shadow_predictions(self) -> str:
        """The candidate model's predictions in shadow mode, same schema as predictions (key:
        device id). Read by evaluation (the demo's per-version accuracy), never by alerting:
        a shadow model must not raise or clear alerts."""
        return f"{self.prefix}.shadow-predictions.v{SHADOW_PREDICTIONS_VERSION}"

    @property
    def alerts(self) -> str:
        """Alert lifecycle events: opened, acknowledged, resolved (key: device id)."""
        return f"{self.prefix}.alerts.v{ALERTS_VERSION}"

    @property
    def dlq(self) -> str:
        """Messages no worker could decode or process, with the reason and their origin."""
        return f"{self.prefix}.dlq.v{DLQ_VERSION}"

    @property
    def heartbeats(self) -> str:
        """Ingest's proof that it can write: one record per partition per second (no key;
        partition *p* stands for raw partition *p*). Alerting counts a device's silence only
        while they flow, so a broker or ingest outage never looks like devices going offline."""
        return f"{self.prefix}.heartbeats.v{HEARTBEATS_VERSION}"

    def all(self) -> tuple[str, ...]:
        return (
            self.raw,
            self.windows,
            self.predictions,
            self.shadow_predictions,
            self.alerts,
            self.dlq,
            self.heartbeats,
        )
