"""Per-window motion features for alerting: impacts, stillness and sensor faults.

Computed from a preprocessed window (channels as :data:`shared.dsp.config.CHANNELS`), so
they describe exactly the 2.56 s the model classified. Units: g for acceleration,
rad/s for angular velocity.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.dsp.config import NUM_CHANNELS
from shared.errors import SchemaError

_BODY_ACC = slice(0, 3)
_BODY_GYRO = slice(3, 6)
_TOTAL_ACC = slice(6, 9)


@dataclass(frozen=True)
class MotionFeatures:
    """What alert rules need from a window, without the window."""

    #: Largest total-acceleration magnitude in the window (g); impacts show as spikes of 2-3 g+.
    peak_acc_g: float
    #: Smallest total-acceleration magnitude (g); ~0 g means free fall.
    min_acc_g: float
    #: Mean squared body-acceleration magnitude (g²): ~0 when still, 0.01-0.1 walking.
    movement_energy: float
    #: Mean squared body angular velocity (rad²/s²).
    rotation_energy: float
    #: Largest per-axis standard deviation of total acceleration (g); real sensors never
    #: reach 0 (noise), a flat-lined or stuck sensor does.
    acc_std_g: float
    #: Largest absolute total-acceleration component (g), for saturation checks.
    max_abs_acc_g: float
    #: Largest absolute angular-velocity component (rad/s), for saturation checks.
    max_abs_gyro: float
    #: |cos| of the angle between mean total acceleration and the device x axis, which is
    #: vertical on an upright HAPT waist phone (~1 upright, ~0 lying). Tells lying from still.
    upright_cosine: float
    #: Largest per-axis standard deviation of angular velocity (rad/s): a working gyroscope
    #: always shows noise (HAPT's stillest windows have 0.002 rad/s), a silent or stuck one
    #: does not. Added after the others: ``None`` in messages written before it existed
    #: (absent, or null from another writer).
    gyro_std_rad_s: float | None = None

    def to_dict(self) -> dict[str, float]:
        values = asdict(self)
        if self.gyro_std_rad_s is None:
            del values["gyro_std_rad_s"]  # as written before the field existed
        return values

    @classmethod
    def from_dict(cls, values: Any) -> MotionFeatures:
        if not isinstance(values, dict):
            raise SchemaError("features must be a JSON object")
        return cls(
            **{name: _finite(values, name) for name in REQUIRED_FEATURES},
            gyro_std_rad_s=(
                None if values.get("gyro_std_rad_s") is None else _finite(values, "gyro_std_rad_s")
            ),
        )


#: The features every message carries (older ones lack ``gyro_std_rad_s``).
REQUIRED_FEATURES = tuple(
    name for name in MotionFeatures.__dataclass_fields__ if name != "gyro_std_rad_s"
)


def _finite(values: dict[str, Any], name: str) -> float:
    """A feature as a finite float: JSON numbers only (no strings such as "nan", no bools),
    as a non-finite feature would fail re-encoding (``allow_nan=False``) downstream."""
    if name not in values:
        raise SchemaError(f"bad motion features: missing {name!r}")
    value = values[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError(f"bad motion features: {name!r} is {type(value).__name__}")
    try:
        result = float(value)
    except OverflowError as exc:
        raise SchemaError(f"bad motion features: {name!r} is out of range") from exc
    if not math.isfinite(result):
        raise SchemaError(f"bad motion features: {name!r} is {result}")
    return result


def motion_features(window: npt.NDArray[np.floating[Any]]) -> MotionFeatures:
    """Features of one ``(window_size, 9)`` preprocessed window."""
    return motion_features_many(np.asarray(window)[np.newaxis])[0]


def motion_features_many(windows: npt.NDArray[np.floating[Any]]) -> list[MotionFeatures]:
    """:func:`motion_features` of each of ``(n, window_size, 9)`` windows (the same values
    as one window at a time: every reduction runs per window), in a fixed number of numpy
    calls: a live worker's batch holds about one window per device, and a dozen numpy calls
    per window cost ~11 % of its CPU at 1,000 live devices (py-spy)."""
    w = np.asarray(windows, dtype=np.float64)
    if w.ndim != 3 or w.shape[2] != NUM_CHANNELS:
        raise ValueError(f"expected (n, window_size, 9) windows, got shape {w.shape}")
    if not len(w):
        return []
    total = w[:, :, _TOTAL_ACC]
    total_mag = np.linalg.norm(total, axis=2)
    body_mag2 = np.sum(w[:, :, _BODY_ACC] ** 2, axis=2)
    gyro_mag2 = np.sum(w[:, :, _BODY_GYRO] ** 2, axis=2)
    mean_total = total.mean(axis=1)
    norm = np.linalg.norm(mean_total, axis=1)
    columns = zip(
        total_mag.max(axis=1).tolist(),
        total_mag.min(axis=1).tolist(),
        body_mag2.mean(axis=1).tolist(),
        gyro_mag2.mean(axis=1).tolist(),
        total.std(axis=1).max(axis=1).tolist(),
        np.abs(total).max(axis=(1, 2)).tolist(),
        np.abs(w[:, :, _BODY_GYRO]).max(axis=(1, 2)).tolist(),
        np.abs(mean_total[:, 0]).tolist(),
        norm.tolist(),
        w[:, :, _BODY_GYRO].std(axis=1).max(axis=1).tolist(),
        strict=True,
    )
    return [
        MotionFeatures(
            peak_acc_g=peak,
            min_acc_g=low,
            movement_energy=movement,
            rotation_energy=rotation,
            acc_std_g=spread,
            max_abs_acc_g=max_acc,
            max_abs_gyro=max_gyro,
            upright_cosine=vertical / length if length > 1e-9 else 0.0,
            gyro_std_rad_s=gyro_spread,
        )
        for (
            peak,
            low,
            movement,
            rotation,
            spread,
            max_acc,
            max_gyro,
            vertical,
            length,
            gyro_spread,
        ) in columns
    ]
