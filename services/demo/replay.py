"""Replaying HAPT recordings as live wearables: device naming and packetisation (pure).

A real wearable buffers samples and posts them in packets; ``packets_of`` cuts a recording
the same way, with a per-device sequence number and the device-clock time of each packet's
first sample, so ingest sees exactly what a device would send.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.data.recording import Recording


@dataclass(frozen=True)
class SimulatedDevice:
    """One replayed device: what it sends (samples) and the truth to score it against."""

    device_id: str
    #: ``(n, 6)`` float64, acc xyz in g, gyro xyz in rad/s, at ``sample_rate_hz``.
    samples: npt.NDArray[np.float64]
    #: Per-sample HAPT labels (-1 unlabelled), used only to score the stream.
    labels: npt.NDArray[np.int16]
    sample_rate_hz: float = 50.0
    #: A device that stops sending after this many samples (to show DEVICE_OFFLINE).
    stop_after_samples: int | None = None

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate_hz


def device_id_for(recording: Recording) -> str:
    return f"hapt-s{recording.subject:02d}-e{recording.experiment:02d}"


def device_of(recording: Recording) -> SimulatedDevice:
    return SimulatedDevice(device_id_for(recording), recording.samples, recording.labels)


@dataclass(frozen=True)
class Packet:
    seq: int
    #: Index of the first sample in the device's samples.
    first_index: int
    #: Device-clock time of the first sample (Unix seconds).
    first_sample_time: float
    body: dict[str, Any]

    @property
    def num_samples(self) -> int:
        return len(self.body["samples"])


def packets_of(
    device: SimulatedDevice, packet_size: int, start_time: float, first_seq: int = 0
) -> Iterator[Packet]:
    """The packets a device sends, ``packet_size`` samples each (the last may be shorter)."""
    if packet_size < 1:
        raise ValueError("packet_size must be positive")
    end = len(device.samples)
    if device.stop_after_samples is not None:
        end = min(end, device.stop_after_samples)
    for seq, first in enumerate(range(0, end, packet_size), start=first_seq):
        chunk = device.samples[first : min(first + packet_size, end)]
        t0 = start_time + first / device.sample_rate_hz
        yield Packet(
            seq=seq,
            first_index=first,
            first_sample_time=t0,
            body={
                "device_id": device.device_id,
                "seq": seq,
                "first_sample_time": t0,
                "sample_rate_hz": device.sample_rate_hz,
                "samples": chunk.tolist(),
            },
        )
