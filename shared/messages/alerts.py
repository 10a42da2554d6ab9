"""Alert lifecycle events as alerting writes them to the alerts topic."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
from enum import StrEnum
from typing import Any

from shared.errors import SchemaError
from shared.messages.codec import decode_json, encode_json, field, number

SCHEMA = "harstream.alert"
VERSION = 1


class AlertType(StrEnum):
    FALL_SUSPECTED = "FALL_SUSPECTED"
    PROLONGED_LYING = "PROLONGED_LYING"
    INACTIVITY = "INACTIVITY"
    DEVICE_OFFLINE = "DEVICE_OFFLINE"
    SENSOR_FAULT = "SENSOR_FAULT"
    #: Devices keep sending but no predictions come out: one alert for the pipeline, never
    #: one DEVICE_OFFLINE per device (its ``device_id`` is :data:`PIPELINE_SCOPE`).
    PIPELINE_STALLED = "PIPELINE_STALLED"


#: ``device_id`` of alerts about the pipeline itself. Device ids cannot contain ``*``
#: (ingest's device-id pattern), so it never names a real device.
PIPELINE_SCOPE = "*pipeline"


class AlertState(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Alert:
    """The current state of one alert; every transition is published as a new event."""

    #: Unique and stable over the alert's life: the webhook idempotency key.
    alert_id: str
    device_id: str
    type: AlertType
    state: AlertState
    severity: Severity
    #: Human-readable why, for the care team ("impact 3.1 g then lying for 45 s").
    reason: str
    #: Unix seconds: when it opened, and of this transition.
    opened_at: float
    updated_at: float
    acknowledged_by: str | None = None
    details: dict[str, Any] = dc_field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "device_id": self.device_id,
            "type": self.type.value,
            "state": self.state.value,
            "severity": self.severity.value,
            "reason": self.reason,
            "opened_at": self.opened_at,
            "updated_at": self.updated_at,
            "acknowledged_by": self.acknowledged_by,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Alert:
        try:
            kind = AlertType(field(body, "type", str))
            state = AlertState(field(body, "state", str))
            severity = Severity(field(body, "severity", str))
        except ValueError as exc:
            raise SchemaError(str(exc)) from exc
        acknowledged_by = body.get("acknowledged_by")
        if acknowledged_by is not None and not isinstance(acknowledged_by, str):
            raise SchemaError("acknowledged_by must be a string or null")
        details = body.get("details", {})
        if not isinstance(details, dict):
            raise SchemaError("details must be an object")
        return cls(
            alert_id=field(body, "alert_id", str),
            device_id=field(body, "device_id", str),
            type=kind,
            state=state,
            severity=severity,
            reason=field(body, "reason", str),
            opened_at=number(body, "opened_at"),
            updated_at=number(body, "updated_at"),
            acknowledged_by=acknowledged_by,
            details=details,
        )

    def to_bytes(self) -> bytes:
        return encode_json(SCHEMA, VERSION, self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> Alert:
        return cls.from_dict(decode_json(data, SCHEMA, (VERSION,)))
