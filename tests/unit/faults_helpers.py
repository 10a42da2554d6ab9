"""Observations of a faultless fault-injection run, for the counting and report tests."""

from __future__ import annotations

from dataclasses import replace

from services.faults import counting as c
from services.faults.devices import Role
from services.faults.records import (
    AlertRecord,
    DeliveryRecord,
    DeviceOutcome,
    FaultRecord,
    Observations,
    PredictionRecord,
    RawRecord,
    WindowRecord,
)
from services.faults.schedule import Fault, FaultKind

T0 = 1_000_000.0


def alert(alert_id: str, device: str, kind: str, at: float, state: str = "open") -> AlertRecord:
    return AlertRecord(alert_id, device, kind, state, T0 + at, T0 + at)


def delivery(a: AlertRecord, at: float, key: str | None = None) -> DeliveryRecord:
    return DeliveryRecord(
        T0 + at, key or f"{a.alert_id}:{a.event}", a.event, a.alert_id, a.device_id, a.type,
        a.opened_at,
    )  # fmt: skip


def windows(device: str, n: int) -> list[str]:
    return [f"{device}:{64 * i}" for i in range(n)]


def clean(faults: list[FaultRecord] | None = None, **changes: object) -> Observations:
    """Three devices: steady, a fall at 30 s, a device silent from 50 s; all as it should be."""
    devices = [
        DeviceOutcome("steady", Role.STEADY, None, T0 + 100),
        DeviceOutcome("fall-1", Role.FALL, 30.0, T0 + 100),
        DeviceOutcome("silent-1", Role.SILENT, 50.0, T0 + 50),
    ]
    accepted = {(d, s): T0 + s for d in ("steady", "fall-1") for s in range(100)}
    accepted |= {("silent-1", s): T0 + s for s in range(50)}
    ids = windows("steady", 77) + windows("fall-1", 77) + windows("silent-1", 38)
    fall = alert("a-fall", "fall-1", c.FALL, 70)
    offline = alert("a-off", "silent-1", c.OFFLINE, 61)
    obs = Observations(
        scenario="test",
        seed=1,
        started_at=T0,
        ended_at=T0 + 130,
        devices=devices,
        accepted=accepted,
        raw=[RawRecord(d, s, t) for (d, s), t in accepted.items()],
        windows=[WindowRecord(i, i.split(":")[0], "same") for i in ids],
        predictions=[
            PredictionRecord(i, i.split(":")[0], T0 + int(i.split(":")[1]) / 50 + 2.6, 0.0)
            for i in ids
        ],
        alerts=[fall, offline],
        deliveries=[delivery(fall, 70.1), delivery(offline, 61.1)],
        dead_letters=0,
        faults=faults or [],
        expected_windows=set(ids),
        offline_after_s=10.0,
    )
    # produced_at: a little after ingest
    obs.predictions = [p._replace(produced_at=p.ingested_at + 0.2) for p in obs.predictions]
    return replace(obs, **changes)  # type: ignore[arg-type]


def fault(at: float, kind: FaultKind, target: str, duration: float = 0.0) -> FaultRecord:
    fault = Fault(at, kind, target, duration)
    return FaultRecord(fault, T0 + at, T0 + at + duration + 0.05)
