"""Versioned message schemas, defined once. Windows and raw packets are compact binary frames;
predictions, alerts and dead letters are small JSON documents with a schema tag."""

from shared.features import MotionFeatures
from shared.messages.alerts import Alert, AlertState, AlertType, Severity
from shared.messages.dead_letter import DeadLetter
from shared.messages.predictions import Prediction
from shared.messages.raw import RawPacket
from shared.messages.windows import WindowMessage, window_id

__all__ = [
    "Alert",
    "AlertState",
    "AlertType",
    "DeadLetter",
    "MotionFeatures",
    "Prediction",
    "RawPacket",
    "Severity",
    "WindowMessage",
    "window_id",
]
