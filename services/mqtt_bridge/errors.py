"""Errors of the MQTT bridge."""

from __future__ import annotations

from services.ingest.validation import Reason
from shared.errors import HarstreamError


class MqttBridgeError(HarstreamError):
    """Base of the MQTT bridge's errors."""


class PacketRefused(MqttBridgeError):
    """A message is not a packet ingest accepts; it goes to the dead-letter topic."""

    def __init__(self, reason: Reason, detail: str) -> None:
        # The dead letter's reason is str(error): the reason label, then ingest's words.
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class KafkaNotAcknowledged(MqttBridgeError):
    """Kafka did not acknowledge a batch in time: its messages stay unacknowledged at the
    MQTT broker, which delivers them again after the bridge reconnects."""

    retriable = True
