"""Preprocessing parameters, as UCI HAR made its windows, and their fingerprint.

The fingerprint travels with every window and sits in the model card, so the stream worker
and the model server can refuse to pair windows with a model trained on other preprocessing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt
from scipy import signal

#: Bump when the algorithm changes in a way the parameters below do not capture.
PREPROCESSING_SCHEME = "harstream.preprocess/1"

#: Output channel order of every window (units: g for acceleration, rad/s for the gyroscope).
CHANNELS: tuple[str, ...] = (
    "body_acc_x", "body_acc_y", "body_acc_z",      # g, gravity removed
    "body_gyro_x", "body_gyro_y", "body_gyro_z",   # rad/s
    "total_acc_x", "total_acc_y", "total_acc_z",   # g, gravity included (orientation)
)  # fmt: skip
NUM_CHANNELS = len(CHANNELS)
#: Input channel order of raw samples.
INPUT_CHANNELS: tuple[str, ...] = ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")
NUM_INPUT_CHANNELS = len(INPUT_CHANNELS)


@dataclass(frozen=True)
class PreprocessingConfig:
    """UCI HAR's preprocessing, made causal.

    Attributes:
        sample_rate_hz: rate of the samples fed in (Hz); other rates are resampled before.
        median_kernel: length of the (causal) median filter, in samples.
        noise_cutoff_hz: corner of the Butterworth low-pass that removes noise (Hz).
        noise_order: order of that filter.
        gravity_cutoff_hz: corner of the Butterworth low-pass whose output is gravity (Hz).
        gravity_order: order of that filter.
        window_size: samples per window (128 = 2.56 s at 50 Hz).
        window_step: samples between window starts (64 = 50% overlap).
    """

    sample_rate_hz: float = 50.0
    median_kernel: int = 3
    noise_cutoff_hz: float = 20.0
    noise_order: int = 3
    gravity_cutoff_hz: float = 0.3
    gravity_order: int = 3
    window_size: int = 128
    window_step: int = 64

    def __post_init__(self) -> None:
        nyquist = self.sample_rate_hz / 2
        if not 0 < self.gravity_cutoff_hz < self.noise_cutoff_hz < nyquist:
            raise ValueError("need 0 < gravity cutoff < noise cutoff < Nyquist frequency")
        if self.median_kernel < 1 or self.median_kernel % 2 == 0:
            raise ValueError("median_kernel must be odd and positive")
        if not 0 < self.window_step <= self.window_size:
            raise ValueError("need 0 < window_step <= window_size")

    @cached_property
    def noise_sos(self) -> npt.NDArray[np.float64]:
        return _butter_lowpass(self.noise_order, self.noise_cutoff_hz, self.sample_rate_hz)

    @cached_property
    def gravity_sos(self) -> npt.NDArray[np.float64]:
        return _butter_lowpass(self.gravity_order, self.gravity_cutoff_hz, self.sample_rate_hz)

    def to_dict(self) -> dict[str, float | int | str]:
        return {"scheme": PREPROCESSING_SCHEME, **asdict(self)}

    @cached_property
    def fingerprint(self) -> str:
        """16 hex digits identifying the scheme, these parameters and the channel order."""
        canonical = json.dumps(
            {**self.to_dict(), "channels": list(CHANNELS)}, sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def window_duration_s(self) -> float:
        return self.window_size / self.sample_rate_hz


def _butter_lowpass(order: int, cutoff_hz: float, rate_hz: float) -> npt.NDArray[np.float64]:
    sos = signal.butter(order, cutoff_hz, btype="lowpass", fs=rate_hz, output="sos")
    return np.asarray(sos, dtype=np.float64)
