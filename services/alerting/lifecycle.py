"""Alert lifecycle: open → acknowledged → resolved, as pure functions on :class:`Alert`.

Only three events exist: ``opened``, ``acknowledged``, ``resolved``. An acknowledged alert
can still resolve; a resolved alert never changes again. Acknowledging twice is a no-op
(two nurses tapping the same notification), resolving twice is an error.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from enum import StrEnum
from typing import Any, NamedTuple

from shared.errors import HarstreamError
from shared.messages import Alert, AlertState, AlertType, Severity

SEVERITY: dict[AlertType, Severity] = {
    AlertType.FALL_SUSPECTED: Severity.CRITICAL,
    AlertType.PROLONGED_LYING: Severity.WARNING,
    AlertType.INACTIVITY: Severity.WARNING,
    AlertType.DEVICE_OFFLINE: Severity.WARNING,
    AlertType.SENSOR_FAULT: Severity.WARNING,
    # While predictions stall no fall can be detected for anyone: page the on-call engineer.
    AlertType.PIPELINE_STALLED: Severity.CRITICAL,
}

#: Alert types whose conditions are judged on device-clock (event) time; the rest on wall time.
EVENT_TIME_TYPES = frozenset(
    {
        AlertType.FALL_SUSPECTED,
        AlertType.PROLONGED_LYING,
        AlertType.INACTIVITY,
        AlertType.SENSOR_FAULT,
    }
)


class AlertEvent(StrEnum):
    OPENED = "opened"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class InvalidTransitionError(HarstreamError):
    """The requested lifecycle step is not allowed from the alert's current state."""


class AlertTransition(NamedTuple):
    """One lifecycle step of one alert."""

    #: The alert after the step (what is stored, published and sent to webhooks).
    alert: Alert
    event: AlertEvent
    #: The authenticated operator who asked for the step (the audit trail); None for steps
    #: the rules take themselves (opening, auto-resolution).
    operator: str | None = None
    #: The operator's note, if any.
    note: str | None = None

    @property
    def idempotency_key(self) -> str:
        """``<alert_id>:<event>``: the same on every webhook retry of this step."""
        return f"{self.alert.alert_id}:{self.event.value}"


def new_alert_id() -> str:
    return uuid.uuid4().hex


def open_alert(
    device_id: str,
    kind: AlertType,
    reason: str,
    now: float,
    details: dict[str, Any],
    id_factory: Callable[[], str] = new_alert_id,
) -> AlertTransition:
    alert = Alert(
        alert_id=id_factory(),
        device_id=device_id,
        type=kind,
        state=AlertState.OPEN,
        severity=SEVERITY[kind],
        reason=reason,
        opened_at=now,
        updated_at=now,
        details=dict(details),
    )
    return AlertTransition(alert, AlertEvent.OPENED)


def acknowledge(alert: Alert, by: str, now: float) -> AlertTransition | None:
    """The acknowledged step, or None if it already was acknowledged (idempotent)."""
    if alert.state is AlertState.RESOLVED:
        raise InvalidTransitionError(f"alert {alert.alert_id} is already resolved")
    if alert.state is AlertState.ACKNOWLEDGED:
        return None
    return AlertTransition(
        replace(
            alert,
            state=AlertState.ACKNOWLEDGED,
            acknowledged_by=by,
            updated_at=now,
            details={**alert.details, "acknowledged_at": now},
        ),
        AlertEvent.ACKNOWLEDGED,
    )


def resolve(alert: Alert, by: str, now: float, resolution: str) -> AlertTransition:
    """The resolved step; ``by`` is a person or ``"auto"``, ``resolution`` says why."""
    if alert.state is AlertState.RESOLVED:
        raise InvalidTransitionError(f"alert {alert.alert_id} is already resolved")
    return AlertTransition(
        replace(
            alert,
            state=AlertState.RESOLVED,
            updated_at=now,
            details={
                **alert.details,
                "resolved_by": by,
                "resolved_at": now,
                "resolution": resolution,
            },
        ),
        AlertEvent.RESOLVED,
    )


class AlertNotFoundError(HarstreamError):
    """No alert has this id."""
