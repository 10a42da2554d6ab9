"""Alert rule thresholds and the per-window judgements built on them (pure: no I/O).

Defaults were checked against the HAPT test windows (``motion_features`` of each window):
median ``movement_energy`` of SITTING/STANDING/LAYING is 0.00015-0.00028 g² (95th percentile
0.002-0.005 g²); WALKING* windows have 5th percentiles of 0.06-0.07 g². Downstairs walking
reaches 2.3 g peaks (99th percentile), which is why an impact alone never raises a fall.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, time
from functools import cached_property
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.activities import ACTIVITIES, NUM_CLASSES
from shared.errors import HarstreamError
from shared.features import REQUIRED_FEATURES
from shared.messages import Prediction

#: Smoothed activities that mean the person is up (cancel a suspected fall).
UPRIGHT_ACTIVITIES = frozenset({"WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "STANDING"})
LAYING = "LAYING"


class PredictionRejectedError(HarstreamError):
    """A prediction decoded but cannot be judged (non-finite times, features, probabilities)."""


class AlertRules(BaseModel):
    """Every alert threshold, with its unit in its name. Frozen; built once from settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    smoothing_windows: int = Field(
        3,
        ge=1,
        description=(
            "Predictions averaged per device: the smoothed activity is the argmax of the mean "
            "probabilities of the last N windows, so one odd window does not flip state."
        ),
    )
    fall_impact_g: float = Field(
        2.2,
        gt=1.0,
        description=(
            "Peak total-acceleration magnitude (g, features.peak_acc_g) that counts as an impact. "
            "The 20 Hz low-pass of preprocessing attenuates short spikes, hence lower than the "
            "3 g often quoted for raw accelerometers."
        ),
    )
    fall_followup_s: float = Field(
        10.0,
        gt=0,
        description="Lying or stillness must start within this many seconds after the impact.",
    )
    fall_confirm_s: float = Field(
        30.0,
        gt=0,
        description=(
            "Seconds of continued lying/stillness before a suspected fall is raised (wearable "
            "products wait 30-60 s so people who get up do not trigger an escalation)."
        ),
    )
    fall_settle_s: float = Field(
        5.0,
        ge=0,
        description=(
            "Seconds after the impact window during which movement energy does not count as "
            "getting up: a fall turns the body, and the 0.3 Hz gravity filter needs ~3-4 s to "
            "follow, so body acceleration stays high right after any real fall."
        ),
    )
    getup_energy_g2: float = Field(
        0.01,
        gt=0,
        description=(
            "movement_energy (g²) above which the person is moving again, cancelling a pending "
            "fall (static postures stay below 0.005 g² at the 95th percentile, walking above 0.05)."
        ),
    )
    still_energy_g2: float = Field(
        0.0005,
        gt=0,
        description=(
            "movement_energy (g²) below which a window is 'still' (~0.022 g RMS of body "
            "acceleration): above the 0.00015-0.00028 g² median of sitting/standing/lying, two "
            "orders of magnitude below walking."
        ),
    )
    lying_max_s: float = Field(
        7200.0, gt=0, description="Smoothed LAYING for this long (s) in day hours is an alert."
    )
    day_start: time = Field(time(8, 0), description="Start of day hours (device local time).")
    day_end: time = Field(time(21, 0), description="End of day hours (device local time).")
    timezone: str = Field("UTC", description="IANA time zone of the devices' local time.")
    inactivity_s: float = Field(
        3600.0, gt=0, description="Continuous stillness for this long (s) is an alert."
    )
    offline_after_s: float = Field(
        300.0,
        gt=0,
        description=(
            "No device traffic (packets accepted by ingest, read from the raw topic) for this "
            "long (s, wall clock) raises DEVICE_OFFLINE. Predictions do not count: an "
            "inference outage is a pipeline stall, not a fleet of offline devices."
        ),
    )
    heartbeat_max_gap_s: float = Field(
        3.0,
        gt=0,
        description=(
            "Longest gap between two ingest heartbeats (sent every second) that counts towards "
            "a device's silence: a broker or ingest outage of any length adds at most this, so "
            "devices get their whole offline_after_s to resend once the pipeline is back."
        ),
    )
    pipeline_stall_s: float = Field(
        60.0,
        gt=0,
        description=(
            "Devices keep sending but their newest prediction covers data ingested this many "
            "seconds (or more) before their newest packet: raises ONE PIPELINE_STALLED alert "
            "(falls cannot be detected meanwhile). Healthy pipelines stay below ~3 s "
            "(a window every 1.28 s plus end-to-end latency)."
        ),
    )
    flatline_std_g: float = Field(
        1e-5,
        gt=0,
        description=(
            "acc_std_g (g) below this is a flat-lined or stuck sensor: a real accelerometer "
            "always shows noise (HAPT's stillest windows have 0.003 g)."
        ),
    )
    gyro_flatline_std_rad_s: float = Field(
        1e-5,
        ge=0,
        description=(
            "gyro_std_rad_s (rad/s) below this is a silent or stuck gyroscope: a working one "
            "always shows noise (HAPT's stillest windows have 0.002 rad/s). The model needs "
            "the gyroscope (without it nearly every window reads as sitting), so the activity "
            "is not to be trusted meanwhile. 0 disables the check: for accelerometer-only "
            "devices, and for devices whose gyroscope reads exactly constant while at rest "
            "(coarse full-scale steps, or a sensor hub that zeroes it when still)."
        ),
    )
    acc_saturation_g: float = Field(
        7.9, gt=0, description="max_abs_acc_g (g) at or above this is a saturated accelerometer."
    )
    gyro_saturation_rad_s: float = Field(
        34.0, gt=0, description="max_abs_gyro (rad/s) at or above this is a saturated gyroscope."
    )
    gravity_tolerance_g: float = Field(
        0.35,
        ge=0,
        description=(
            "While still, every acceleration magnitude of the window should be 1 g ± this; a "
            "still window entirely outside it means a miscalibrated sensor. 0 disables the check."
        ),
    )
    fault_windows: int = Field(
        3, ge=1, description="Consecutive faulty windows before SENSOR_FAULT opens."
    )
    fault_clear_windows: int = Field(
        3, ge=1, description="Consecutive healthy windows before SENSOR_FAULT resolves."
    )
    cooldown_s: float = Field(
        300.0,
        ge=0,
        description="After an alert resolves, seconds before the same type may open again.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def in_day_hours(self, unix_s: float) -> bool:
        """Whether ``unix_s`` falls in day hours of the devices' local time."""
        local = datetime.fromtimestamp(unix_s, UTC).astimezone(self.zone).time()
        if self.day_start <= self.day_end:
            return self.day_start <= local < self.day_end
        return local >= self.day_start or local < self.day_end  # window spans midnight

    def is_still(self, movement_energy_g2: float) -> bool:
        return movement_energy_g2 < self.still_energy_g2

    def sensor_faults(self, prediction: Prediction) -> list[str]:
        """Which faults this window shows: ``flatline`` (accelerometer), ``gyro_flatline``,
        ``acc_saturation``, ``gyro_saturation``, ``implausible_gravity``."""
        f = prediction.features
        faults = []
        if f.acc_std_g < self.flatline_std_g:
            faults.append("flatline")
        if f.gyro_std_rad_s is not None and f.gyro_std_rad_s < self.gyro_flatline_std_rad_s:
            faults.append("gyro_flatline")
        if f.max_abs_acc_g >= self.acc_saturation_g:
            faults.append("acc_saturation")
        if f.max_abs_gyro >= self.gyro_saturation_rad_s:
            faults.append("gyro_saturation")
        if (
            self.gravity_tolerance_g > 0
            and "flatline" not in faults
            and self.is_still(f.movement_energy)
            and (
                f.min_acc_g > 1.0 + self.gravity_tolerance_g
                or f.peak_acc_g < 1.0 - self.gravity_tolerance_g
            )
        ):
            faults.append("implausible_gravity")
        return faults


def smoothed_activity(probabilities: list[tuple[float, ...]]) -> str:
    """Argmax of the mean of the given probability vectors (ACTIVITIES order)."""
    sums = [0.0] * NUM_CLASSES
    for vector in probabilities:
        for i, p in enumerate(vector):
            sums[i] += p
    return ACTIVITIES[max(range(NUM_CLASSES), key=sums.__getitem__)]


def check_prediction(prediction: Prediction) -> None:
    """Raise :class:`PredictionRejectedError` if a number the rules compare is not finite."""
    features = prediction.features
    # The common case first, without building the dict below (``to_dict`` deep-copies): it
    # was ~10 µs of the ~25 µs a prediction's rules took (py-spy, benchmarks.bench_alerting).
    if (
        all(map(math.isfinite, prediction.probabilities))
        and math.isfinite(prediction.start_time)
        and math.isfinite(prediction.end_time)
        and all(math.isfinite(getattr(features, name)) for name in REQUIRED_FEATURES)
        and (features.gyro_std_rad_s is None or math.isfinite(features.gyro_std_rad_s))
    ):
        return
    numbers = {
        "start_time": prediction.start_time,
        "end_time": prediction.end_time,
        **prediction.features.to_dict(),
    }
    bad = [name for name, value in numbers.items() if not math.isfinite(value)]
    if any(not math.isfinite(p) for p in prediction.probabilities):
        bad.append("probabilities")
    if bad:
        raise PredictionRejectedError(f"window {prediction.window_id}: non-finite {', '.join(bad)}")
