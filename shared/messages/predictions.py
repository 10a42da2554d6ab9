"""Activity predictions as the inference worker writes them to the predictions topic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.activities import ACTIVITIES
from shared.errors import SchemaError
from shared.features import MotionFeatures
from shared.messages.codec import decode_json, encode_json, field, finite, number

SCHEMA = "harstream.prediction"
VERSION = 1


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one window, with what alerting and dashboards need beside it."""

    window_id: str
    device_id: str
    start_index: int
    start_time: float
    end_time: float
    #: One of :data:`shared.activities.ACTIVITIES`.
    label: str
    #: Class probabilities in :data:`shared.activities.ACTIVITIES` order.
    probabilities: tuple[float, ...]
    model_name: str
    model_version: int
    features: MotionFeatures
    #: Wall-clock times (Unix seconds): packet accepted by ingest, window emitted by
    #: preprocess, and the moment inference handed the prediction to its Kafka producer (set
    #: just before serialisation; set again if the send is retried).
    ingested_at: float
    window_emitted_at: float
    produced_at: float
    #: Seconds the window waited in the inference worker's batch, and the Predict call took.
    queue_wait_s: float
    inference_s: float
    #: The TF Serving version label the model was addressed by ("stable", "canary"; "" when
    #: it was asked for by number or as the newest). Added later than the other fields:
    #: absent in older records, which decode as "". On the shadow topic it names the
    #: candidate; on the predictions topic "canary" marks a device of the canary share.
    model_label: str = ""

    @property
    def confidence(self) -> float:
        return max(self.probabilities)

    @property
    def end_to_end_s(self) -> float:
        """Ingest acceptance of the window's last packet → prediction handed to the producer
        (seconds). Excludes the produce acknowledgement; the inference worker's
        ``harstream_end_to_end_latency_seconds`` measures up to the ack."""
        return self.produced_at - self.ingested_at

    def to_bytes(self) -> bytes:
        body: dict[str, Any] = {
            "window_id": self.window_id,
            "device_id": self.device_id,
            "start_index": self.start_index,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "label": self.label,
            "probabilities": [round(p, 6) for p in self.probabilities],
            "model_name": self.model_name,
            "model_version": self.model_version,
            "features": self.features.to_dict(),
            "ingested_at": self.ingested_at,
            "window_emitted_at": self.window_emitted_at,
            "produced_at": self.produced_at,
            "queue_wait_s": self.queue_wait_s,
            "inference_s": self.inference_s,
            "model_label": self.model_label,
        }
        return encode_json(SCHEMA, VERSION, body)

    @classmethod
    def from_bytes(cls, data: bytes) -> Prediction:
        body = decode_json(data, SCHEMA, (VERSION,))
        raw_probabilities = field(body, "probabilities", list)
        if len(raw_probabilities) != len(ACTIVITIES):
            raise SchemaError(
                f"{len(raw_probabilities)} probabilities for {len(ACTIVITIES)} classes"
            )
        probabilities = tuple(
            finite(p, f"probabilities[{i}]") for i, p in enumerate(raw_probabilities)
        )
        label = field(body, "label", str)
        if label not in ACTIVITIES:
            raise SchemaError(f"unknown activity {label!r}")
        return cls(
            window_id=field(body, "window_id", str),
            device_id=field(body, "device_id", str),
            start_index=field(body, "start_index", int),
            start_time=number(body, "start_time"),
            end_time=number(body, "end_time"),
            label=label,
            probabilities=probabilities,
            model_name=field(body, "model_name", str),
            model_version=field(body, "model_version", int),
            features=MotionFeatures.from_dict(body.get("features")),
            ingested_at=number(body, "ingested_at"),
            window_emitted_at=number(body, "window_emitted_at"),
            produced_at=number(body, "produced_at"),
            queue_wait_s=number(body, "queue_wait_s"),
            inference_s=number(body, "inference_s"),
            # Additive field: records written before it existed decode as unlabelled; older
            # readers ignore it (from_bytes reads only the fields it knows).
            model_label=field(body, "model_label", str) if "model_label" in body else "",
        )
