"""Versioned message schemas, defined once. Windows and raw packets are compact binary frames;
predictions, alerts and dead letters are small JSON documents with a schema tag."""

from shared.features import MotionFeatures
from shared.messages.alerts import PIPELINE_SCOPE, Alert, AlertState, AlertType, Severity
from shared.messages.dead_letter import DeadLetter
from shared.messages.heartbeat import Heartbeat
from shared.messages.predictions import Prediction
from shared.messages.raw import RawHeader, RawPacket
from shared.messages.windows import WindowMessage, window_id

__all__ = [
    "PIPELINE_SCOPE",
    "Alert",
    "AlertState",
    "AlertType",
    "DeadLetter",
    "Heartbeat",
    "MotionFeatures",
    "Prediction",
    "RawHeader",
    "RawPacket",
    "Severity",
    "WindowMessage",
    "window_id",
]
