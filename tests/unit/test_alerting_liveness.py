"""Partition clocks: device silence counts only while ingest could write (no I/O)."""

from __future__ import annotations

import pytest

from services.alerting.lifecycle import AlertEvent
from services.alerting.liveness import MAX_OUTAGES, PartitionClock
from services.alerting.monitor import DeviceMonitor
from services.alerting.rules import AlertRules
from shared.messages import AlertType


def _beats(clock: PartitionClock, start: float, stop: float) -> None:
    t = start
    while t <= stop:
        clock.heartbeat(t)
        t += 1.0


def test_silence_counts_heartbeat_time_and_an_outage_adds_at_most_the_gap() -> None:
    clock = PartitionClock(max_gap_s=3.0)
    assert not clock.running and clock.silence_since(0.0) is None
    _beats(clock, 100.0, 110.0)
    assert clock.silence_since(104.5) == pytest.approx(5.5)
    assert clock.silence_since(111.0) == 0.0  # traffic newer than the newest heartbeat
    clock.heartbeat(140.0)  # 30 s broker pause: no heartbeat in between
    assert clock.silence_since(104.5) == pytest.approx(5.5 + 3.0)
    assert clock.silence_since(125.0) == pytest.approx(0.0)  # inside the outage: nothing yet
    assert clock.silence_since(111.0) == pytest.approx(2.0)  # 110 + 3 s counted, then lost
    clock.heartbeat(139.0)  # an older one (another ingest replica, a replay): covered
    assert clock.outages == [(110.0, 140.0)]


def test_a_broker_pause_longer_than_the_threshold_raises_no_offline() -> None:
    """Issue 8, fault suite: a 30 s broker pause opened DEVICE_OFFLINE for devices that
    kept sending. With the clock, they get offline_after_s of running pipeline to resend."""
    rules = AlertRules(offline_after_s=10.0)
    clock = PartitionClock(rules.heartbeat_max_gap_s)
    device = DeviceMonitor("dev-1", rules)
    _beats(clock, 0.0, 20.0)
    device.traffic(20.0, 20.0)
    _beats(clock, 50.0, 56.0)  # paused 20 s -> 50 s; heartbeats resume first...
    assert device.tick(56.0, clock) == []  # 3 + 6 s of pipeline time
    device.traffic(56.2, 56.2)  # ...the device's resend arrives 6 s after the resume
    _beats(clock, 57.0, 65.0)
    assert device.tick(65.0, clock) == []
    # Wall-clock silence would have opened at 30 s (and with the old rule it did).
    wall = DeviceMonitor("dev-2", rules)
    wall.traffic(20.0, 20.0)
    assert [s.alert.type for s in wall.tick(50.0)] == [AlertType.DEVICE_OFFLINE]


def test_traffic_read_before_the_heartbeats_of_its_time_is_not_silence() -> None:
    """Raw and heartbeats are separate topics, read at their own pace: after an outage the
    device's resend may be read before the heartbeats written around it."""
    rules = AlertRules(offline_after_s=5.0)
    clock = PartitionClock(rules.heartbeat_max_gap_s)
    device = DeviceMonitor("dev-1", rules)
    _beats(clock, 0.0, 10.0)
    device.traffic(25.0, 25.0)  # read first...
    assert device.tick(25.0, clock) == []
    _beats(clock, 24.0, 29.0)  # ...then the heartbeats from 24 s on
    assert device.tick(29.0, clock) == []  # only 4 s since its traffic


def test_a_device_that_stays_silent_while_the_pipeline_runs_goes_offline() -> None:
    rules = AlertRules(offline_after_s=10.0)
    clock = PartitionClock(rules.heartbeat_max_gap_s)
    device = DeviceMonitor("dev-1", rules)
    _beats(clock, 0.0, 5.0)
    device.traffic(5.0, 5.0)
    _beats(clock, 6.0, 14.0)
    assert device.tick(14.0, clock) == []
    clock.heartbeat(15.0)
    (opened,) = device.tick(15.2, clock)
    assert (opened.alert.type, opened.event) == (AlertType.DEVICE_OFFLINE, AlertEvent.OPENED)
    assert opened.alert.details["last_seen_at"] == 5.0


def test_alerting_down_counts_as_silence_when_heartbeats_prove_ingest_wrote() -> None:
    """Heartbeats written while alerting was down are read when it catches up: a device
    silent all that time goes offline at once (the issue's "re-armed timers")."""
    rules = AlertRules(offline_after_s=10.0)
    clock = PartitionClock(rules.heartbeat_max_gap_s)
    device = DeviceMonitor("dev-1", rules)
    _beats(clock, 0.0, 3.0)
    device.traffic(3.0, 3.0)
    restored = DeviceMonitor.restore("dev-1", rules, device.snapshot())
    clock = PartitionClock.from_dict(clock.to_dict(), rules.heartbeat_max_gap_s)
    _beats(clock, 4.0, 60.0)  # catching up on a minute of heartbeats
    assert [s.alert.type for s in restored.tick(61.0, clock)] == [AlertType.DEVICE_OFFLINE]


def test_without_heartbeats_silence_is_wall_clock_time() -> None:
    rules = AlertRules(offline_after_s=10.0)
    device = DeviceMonitor("dev-1", rules)
    device.traffic(0.0, 0.0)
    idle = PartitionClock(rules.heartbeat_max_gap_s)
    assert device.tick(9.0, idle) == []
    assert [s.alert.type for s in device.tick(10.0, idle)] == [AlertType.DEVICE_OFFLINE]


def test_outages_are_bounded_and_round_trip() -> None:
    clock = PartitionClock(1.0)
    for i in range(MAX_OUTAGES + 10):
        clock.heartbeat(i * 10.0)
    assert len(clock.outages) == MAX_OUTAGES
    again = PartitionClock.from_dict(clock.to_dict(), 1.0)
    assert (again.heartbeat_at, again.outages) == (clock.heartbeat_at, clock.outages)
    assert again.silence_since(clock.outages[0][0]) == clock.silence_since(clock.outages[0][0])
    for bad in (
        {},
        {"heartbeat_at": "x", "outages": []},
        {"heartbeat_at": 1.0, "outages": [[True, 2]]},
    ):
        with pytest.raises((KeyError, TypeError, ValueError)):
            PartitionClock.from_dict(bad, 3.0)
    with pytest.raises(ValueError):
        PartitionClock(0.0)
