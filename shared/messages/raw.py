"""Sensor packets as ingest writes them to the raw topic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from shared.errors import SchemaError
from shared.messages.codec import decode_frame, encode_frame, field, number

MAGIC = b"HR"
VERSION = 1
#: Acc xyz (g), gyro xyz (rad/s), as in :data:`shared.dsp.config.INPUT_CHANNELS`.
SAMPLE_WIDTH = 6


class RawHeader(NamedTuple):
    """Who sent a raw packet and when ingest accepted it, without its samples."""

    device_id: str
    seq: int
    #: Ingest wall-clock time when the packet was accepted (Unix seconds).
    received_at: float


@dataclass(frozen=True, eq=False)
class RawPacket:
    """A batch of consecutive IMU samples from one device.

    Samples stay float64 end to end so the stream sees exactly the values the device sent.
    """

    #: Registered device id; also the Kafka key.
    device_id: str
    #: Per-device packet sequence number, increasing by 1 per packet.
    seq: int
    #: Device-clock time of the first sample (Unix seconds).
    first_sample_time: float
    #: Sampling rate of this packet (Hz).
    sample_rate_hz: float
    #: ``(n, 6)`` float64: acc xyz in g, gyro xyz in rad/s.
    samples: npt.NDArray[np.float64]
    #: Ingest wall-clock time when the packet was accepted (Unix seconds).
    received_at: float

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sample_rate_hz

    def to_bytes(self) -> bytes:
        samples = np.ascontiguousarray(self.samples, dtype="<f8")
        header = {
            "device_id": self.device_id,
            "seq": self.seq,
            "first_sample_time": self.first_sample_time,
            "sample_rate_hz": self.sample_rate_hz,
            "n": int(samples.shape[0]),
            "received_at": self.received_at,
        }
        return encode_frame(MAGIC, VERSION, header, samples.tobytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> RawPacket:
        _, header, payload = decode_frame(data, MAGIC, (VERSION,))
        n = field(header, "n", int)
        if n < 0 or len(payload) != n * SAMPLE_WIDTH * 8:
            raise SchemaError(
                f"payload of {len(payload)} bytes does not hold {n} samples of 6 float64"
            )
        samples = np.frombuffer(payload, dtype="<f8").reshape(n, SAMPLE_WIDTH).astype(np.float64)
        return cls(
            device_id=field(header, "device_id", str),
            seq=field(header, "seq", int),
            first_sample_time=number(header, "first_sample_time"),
            sample_rate_hz=number(header, "sample_rate_hz"),
            samples=samples,
            received_at=number(header, "received_at"),
        )

    @staticmethod
    def peek(data: bytes) -> RawHeader:
        """The header fields of a raw frame without decoding its samples (device liveness
        needs only who and when); :class:`SchemaError` as :meth:`from_bytes` would for them."""
        _, header, _ = decode_frame(data, MAGIC, (VERSION,))
        return RawHeader(
            device_id=field(header, "device_id", str),
            seq=field(header, "seq", int),
            received_at=number(header, "received_at"),
        )

    def equals(self, other: RawPacket) -> bool:
        return (
            self.device_id == other.device_id
            and self.seq == other.seq
            and self.first_sample_time == other.first_sample_time
            and self.sample_rate_hz == other.sample_rate_hz
            and self.received_at == other.received_at
            and np.array_equal(self.samples, other.samples)
        )
