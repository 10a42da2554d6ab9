"""Heartbeats: ingest tells the partitions of the heartbeats topic that it can write.

A heartbeat on partition *p* of ``<prefix>.heartbeats.v1`` says: at ``sent_at`` (ingest's wall
clock, Unix seconds), the writer could produce to Kafka, so a device of raw partition *p*
that sent nothing around then was really silent. Alerting turns them into each partition's
*active time* (:mod:`services.alerting.liveness`).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.messages.codec import decode_json, encode_json, field, number

SCHEMA = "harstream.heartbeat"
VERSION = 1


@dataclass(frozen=True)
class Heartbeat:
    #: Who wrote it (``ingest@<host>:<pid>``): several ingest replicas write their own.
    source: str
    #: The writer's wall clock when it sent the heartbeat (Unix seconds).
    sent_at: float

    def to_bytes(self) -> bytes:
        return encode_json(SCHEMA, VERSION, {"source": self.source, "sent_at": self.sent_at})

    @classmethod
    def from_bytes(cls, data: bytes) -> Heartbeat:
        body = decode_json(data, SCHEMA, (VERSION,))
        return cls(source=field(body, "source", str), sent_at=number(body, "sent_at"))
