"""What the console shows live: every device's state and the stream of alert changes.

Pure (no I/O; times passed in). The alerting worker feeds it from what it consumes anyway
(predictions, raw-topic liveness, its own alert transitions, devices restored on
assignment), so the fleet page needs no query and no topic of its own. Each change gets a
version number; a live connection remembers the last one it sent and asks for what changed
since (:meth:`FleetView.changed_since`), so a device's hundred predictions between two pushes
cost one row, and any number of connections share one table.

A worker knows the devices of its own partitions only: with several alerting workers, each
console shows the devices of the worker it is served by (the alert inbox, read from the
shared store, shows every alert).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from shared.messages import Alert, AlertState, AlertType, Prediction

#: Alert changes kept for live connections; one further behind is told to reload.
EVENT_BUFFER = 2000
_SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}


@dataclass
class DeviceRow:
    device_id: str
    version: int = 0
    #: Wall time of the newest packet ingest accepted (raw topic), Unix seconds.
    last_seen: float | None = None
    activity: str | None = None
    confidence: float | None = None
    #: Wall time at which the current activity started being predicted.
    activity_since: float | None = None
    model_version: int | None = None
    model_label: str = ""
    #: Open or acknowledged alerts by id.
    alerts: dict[str, Alert] = field(default_factory=dict)

    @property
    def online(self) -> bool | None:
        """False while DEVICE_OFFLINE is open; None before any traffic was seen."""
        if any(a.type is AlertType.DEVICE_OFFLINE for a in self.alerts.values()):
            return False
        return None if self.last_seen is None else True

    def to_dict(self) -> dict[str, Any]:
        alerts = sorted(self.alerts.values(), key=alert_order)
        return {
            "device_id": self.device_id,
            "online": self.online,
            "last_seen": self.last_seen,
            "activity": self.activity,
            "confidence": self.confidence,
            "activity_since": self.activity_since,
            "model_version": self.model_version,
            "model_label": self.model_label,
            "open_alerts": [
                {
                    "alert_id": a.alert_id,
                    "type": a.type.value,
                    "severity": a.severity.value,
                    "state": a.state.value,
                }
                for a in alerts
            ],
        }


def alert_order(alert: Alert) -> tuple[int, int, float]:
    """Sort key of the inbox: unresolved first, then most severe, then newest."""
    return (
        1 if alert.state is AlertState.RESOLVED else 0,
        _SEVERITY_RANK.get(alert.severity.value, 3),
        -alert.opened_at,
    )


class FleetView:
    def __init__(self, event_buffer: int = EVENT_BUFFER) -> None:
        #: Least recently changed first (so changed_since reads from the end).
        self._rows: OrderedDict[str, DeviceRow] = OrderedDict()
        self._version = 0
        self._events: deque[tuple[int, str, Alert]] = deque(maxlen=event_buffer)
        self._event_seq = 0

    @property
    def version(self) -> int:
        return self._version

    @property
    def event_seq(self) -> int:
        return self._event_seq

    def _touch(self, device_id: str) -> DeviceRow:
        row = self._rows.get(device_id)
        if row is None:
            row = self._rows[device_id] = DeviceRow(device_id)
        self._version += 1
        row.version = self._version
        self._rows.move_to_end(device_id)
        return row

    # -- fed by the worker ----------------------------------------------------------------

    def prediction(self, p: Prediction, now: float) -> None:
        row = self._touch(p.device_id)
        if p.label != row.activity:
            row.activity_since = now
        row.activity = p.label
        row.confidence = p.confidence
        row.model_version = p.model_version
        row.model_label = p.model_label

    def traffic(self, device_id: str, at: float) -> None:
        row = self._rows.get(device_id)
        if row is not None and row.last_seen is not None and at <= row.last_seen:
            return
        self._touch(device_id).last_seen = at

    def transition(self, alert: Alert, event: str) -> None:
        """An alert opened, was acknowledged or resolved (stored)."""
        self._event_seq += 1
        self._events.append((self._event_seq, event, alert))
        if alert.device_id.startswith("*"):  # the pipeline's own alerts: no device row
            return
        row = self._touch(alert.device_id)
        if alert.state is AlertState.RESOLVED:
            row.alerts.pop(alert.alert_id, None)
        else:
            row.alerts[alert.alert_id] = alert

    def restore(self, device_id: str, last_seen: float | None, alerts: Iterable[Alert]) -> None:
        """A device this worker now owns, as stored (on assignment)."""
        row = self._touch(device_id)
        if last_seen is not None and (row.last_seen is None or last_seen > row.last_seen):
            row.last_seen = last_seen
        row.alerts = {a.alert_id: a for a in alerts if a.state is not AlertState.RESOLVED}

    def forget(self, device_ids: Iterable[str]) -> None:
        for device_id in device_ids:
            self._rows.pop(device_id, None)

    # -- read by the console --------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in sorted(self._rows.values(), key=lambda r: r.device_id)]

    def row(self, device_id: str) -> dict[str, Any] | None:
        found = self._rows.get(device_id)
        return None if found is None else found.to_dict()

    def changed_since(self, version: int) -> list[dict[str, Any]]:
        out = []
        for row in reversed(self._rows.values()):
            if row.version <= version:
                break
            out.append(row.to_dict())
        return out

    def events_since(self, seq: int) -> list[dict[str, Any]] | None:
        """Alert changes after ``seq``, oldest first; None if some are no longer held."""
        if seq >= self._event_seq:
            return []
        if not self._events or self._events[0][0] > seq + 1:
            return None
        return [
            {"seq": s, "event": event, "alert": alert.to_dict()}
            for s, event, alert in self._events
            if s > seq
        ]

    def counts(self) -> dict[str, int]:
        rows = self._rows.values()
        return {
            "devices": len(self._rows),
            "online": sum(1 for r in rows if r.online is True),
            "offline": sum(1 for r in rows if r.online is False),
            "with_alerts": sum(1 for r in rows if r.alerts),
            "open_alerts": sum(len(r.alerts) for r in rows),
        }
