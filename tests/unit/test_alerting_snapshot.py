"""Monitor snapshots: a restored monitor continues exactly like one that never stopped."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.alerting.lifecycle import AlertTransition
from services.alerting.monitor import DeviceMonitor, FleetMonitor, SnapshotError
from services.alerting.rules import AlertRules
from shared.activities import ACTIVITIES
from shared.messages import AlertType
from tests.unit.alerting_helpers import FLAT, IMPACT, LYING_STILL, STEP_S, WALKING, prediction

RULES = AlertRules(
    fall_confirm_s=30.0,
    lying_max_s=60.0,
    inactivity_s=40.0,
    offline_after_s=20.0,
    cooldown_s=15.0,
    fault_windows=2,
    fault_clear_windows=2,
)
FEATURES = [WALKING, LYING_STILL, IMPACT, FLAT, replace(WALKING, movement_energy=0.004)]


def _ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"a{next(counter)}"


def _round_trip(snapshot: dict[str, Any]) -> dict[str, Any]:
    """What the store keeps: JSON text."""
    loaded: dict[str, Any] = json.loads(json.dumps(snapshot))
    return loaded


# An event: ("window", i, activity index, features index) | ("traffic", second) | ("tick", s)
_event = st.one_of(
    st.tuples(
        st.just("window"),
        st.integers(0, 3),
        st.integers(0, len(ACTIVITIES) - 1),
        st.integers(0, len(FEATURES) - 1),
    ),
    st.tuples(st.just("traffic"), st.floats(0.0, 30.0)),
    st.tuples(st.just("tick"), st.floats(0.0, 40.0)),
)


def _run(
    monitor: DeviceMonitor, events: list[tuple[Any, ...]], state: dict[str, float]
) -> list[AlertTransition]:
    """Feed events; ``state`` carries the window index and clocks across calls."""
    out: list[AlertTransition] = []
    for event in events:
        if event[0] == "window":
            state["i"] += 1 + event[1]  # windows arrive in order, some skipped
            p = prediction(int(state["i"]), ACTIVITIES[event[2]], FEATURES[event[3]])
            state["wall"] = max(state["wall"], p.end_time)
            out += monitor.observe(p, state["wall"])
        elif event[0] == "traffic":
            state["wall"] += event[1]
            out += monitor.traffic(state["wall"], state["wall"])
        else:
            state["wall"] += event[1]
            out += monitor.tick(state["wall"])
    return out


def _shape(steps: list[AlertTransition]) -> list[tuple[Any, ...]]:
    return [
        (s.alert.type, s.event, s.alert.alert_id, s.alert.reason, s.alert.opened_at) for s in steps
    ]


@settings(max_examples=300, deadline=None)
@given(
    before=st.lists(_event, max_size=60),
    after=st.lists(_event, max_size=60),
)
def test_restore_continues_exactly_like_no_restart(
    before: list[tuple[Any, ...]], after: list[tuple[Any, ...]]
) -> None:
    ids = _ids()
    reference = DeviceMonitor("dev-1", RULES, ids)
    clocks = {"i": -1.0, "wall": prediction(0, "WALKING", WALKING).start_time}
    _run(reference, before, clocks)
    snapshot = _round_trip(reference.snapshot())
    restored = DeviceMonitor.restore("dev-1", RULES, snapshot, list(reference.active.values()), ids)
    fork = dict(clocks)
    # Same id source for both continuations: ids of new alerts must match too.
    counter_state = itertools.count(10_000)
    reference._id_factory = restored._id_factory = lambda: f"b{next(counter_state)}"
    expected = _run(reference, after, clocks)
    counter_state = itertools.count(10_000)
    got = _run(restored, after, fork)
    assert _shape(got) == _shape(expected)
    assert restored.snapshot() == _round_trip(reference.snapshot())


def test_a_fall_waiting_for_confirmation_survives_a_restart() -> None:
    """The issue's scenario: impact, ~15 s lying, restart, lying goes on -> one fall."""
    m = DeviceMonitor("dev-1", AlertRules())
    steps = [s for i in range(5) for s in m.observe(prediction(i, "WALKING", WALKING), 0.0)]
    steps += m.observe(prediction(5, "WALKING", IMPACT), 0.0)
    for i in range(6, 6 + round(15 / STEP_S)):
        steps += m.observe(prediction(i, "LAYING", LYING_STILL), 0.0)
    assert steps == []
    restarted = FleetMonitor(AlertRules())
    restarted.restore("dev-1", _round_trip(m.snapshot()), list(m.active.values()))
    falls = [
        s
        for i in range(6 + round(15 / STEP_S), 60)
        for s in restarted.observe(prediction(i, "LAYING", LYING_STILL), 0.0)
        if s.alert.type is AlertType.FALL_SUSPECTED
    ]
    assert len(falls) == 1
    # Without the snapshot the pending impact is gone: no fall, ever.
    forgetful = FleetMonitor(AlertRules())
    assert not [
        s
        for i in range(6 + round(15 / STEP_S), 60)
        for s in forgetful.observe(prediction(i, "LAYING", LYING_STILL), 0.0)
    ]


def test_a_device_silent_before_a_restart_goes_offline_after_it() -> None:
    m = DeviceMonitor("dev-1", AlertRules(offline_after_s=6.0))
    m.traffic(100.0, 100.0)
    restarted = FleetMonitor(AlertRules(offline_after_s=6.0))
    restarted.restore("dev-1", _round_trip(m.snapshot()))
    (opened,) = restarted.tick(162.0)
    assert opened.alert.type is AlertType.DEVICE_OFFLINE
    assert opened.alert.details["last_seen_at"] == 100.0


def test_cooldowns_survive_a_restart() -> None:
    m = DeviceMonitor("dev-1", AlertRules(offline_after_s=10.0, cooldown_s=100.0))
    m.traffic(0.0, 0.0)
    assert m.tick(20.0)
    m.traffic(30.0, 30.0)  # back: resolved at 30, cooldown until 130
    restored = DeviceMonitor.restore(
        "dev-1", m.rules, _round_trip(m.snapshot()), list(m.active.values())
    )
    assert restored.tick(120.0) == []
    assert [s.alert.type for s in restored.tick(130.0)] == [AlertType.DEVICE_OFFLINE]


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: {**s, "v": 99},
        lambda s: {k: v for k, v in s.items() if k != "fall"},
        lambda s: {**s, "energies": ["a"]},
        lambda s: {**s, "resolved_wall": {"NOT_A_TYPE": 1.0}},
        lambda s: {**s, "fall": {"impact_g": True}},
        lambda s: {**s, "probabilities": 5},
    ],
)
def test_a_damaged_snapshot_is_refused(damage: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    m = DeviceMonitor("dev-1", AlertRules())
    m.observe(prediction(0, "WALKING", IMPACT), 0.0)
    with pytest.raises(SnapshotError):
        DeviceMonitor.restore("dev-1", m.rules, damage(_round_trip(m.snapshot())))


def test_fleet_restore_of_a_damaged_snapshot_keeps_the_open_alerts() -> None:
    m = DeviceMonitor("dev-1", AlertRules(offline_after_s=1.0))
    m.traffic(0.0, 0.0)
    (opened,) = m.tick(5.0)
    fleet = FleetMonitor(AlertRules())
    with pytest.raises(SnapshotError):
        fleet.restore("dev-1", {"v": 0}, [opened.alert])
    assert fleet.devices["dev-1"].active[AlertType.DEVICE_OFFLINE] == opened.alert


def test_snapshot_is_small() -> None:
    """Stored for every device on every batch: keep it compact."""
    m = DeviceMonitor("dev-1", AlertRules())
    for i in range(10):
        m.observe(prediction(i, "WALKING", WALKING if i != 5 else IMPACT), 0.0)
    assert len(json.dumps(m.snapshot(), separators=(",", ":"))) < 1500
