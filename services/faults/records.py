"""What a fault-injection run observed, as plain values (pure): the decoded topic records,
the webhook receiver's log, the replay's journal and the fault log. The I/O shell
(:mod:`services.faults.collect`, :mod:`services.faults.runner`) fills these in; counting
(:mod:`services.faults.counting`) needs nothing else."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import NamedTuple

from services.faults.devices import Role
from services.faults.schedule import Fault
from shared.errors import SchemaError
from shared.messages import Prediction, WindowMessage
from shared.messages.alerts import SCHEMA as ALERT_SCHEMA
from shared.messages.alerts import VERSION as ALERT_VERSION
from shared.messages.codec import decode_json, field, number
from shared.messages.raw import raw_packets


class RawRecord(NamedTuple):
    device_id: str
    seq: int
    #: When ingest accepted it (Unix seconds).
    received_at: float


class WindowRecord(NamedTuple):
    window_id: str
    device_id: str
    #: A digest of the window's samples: two records with one id must carry the same data.
    digest: str


class PredictionRecord(NamedTuple):
    window_id: str
    device_id: str
    #: When ingest accepted the window's last packet, and when the prediction was produced.
    ingested_at: float
    produced_at: float


class AlertRecord(NamedTuple):
    """One event of an alert as published on the alerts topic (types as strings, so a type
    this checkout does not know yet is still counted)."""

    alert_id: str
    device_id: str
    type: str
    #: open, acknowledged, resolved.
    state: str
    opened_at: float
    updated_at: float

    @property
    def event(self) -> str:
        """The lifecycle event this record announces (the webhook's ``event``)."""
        return "opened" if self.state == "open" else self.state


class DeliveryRecord(NamedTuple):
    """One POST the suite's webhook receiver answered."""

    received_at: float
    idempotency_key: str
    event: str
    alert_id: str
    device_id: str
    type: str
    opened_at: float


class DeviceOutcome(NamedTuple):
    device_id: str
    role: Role
    #: Fall: impact moment; silent: the moment it stops (s after the replay started).
    at_s: float | None
    #: Last time the device tried to send (Unix seconds; None: it never did).
    last_attempt_at: float | None


@dataclass
class FaultRecord:
    """When a fault really began and ended (Unix seconds), and how the service came back."""

    fault: Fault
    started_at: float
    #: When the fault was lifted (process restarted or resumed, worker started or stopped,
    #: receiver listening again).
    ended_at: float
    #: Measured by the controller when recovery is not visible on the topics (alerting
    #: consuming again, the webhook receiving again); None: not measured there.
    recovered_at: float | None = None
    #: What the report should say about it ("alerting-2 exited with 0").
    note: str = ""
    #: What went wrong while injecting it or waiting for the service to come back.
    error: str = ""


@dataclass
class Observations:
    """Everything one scenario run saw."""

    scenario: str
    seed: int
    #: Wall clock of the replay's start (the schedule's time 0) and of the end of counting.
    started_at: float
    ended_at: float
    devices: list[DeviceOutcome]
    #: ``(device_id, seq)`` -> when ingest answered 202.
    accepted: dict[tuple[str, int], float]
    raw: list[RawRecord]
    windows: list[WindowRecord]
    predictions: list[PredictionRecord]
    alerts: list[AlertRecord]
    deliveries: list[DeliveryRecord]
    dead_letters: int
    faults: list[FaultRecord]
    #: Window ids a faultless pipeline makes from the accepted (or raw-topic) packets.
    expected_windows: set[str]
    #: DEVICE_OFFLINE threshold the alerting service ran with (seconds).
    offline_after_s: float
    #: PIPELINE_STALLED threshold, when this alerting version has the rule.
    pipeline_stall_s: float | None = None
    #: Lines worth showing in the report (exit codes, errors while injecting).
    notes: list[str] = dc_field(default_factory=list)


# -- decoding (bytes off the topics and the webhook -> records) ------------------------------


def raw_records(data: bytes) -> list[RawRecord]:
    """The packets of one raw-topic record (one, or a bundle's)."""
    return [RawRecord(p.device_id, p.seq, p.received_at) for p in raw_packets(data)]


def window_record(data: bytes) -> WindowRecord:
    window = WindowMessage.from_bytes(data)
    digest = hashlib.blake2b(window.data.tobytes(), digest_size=16).hexdigest()
    return WindowRecord(window.window_id, window.device_id, digest)


def prediction_record(data: bytes) -> PredictionRecord:
    p = Prediction.from_bytes(data)
    return PredictionRecord(p.window_id, p.device_id, p.ingested_at, p.produced_at)


def alert_record(data: bytes) -> AlertRecord:
    """An alert event, without checking its type against this checkout's enum (a newer
    alerting may publish types this one does not know)."""
    body = decode_json(data, ALERT_SCHEMA, (ALERT_VERSION,))
    return AlertRecord(
        alert_id=field(body, "alert_id", str),
        device_id=field(body, "device_id", str),
        type=field(body, "type", str),
        state=field(body, "state", str),
        opened_at=number(body, "opened_at"),
        updated_at=number(body, "updated_at"),
    )


def delivery_record(received_at: float, idempotency_key: str, body: bytes) -> DeliveryRecord:
    """A webhook POST: ``{"event": ..., "alert": {...}}``; :class:`SchemaError` if not."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise SchemaError(f"webhook body is not JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("alert"), dict):
        raise SchemaError("webhook body has no alert object")
    alert = document["alert"]
    return DeliveryRecord(
        received_at=received_at,
        idempotency_key=idempotency_key,
        event=field(document, "event", str),
        alert_id=field(alert, "alert_id", str),
        device_id=field(alert, "device_id", str),
        type=field(alert, "type", str),
        opened_at=number(alert, "opened_at"),
    )
