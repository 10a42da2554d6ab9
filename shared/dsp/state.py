"""Per-device filter and windowing state, small enough to live in a faust table.

Everything needed to continue a device's signal exactly where it stopped: the last raw
samples (median filter), both Butterworth filters' delay lines, and the processed samples
of the window still being filled. It serialises to a fixed little-endian layout and
restores bit for bit.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shared.dsp.config import NUM_CHANNELS, NUM_INPUT_CHANNELS, PreprocessingConfig
from shared.errors import StateDecodeError

_MAGIC = b"HSDS"
_LAYOUT_VERSION = 1
# magic, layout version, fingerprint (8 bytes), initialised flag, samples seen,
# next window start, tail length
_HEADER = struct.Struct("<4sH8s?qqH")


@dataclass(frozen=True, eq=False)
class DeviceState:
    """Where one device's stream stands. Immutable: processing returns a new state.

    Attributes:
        initialised: False until the first sample arrives (filters start in the steady
            state of that sample, so there is no start-up transient from zero).
        samples_seen: samples processed since the stream (re)started.
        next_window_start: sample index of the next window to emit.
        median_history: (median_kernel - 1, 6) last raw samples.
        noise_zi: (sections, 2, 6) delay line of the noise low-pass.
        gravity_zi: (sections, 2, 3) delay line of the gravity low-pass.
        tail: (samples_seen - next_window_start, 9) float32 processed samples not yet in a
            window.
    """

    initialised: bool
    samples_seen: int
    next_window_start: int
    median_history: npt.NDArray[np.float64]
    noise_zi: npt.NDArray[np.float64]
    gravity_zi: npt.NDArray[np.float64]
    tail: npt.NDArray[np.float32]

    @classmethod
    def fresh(cls, config: PreprocessingConfig) -> DeviceState:
        """The state of a device that has sent nothing yet (or whose stream was reset)."""
        return cls(
            initialised=False,
            samples_seen=0,
            next_window_start=0,
            median_history=np.zeros((config.median_kernel - 1, NUM_INPUT_CHANNELS)),
            noise_zi=np.zeros((config.noise_sos.shape[0], 2, NUM_INPUT_CHANNELS)),
            gravity_zi=np.zeros((config.gravity_sos.shape[0], 2, 3)),
            tail=np.zeros((0, NUM_CHANNELS), dtype=np.float32),
        )

    def to_bytes(self, config: PreprocessingConfig) -> bytes:
        header = _HEADER.pack(
            _MAGIC,
            _LAYOUT_VERSION,
            bytes.fromhex(config.fingerprint),
            self.initialised,
            self.samples_seen,
            self.next_window_start,
            self.tail.shape[0],
        )
        return b"".join(
            (
                header,
                np.ascontiguousarray(self.median_history, dtype="<f8").tobytes(),
                np.ascontiguousarray(self.noise_zi, dtype="<f8").tobytes(),
                np.ascontiguousarray(self.gravity_zi, dtype="<f8").tobytes(),
                np.ascontiguousarray(self.tail, dtype="<f4").tobytes(),
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes, config: PreprocessingConfig) -> DeviceState:
        """Restore a state written by :meth:`to_bytes` under the same configuration."""
        if len(data) < _HEADER.size:
            raise StateDecodeError(f"device state truncated: {len(data)} bytes")
        magic, version, fingerprint, initialised, seen, next_start, tail_len = _HEADER.unpack_from(
            data
        )
        if magic != _MAGIC or version != _LAYOUT_VERSION:
            raise StateDecodeError(f"not a device state of layout {_LAYOUT_VERSION}")
        if fingerprint.hex() != config.fingerprint:
            raise StateDecodeError(
                f"device state was written with preprocessing {fingerprint.hex()}, "
                f"this worker runs {config.fingerprint}"
            )
        fresh = cls.fresh(config)
        shapes = [
            (fresh.median_history.shape, "<f8"),
            (fresh.noise_zi.shape, "<f8"),
            (fresh.gravity_zi.shape, "<f8"),
            ((tail_len, NUM_CHANNELS), "<f4"),
        ]
        arrays = []
        offset = _HEADER.size
        for shape, dtype in shapes:
            count = int(np.prod(shape))
            size = count * np.dtype(dtype).itemsize
            if offset + size > len(data):
                raise StateDecodeError("device state truncated")
            arrays.append(
                np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape).copy()
            )
            offset += size
        if offset != len(data):
            raise StateDecodeError(f"device state has {len(data) - offset} trailing bytes")
        if not 0 <= next_start <= seen or seen - next_start != tail_len:
            raise StateDecodeError("device state counters are inconsistent")
        return cls(
            initialised=bool(initialised),
            samples_seen=int(seen),
            next_window_start=int(next_start),
            median_history=arrays[0],
            noise_zi=arrays[1],
            gravity_zi=arrays[2],
            tail=arrays[3].astype(np.float32, copy=False),
        )

    def equals(self, other: DeviceState) -> bool:
        """Exact equality of every field (arrays bit for bit)."""
        return (
            self.initialised == other.initialised
            and self.samples_seen == other.samples_seen
            and self.next_window_start == other.next_window_start
            and all(
                np.array_equal(a, b)
                for a, b in (
                    (self.median_history, other.median_history),
                    (self.noise_zi, other.noise_zi),
                    (self.gravity_zi, other.gravity_zi),
                    (self.tail, other.tail),
                )
            )
        )
