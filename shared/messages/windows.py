"""Preprocessed windows as the preprocess worker writes them to the windows topic."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shared.dsp.config import NUM_CHANNELS
from shared.errors import SchemaError
from shared.features import MotionFeatures
from shared.messages.codec import decode_frame, encode_frame, field, number

MAGIC = b"HW"
VERSION = 1


def window_id(device_id: str, start_index: int) -> str:
    """Deterministic id: a replayed or re-emitted window gets the same id (idempotent consumers)."""
    return f"{device_id}:{start_index}"


@dataclass(frozen=True, eq=False)
class WindowMessage:
    """One 2.56 s window of one device, ready for the model."""

    device_id: str
    #: Index of the window's first sample on the device's 50 Hz stream timeline; never reused
    #: for a device, also across filter resets.
    start_index: int
    #: Device-clock time of the first sample and of the end of the last one (Unix seconds).
    start_time: float
    end_time: float
    #: :attr:`shared.dsp.config.PreprocessingConfig.fingerprint` of the producing pipeline.
    fingerprint: str
    #: Ingest wall-clock time of the packet that completed this window (Unix seconds): the
    #: start of the end-to-end latency measurement.
    ingested_at: float
    #: Wall-clock time the preprocess worker emitted the window (Unix seconds).
    emitted_at: float
    features: MotionFeatures
    #: ``(window_size, 9)`` float32, channel order :data:`shared.dsp.config.CHANNELS`.
    data: npt.NDArray[np.float32]

    @property
    def window_id(self) -> str:
        return window_id(self.device_id, self.start_index)

    def to_bytes(self) -> bytes:
        data = np.ascontiguousarray(self.data, dtype="<f4")
        header = {
            "device_id": self.device_id,
            "start_index": self.start_index,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "fingerprint": self.fingerprint,
            "ingested_at": self.ingested_at,
            "emitted_at": self.emitted_at,
            "features": self.features.to_dict(),
            "rows": int(data.shape[0]),
        }
        return encode_frame(MAGIC, VERSION, header, data.tobytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> WindowMessage:
        _, header, payload = decode_frame(data, MAGIC, (VERSION,))
        rows = field(header, "rows", int)
        if rows <= 0 or len(payload) != rows * NUM_CHANNELS * 4:
            raise SchemaError(
                f"payload of {len(payload)} bytes is not {rows}×{NUM_CHANNELS} float32"
            )
        return cls(
            device_id=field(header, "device_id", str),
            start_index=field(header, "start_index", int),
            start_time=number(header, "start_time"),
            end_time=number(header, "end_time"),
            fingerprint=field(header, "fingerprint", str),
            ingested_at=number(header, "ingested_at"),
            emitted_at=number(header, "emitted_at"),
            features=MotionFeatures.from_dict(header.get("features")),
            data=np.frombuffer(payload, dtype="<f4").reshape(rows, NUM_CHANNELS).astype(np.float32),
        )
