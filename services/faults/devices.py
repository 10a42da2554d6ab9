"""The replayed devices of a scenario (pure, given the recordings): one per HAPT test
recording that keeps sending for the whole scenario, one fall device per scripted fall
(real walking, an impact, then real lying until the end) and the devices that go silent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from services.demo.replay import SimulatedDevice, device_id_for
from services.demo.scenarios import RATE_HZ, fall_scenario
from services.faults.schedule import MIN_DEVICES, ScenarioPlan, ScheduleError
from shared.data.recording import Recording


class Role(StrEnum):
    #: Sends until the end of the scenario (or of its recording): must never be offline.
    STEADY = "steady"
    #: Walks, falls at ``at_s`` and lies: FALL_SUSPECTED exactly once.
    FALL = "fall"
    #: Stops sending at ``at_s``: DEVICE_OFFLINE exactly once.
    SILENT = "silent"


@dataclass(frozen=True)
class ScriptedDevice:
    device: SimulatedDevice
    role: Role
    #: Fall: the impact (s after the device's first sample); silent: when it stops.
    at_s: float | None = None

    @property
    def device_id(self) -> str:
        return self.device.device_id


def scenario_devices(plan: ScenarioPlan, recordings: Sequence[Recording]) -> list[ScriptedDevice]:
    """Every device of ``plan``, steady ones first. Steady devices send the first
    ``plan.duration_s`` of their recording (less if the recording is shorter)."""
    if not recordings:
        raise ScheduleError("no recordings to replay")
    limit = round(plan.duration_s * RATE_HZ)
    devices = [
        ScriptedDevice(
            SimulatedDevice(device_id_for(r), r.samples[:limit], r.labels[:limit]), Role.STEADY
        )
        for r in recordings
    ]
    for i, impact in enumerate(plan.falls, start=1):
        # The impact segment starts right after ``impact`` s of walking; the person then
        # lies until the end of the scenario.
        fall = fall_scenario(recordings, walk_s=impact, lie_s=plan.duration_s - impact)
        devices.append(
            ScriptedDevice(
                SimulatedDevice(f"fall-{i}", fall.samples[:limit], fall.labels[:limit]),
                Role.FALL,
                impact,
            )
        )
    n = 0
    for silence in plan.silences:
        for _ in range(silence.devices):
            source = recordings[n % len(recordings)]
            n += 1
            devices.append(
                ScriptedDevice(
                    SimulatedDevice(
                        f"silent-{n}",
                        source.samples,
                        source.labels,
                        stop_after_samples=round(silence.at_s * RATE_HZ),
                    ),
                    Role.SILENT,
                    silence.at_s,
                )
            )
    if len(devices) < MIN_DEVICES:
        raise ScheduleError(f"{plan.name}: {len(devices)} devices, issue 8 asks for >= 20")
    return devices
