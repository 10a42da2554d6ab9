"""The devices of a scenario: steady recordings, scripted falls and silences."""

from __future__ import annotations

import numpy as np
import pytest

from services.faults.devices import Role, scenario_devices
from services.faults.schedule import Fault, FaultKind, ScenarioPlan, ScheduleError, Silence
from shared.activities import HaptLabel
from shared.data.recording import Recording


def _recording(subject: int, seconds: int = 400) -> Recording:
    """Alternating 40 s runs of walking and lying (enough for any fall scenario)."""
    n = seconds * 50
    labels = np.where((np.arange(n) // 2000) % 2 == 0, HaptLabel.WALKING, HaptLabel.LAYING)
    samples = np.zeros((n, 6))
    samples[:, 0] = 1.0
    samples[:, 1] = np.arange(n) / n  # tells the samples apart
    return Recording(subject, 1, samples, labels.astype(np.int16))


RECORDINGS = [_recording(s) for s in range(1, 20)]
PLAN = ScenarioPlan(
    "t",
    duration_s=150,
    faults=(Fault(60, FaultKind.KILL, "alerting"),),
    falls=(40.0,),
    silences=(Silence(70.0, 2),),
)


def test_one_steady_device_per_recording_plus_the_scripted_ones() -> None:
    devices = scenario_devices(PLAN, RECORDINGS)
    roles = [d.role for d in devices]
    assert roles.count(Role.STEADY) == 19
    assert roles.count(Role.FALL) == 1
    assert roles.count(Role.SILENT) == 2
    assert len({d.device_id for d in devices}) == len(devices) == 22


def test_steady_devices_send_for_the_scenario_and_silent_ones_stop_on_time() -> None:
    devices = scenario_devices(PLAN, RECORDINGS)
    for d in devices:
        if d.role is Role.STEADY:
            assert len(d.device.samples) == 150 * 50
            assert d.device.stop_after_samples is None
        elif d.role is Role.SILENT:
            assert d.device.stop_after_samples == 70 * 50
            assert d.at_s == 70.0


def test_the_fall_device_walks_until_the_impact_then_lies_until_the_end() -> None:
    (fall,) = [d for d in scenario_devices(PLAN, RECORDINGS) if d.role is Role.FALL]
    assert fall.at_s == 40.0
    labels = fall.device.labels
    assert len(labels) == 150 * 50
    assert (labels[: 40 * 50] == HaptLabel.WALKING).all()
    impact = fall.device.samples[40 * 50 : 40 * 50 + 10, 0]
    assert impact.max() > 3.0  # the impact burst right after the walking
    assert (labels[40 * 50 + 10 :] == HaptLabel.LAYING).all()


def test_fewer_than_20_devices_is_refused() -> None:
    with pytest.raises(ScheduleError, match=">= 20"):
        scenario_devices(PLAN, RECORDINGS[:10])
    with pytest.raises(ScheduleError, match="no recordings"):
        scenario_devices(PLAN, [])
