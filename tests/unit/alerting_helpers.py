"""Synthetic predictions for the alerting unit tests: 2.56 s windows every 1.28 s."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from shared.activities import ACTIVITIES
from shared.features import MotionFeatures
from shared.messages import Prediction

WINDOW_S = 2.56
STEP_S = 1.28
#: 2024-01-15 10:00:00 UTC: inside default day hours.
T0 = 1_705_312_800.0

WALKING = MotionFeatures(
    peak_acc_g=1.8,
    min_acc_g=0.4,
    movement_energy=0.08,
    rotation_energy=1.0,
    acc_std_g=0.2,
    max_abs_acc_g=1.7,
    max_abs_gyro=2.0,
    upright_cosine=0.95,
    gyro_std_rad_s=0.6,
)
LYING_STILL = MotionFeatures(
    peak_acc_g=1.02,
    min_acc_g=0.98,
    movement_energy=0.0001,
    rotation_energy=0.001,
    acc_std_g=0.003,
    max_abs_acc_g=1.0,
    max_abs_gyro=0.05,
    upright_cosine=0.1,
    gyro_std_rad_s=0.004,
)
STANDING_STILL = replace(LYING_STILL, upright_cosine=0.98, movement_energy=0.0002)
IMPACT = replace(WALKING, peak_acc_g=3.1, movement_energy=0.3, max_abs_acc_g=3.0)
FLAT = replace(LYING_STILL, acc_std_g=0.0, movement_energy=0.0, peak_acc_g=1.0, min_acc_g=1.0)


def probs(label: str, confidence: float = 0.9) -> tuple[float, ...]:
    rest = (1.0 - confidence) / (len(ACTIVITIES) - 1)
    return tuple(confidence if a == label else rest for a in ACTIVITIES)


def prediction(
    i: int,
    label: str,
    features: MotionFeatures,
    device: str = "dev-1",
    t0: float = T0,
    **kw: Any,
) -> Prediction:
    """The ``i``-th window of ``device``: ends at t0 + 2.56 + i * 1.28 s (device clock)."""
    end = t0 + WINDOW_S + i * STEP_S
    values: dict[str, Any] = {
        "window_id": f"{device}:{i * 64}",
        "device_id": device,
        "start_index": i * 64,
        "start_time": end - WINDOW_S,
        "end_time": end,
        "label": label,
        "probabilities": probs(label),
        "model_name": "har",
        "model_version": 1,
        "features": features,
        "ingested_at": end,
        "window_emitted_at": end,
        "produced_at": end,
        "queue_wait_s": 0.0,
        "inference_s": 0.0,
    }
    values.update(kw)
    return Prediction(**values)
