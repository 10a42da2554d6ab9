"""Alert rules and lifecycle on synthetic predictions with fixed clocks (no I/O)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from services.alerting.lifecycle import AlertEvent, AlertTransition, InvalidTransitionError
from services.alerting.monitor import DeviceMonitor, FleetMonitor
from services.alerting.rules import AlertRules, PredictionRejectedError
from shared.messages import AlertState, AlertType, Severity
from tests.unit.alerting_helpers import (
    FLAT,
    IMPACT,
    LYING_STILL,
    STANDING_STILL,
    STEP_S,
    WALKING,
    prediction,
)


def _ids() -> object:
    counter = itertools.count(1)
    return lambda: f"a{next(counter)}"


def monitor(**rules: object) -> DeviceMonitor:
    return DeviceMonitor("dev-1", AlertRules(**rules), _ids())  # type: ignore[arg-type]


def feed(
    m: DeviceMonitor, start: int, count: int, label: str, features: object
) -> list[tuple[int, AlertTransition]]:
    """Observe windows start..start+count-1; wall clock = the window's end time."""
    out = []
    for i in range(start, start + count):
        p = prediction(i, label, features)  # type: ignore[arg-type]
        out.extend((i, step) for step in m.observe(p, p.end_time))
    return out


def of_type(steps: list[tuple[int, AlertTransition]], kind: AlertType) -> list[AlertTransition]:
    return [s for _, s in steps if s.alert.type is kind]


# -- falls ----------------------------------------------------------------------------------


def test_fall_raised_exactly_once_after_the_confirmation_wait() -> None:
    m = monitor()
    steps = feed(m, 0, 10, "WALKING", WALKING)
    steps += feed(m, 10, 1, "WALKING", IMPACT)
    steps += feed(m, 11, 80, "LAYING", LYING_STILL)  # ~100 s on the floor
    falls = [(i, s) for i, s in steps if s.alert.type is AlertType.FALL_SUSPECTED]
    assert len(falls) == 1
    i, step = falls[0]
    assert step.event is AlertEvent.OPENED
    alert = step.alert
    assert alert.severity is Severity.CRITICAL
    assert alert.state is AlertState.OPEN
    assert alert.details["impact_g"] == pytest.approx(3.1)
    # Window 11 overlaps the impact window; lying counts from window 12's start (= window 10's
    # end). Raised at the first window whose end is >= 30 s after that, not earlier.
    lying_from = prediction(12, "LAYING", LYING_STILL).start_time
    assert prediction(i, "LAYING", LYING_STILL).end_time - lying_from >= 30.0
    assert prediction(i - 1, "LAYING", LYING_STILL).end_time - lying_from < 30.0
    assert alert.reason.startswith("impact 3.1 g, then lying/still 3")
    assert not [s for _, s in steps if s.alert.type is not AlertType.FALL_SUSPECTED]


def test_getting_up_within_the_wait_cancels_the_fall() -> None:
    m = monitor()
    feed(m, 0, 5, "WALKING", WALKING)
    feed(m, 5, 1, "WALKING", IMPACT)
    steps = feed(m, 6, 12, "LAYING", LYING_STILL)  # ~15 s lying
    steps += feed(m, 18, 6, "WALKING", WALKING)  # gets up and walks away
    steps += feed(m, 24, 40, "LAYING", LYING_STILL)  # later lies down (no impact): no fall
    assert of_type(steps, AlertType.FALL_SUSPECTED) == []
    assert m.falls_cancelled == 1


def test_standing_up_still_cancels_the_fall_too() -> None:
    m = monitor()
    feed(m, 0, 1, "WALKING", IMPACT)
    feed(m, 1, 8, "LAYING", LYING_STILL)
    steps = feed(m, 9, 40, "STANDING", STANDING_STILL)
    assert of_type(steps, AlertType.FALL_SUSPECTED) == []
    assert m.falls_cancelled == 1


def test_impact_without_lying_afterwards_is_not_a_fall() -> None:
    m = monitor()
    steps = feed(m, 0, 1, "WALKING_DOWNSTAIRS", IMPACT)
    steps += feed(m, 1, 40, "WALKING_DOWNSTAIRS", WALKING)
    steps += feed(m, 41, 40, "SITTING", STANDING_STILL)
    assert of_type(steps, AlertType.FALL_SUSPECTED) == []
    assert m.falls_cancelled == 0


def test_one_odd_window_does_not_cancel_a_fall() -> None:
    m = monitor()
    feed(m, 0, 1, "WALKING", IMPACT)
    steps = feed(m, 1, 10, "LAYING", LYING_STILL)
    steps += feed(m, 11, 1, "STANDING", LYING_STILL)  # misclassified, but still
    steps += feed(m, 12, 30, "LAYING", LYING_STILL)
    assert len(of_type(steps, AlertType.FALL_SUSPECTED)) == 1
    assert m.falls_cancelled == 0


def test_fall_stays_until_a_human_resolves_it() -> None:
    m = monitor()
    feed(m, 0, 1, "WALKING", IMPACT)
    feed(m, 1, 40, "LAYING", LYING_STILL)
    alert = m.active[AlertType.FALL_SUSPECTED]
    steps = feed(m, 41, 20, "WALKING", WALKING)
    assert steps == []  # got up: still open, someone has to check
    ack = m.acknowledge(alert, "nurse-ana", 1.0)
    assert ack is not None
    assert ack.alert.state is AlertState.ACKNOWLEDGED
    assert ack.alert.acknowledged_by == "nurse-ana"
    done = m.resolve(ack.alert, "nurse-ana", 2.0, "checked, fine")
    assert done.event is AlertEvent.RESOLVED
    assert done.alert.details["resolved_by"] == "nurse-ana"
    assert AlertType.FALL_SUSPECTED not in m.active


# -- smoothing, lying, inactivity -----------------------------------------------------------


def test_one_odd_window_does_not_flip_the_smoothed_activity() -> None:
    m = monitor(lying_max_s=60.0, inactivity_s=10_000.0)
    steps = feed(m, 0, 20, "LAYING", LYING_STILL)
    steps += feed(m, 20, 1, "WALKING", LYING_STILL)
    assert m.smoothed == "LAYING"
    steps += feed(m, 21, 40, "LAYING", LYING_STILL)
    opened = of_type(steps, AlertType.PROLONGED_LYING)
    assert len(opened) == 1
    # The run was not restarted by the odd window: opened 60 s after window 0 started.
    assert opened[0].alert.details["lying_since"] == prediction(0, "LAYING", LYING_STILL).start_time


def test_two_walking_windows_do_flip_it_and_resolve_prolonged_lying() -> None:
    m = monitor(lying_max_s=60.0, inactivity_s=10_000.0)
    steps = feed(m, 0, 60, "LAYING", LYING_STILL)
    steps += feed(m, 60, 2, "WALKING", WALKING)
    lying = of_type(steps, AlertType.PROLONGED_LYING)
    assert [s.event for s in lying] == [AlertEvent.OPENED, AlertEvent.RESOLVED]
    assert lying[1].alert.details["resolved_by"] == "auto"


def test_prolonged_lying_only_in_day_hours() -> None:
    night = 1_705_356_000.0  # 2024-01-15 22:00 UTC
    m = DeviceMonitor("dev-1", AlertRules(lying_max_s=600.0, inactivity_s=1e9), _ids())
    steps = []
    # 22:00 → 07:50 UTC lying all night: nothing.
    n_night = int((9 * 3600 + 50 * 60) / STEP_S)
    for i in range(n_night):
        p = prediction(i, "LAYING", LYING_STILL, t0=night)
        steps.extend(m.observe(p, p.end_time))
    assert steps == []
    # Still lying when day hours begin at 08:00: raised then.
    for i in range(n_night, n_night + 600):
        p = prediction(i, "LAYING", LYING_STILL, t0=night)
        for step in m.observe(p, p.end_time):
            steps.append(step)
            opened_at_event = p.end_time
    assert [s.alert.type for s in steps] == [AlertType.PROLONGED_LYING]
    assert opened_at_event - (night + 10 * 3600) == pytest.approx(0.0, abs=STEP_S)


def test_day_hours_follow_the_configured_time_zone() -> None:
    rules_utc = AlertRules()
    rules_madrid = AlertRules(timezone="Europe/Madrid")
    seven_thirty_utc = 1_705_303_800.0  # 2024-01-15 07:30 UTC = 08:30 in Madrid
    assert not rules_utc.in_day_hours(seven_thirty_utc)
    assert rules_madrid.in_day_hours(seven_thirty_utc)
    with pytest.raises(ValueError, match="time zone"):
        AlertRules(timezone="Mars/Olympus")


def test_inactivity_opens_after_continuous_stillness_and_resolves_on_movement() -> None:
    m = monitor(inactivity_s=120.0, lying_max_s=1e9)
    steps = feed(m, 0, 90, "SITTING", STANDING_STILL)
    steps += feed(m, 90, 1, "SITTING", WALKING)  # one twitch: median keeps it still
    steps += feed(m, 91, 20, "SITTING", STANDING_STILL)
    steps += feed(m, 111, 3, "WALKING", WALKING)
    kinds = [(s.alert.type, s.event) for _, s in steps]
    assert kinds == [
        (AlertType.INACTIVITY, AlertEvent.OPENED),
        (AlertType.INACTIVITY, AlertEvent.RESOLVED),
    ]
    opened_i = next(i for i, s in steps if s.event is AlertEvent.OPENED)
    assert 120.0 <= opened_i * STEP_S + 2.56 < 120.0 + 2 * STEP_S


# -- offline --------------------------------------------------------------------------------


def test_offline_fires_from_tick_alone_and_resolves_on_traffic() -> None:
    m = monitor()
    m.traffic(at_wall=1000.0, now_wall=1000.0)
    assert m.tick(1299.0) == []
    opened = m.tick(1300.0)
    assert [(s.alert.type, s.event) for s in opened] == [
        (AlertType.DEVICE_OFFLINE, AlertEvent.OPENED)
    ]
    assert opened[0].alert.severity is Severity.WARNING
    assert opened[0].alert.details["last_seen_at"] == 1000.0
    assert m.tick(1400.0) == []  # no second open
    back = m.traffic(at_wall=1500.0, now_wall=1500.2)
    assert [(s.alert.type, s.event) for s in back] == [
        (AlertType.DEVICE_OFFLINE, AlertEvent.RESOLVED)
    ]
    assert back[0].alert.alert_id == opened[0].alert.alert_id
    assert "500 s" in back[0].alert.details["resolution"]


def test_predictions_are_not_device_traffic() -> None:
    """An inference outage (no predictions) while the device keeps sending is not offline,
    and predictions alone (traffic unseen) never make a device look alive."""
    m = monitor()
    for second in range(0, 1000, 10):
        m.traffic(float(second), float(second))
        assert m.tick(second + 5.0) == []  # no prediction at all for 1000 s: still online
    quiet = monitor()
    quiet.observe(prediction(0, "WALKING", WALKING), now_wall=0.0)
    assert quiet.tick(1e6) == []  # never sent traffic: nothing to judge


def test_old_traffic_replayed_after_a_restart_changes_nothing() -> None:
    m = monitor()
    m.traffic(100.0, 100.0)
    (opened,) = m.tick(500.0)
    restored = DeviceMonitor.restore("dev-1", m.rules, m.snapshot(), [opened.alert])
    assert restored.traffic(90.0, 501.0) == []  # replayed, older than what the snapshot saw
    assert restored.traffic(100.0, 501.0) == []
    assert AlertType.DEVICE_OFFLINE in restored.active


def test_offline_cooldown_is_wall_clock() -> None:
    m = monitor(cooldown_s=400.0)
    m.traffic(0.0, 0.0)
    assert m.tick(300.0)
    m.traffic(400.0, 400.0)  # resolved at 400
    assert m.tick(700.0) == []  # offline again, but within the cooldown
    assert m.tick(799.0) == []
    reopened = m.tick(800.0)
    assert [s.event for s in reopened] == [AlertEvent.OPENED]


def test_a_device_never_seen_never_goes_offline() -> None:
    fleet = FleetMonitor(AlertRules())
    fleet.monitor("quiet")
    assert fleet.tick(1e12) == []


def test_fleet_tick_judges_only_the_devices_it_is_asked_about() -> None:
    fleet = FleetMonitor(AlertRules(offline_after_s=10.0))
    fleet.traffic("a", 0.0, 0.0)
    fleet.traffic("b", 0.0, 0.0)
    steps = fleet.tick(100.0, ["b", "unknown"])
    assert [s.alert.device_id for s in steps] == ["b"]


# -- sensor faults ----------------------------------------------------------------------------


def test_flatline_fault_after_n_windows_and_resolved_after_m_healthy() -> None:
    m = monitor(fault_windows=3, fault_clear_windows=2, inactivity_s=1e9)
    steps = feed(m, 0, 5, "WALKING", WALKING)
    steps += feed(m, 5, 2, "SITTING", FLAT)
    assert steps == []
    steps += feed(m, 7, 10, "SITTING", FLAT)
    steps += feed(m, 17, 1, "WALKING", WALKING)
    assert of_type(steps, AlertType.SENSOR_FAULT)[0].alert.details["faults"] == ["flatline"]
    steps += feed(m, 18, 1, "WALKING", WALKING)
    faults = [(i, s.event) for i, s in steps if s.alert.type is AlertType.SENSOR_FAULT]
    assert faults == [(7, AlertEvent.OPENED), (18, AlertEvent.RESOLVED)]


def test_flatline_windows_never_count_as_stillness() -> None:
    m = monitor(inactivity_s=30.0, lying_max_s=30.0)
    steps = feed(m, 0, 100, "LAYING", FLAT)
    assert [s.alert.type for _, s in steps] == [AlertType.SENSOR_FAULT]


def test_a_silent_gyroscope_opens_a_fault_and_the_accelerometer_rules_go_on() -> None:
    # Unlike an accelerometer flatline, the acceleration still tells stillness and impacts.
    m = monitor(fault_windows=3, inactivity_s=30.0, lying_max_s=1e9)
    no_gyro = replace(STANDING_STILL, gyro_std_rad_s=0.0, max_abs_gyro=0.0)
    steps = feed(m, 0, 40, "SITTING", no_gyro)
    fault = of_type(steps, AlertType.SENSOR_FAULT)[0].alert
    assert fault.details["faults"] == ["gyro_flatline"]
    assert fault.details["gyro_std_rad_s"] == 0.0
    assert "gyro_flatline" in fault.reason
    assert of_type(steps, AlertType.INACTIVITY)


@pytest.mark.parametrize(
    ("features", "kind"),
    [
        (replace(WALKING, max_abs_acc_g=7.95, peak_acc_g=8.0), "acc_saturation"),
        (replace(WALKING, max_abs_gyro=34.9), "gyro_saturation"),
        (replace(STANDING_STILL, peak_acc_g=1.6, min_acc_g=1.5), "implausible_gravity"),
    ],
)
def test_saturation_and_gravity_faults(features: object, kind: str) -> None:
    m = monitor(fault_windows=3)
    steps = feed(m, 0, 2, "WALKING", features)
    assert of_type(steps, AlertType.SENSOR_FAULT) == []
    steps = feed(m, 2, 1, "WALKING", features)
    opened = of_type(steps, AlertType.SENSOR_FAULT)
    assert len(opened) == 1
    assert kind in opened[0].alert.details["faults"]
    assert kind.split("_", maxsplit=1)[0] in opened[0].alert.reason


# -- lifecycle --------------------------------------------------------------------------------


def test_no_duplicate_open_alerts_and_cooldown_after_resolve() -> None:
    m = monitor(inactivity_s=30.0, cooldown_s=60.0, lying_max_s=1e9)
    steps = feed(m, 0, 100, "SITTING", STANDING_STILL)
    assert len(of_type(steps, AlertType.INACTIVITY)) == 1  # still inactive, one alert
    ack = m.acknowledge(m.active[AlertType.INACTIVITY], "nurse-ana", 1.0)
    assert ack is not None
    steps = feed(m, 100, 100, "SITTING", STANDING_STILL)
    assert steps == []  # acknowledged counts as open: nothing new
    steps = feed(m, 200, 3, "WALKING", WALKING)
    assert [s.event for s in of_type(steps, AlertType.INACTIVITY)] == [AlertEvent.RESOLVED]
    resolved_i = steps[0][0]
    # Still again: 30 s of stillness is reached 33 s after the resolve, inside the 60 s
    # cooldown; opens only once the cooldown is over.
    steps = feed(m, 203, 60, "SITTING", STANDING_STILL)
    opened = [(i, s) for i, s in steps if s.event is AlertEvent.OPENED]
    assert len(opened) == 1
    resolved_at = prediction(resolved_i, "WALKING", WALKING).end_time
    opened_at = prediction(opened[0][0], "SITTING", STANDING_STILL).end_time
    assert 60.0 <= opened_at - resolved_at < 60.0 + STEP_S


def test_ack_and_resolve_transitions_and_invalid_ones() -> None:
    m = monitor()
    m.traffic(0.0, 0.0)
    (opened,) = m.tick(1000.0)
    alert = opened.alert
    ack = m.acknowledge(alert, "oncall-bob", 1001.0)
    assert ack is not None
    assert ack.event is AlertEvent.ACKNOWLEDGED
    assert ack.idempotency_key == f"{alert.alert_id}:acknowledged"
    assert ack.alert.updated_at == 1001.0
    assert ack.alert.opened_at == alert.opened_at
    assert m.acknowledge(ack.alert, "someone-else", 1002.0) is None  # idempotent
    done = m.resolve(ack.alert, "oncall-bob", 1003.0, "battery swapped")
    assert done.alert.state is AlertState.RESOLVED
    assert done.alert.acknowledged_by == "oncall-bob"
    with pytest.raises(InvalidTransitionError):
        m.resolve(done.alert, "oncall-bob", 1004.0, "again")
    with pytest.raises(InvalidTransitionError):
        m.acknowledge(done.alert, "oncall-bob", 1004.0)


def test_duplicate_and_older_predictions_are_ignored() -> None:
    m = monitor(fault_windows=2)
    flat = prediction(0, "SITTING", FLAT)
    assert m.observe(flat, 0.0) == []
    assert m.observe(flat, 0.1) == []  # redelivered: must not count as a second faulty window
    assert m.duplicates_ignored == 1
    m.observe(prediction(2, "SITTING", FLAT), 1.0)  # opens (2 faulty windows)
    assert m.observe(prediction(1, "SITTING", FLAT), 2.0) == []  # late and older
    assert m.duplicates_ignored == 2
    assert AlertType.SENSOR_FAULT in m.active


def test_fleet_restores_stored_alerts_so_a_restart_does_not_open_twice() -> None:
    fleet = FleetMonitor(AlertRules())
    fleet.observe(prediction(0, "WALKING", IMPACT), 0.0)
    for i in range(1, 40):
        fleet.observe(prediction(i, "LAYING", LYING_STILL), float(i))
    (stored,) = fleet.active_alerts()
    restarted = FleetMonitor(AlertRules())
    # A snapshot from before the fall (lost), so the replay really runs the rule again.
    restarted.restore("dev-1", DeviceMonitor("dev-1", AlertRules()).snapshot(), [stored])
    steps = restarted.observe(prediction(0, "WALKING", IMPACT), 0.0)
    for i in range(1, 40):
        steps += restarted.observe(prediction(i, "LAYING", LYING_STILL), float(i))
    assert steps == []
    step = restarted.plan_acknowledge(stored, "nurse-ana", 50.0)
    assert step is not None
    assert restarted.devices["dev-1"].active[AlertType.FALL_SUSPECTED].state is AlertState.OPEN
    restarted.apply(step)
    assert restarted.devices["dev-1"].active[AlertType.FALL_SUSPECTED].state is (
        AlertState.ACKNOWLEDGED
    )


def test_fleet_counts_duplicates_once() -> None:
    fleet = FleetMonitor(AlertRules())
    p = prediction(0, "WALKING", WALKING)
    fleet.observe(p, 0.0)
    fleet.observe(p, 0.0)
    fleet.observe(p, 0.0)
    assert fleet.take_duplicates() == 2
    assert fleet.take_duplicates() == 0


def test_fleet_counts_cancelled_falls_once() -> None:
    fleet = FleetMonitor(AlertRules())
    fleet.observe(prediction(0, "WALKING", IMPACT), 0.0)
    for i in range(1, 8):
        fleet.observe(prediction(i, "LAYING", LYING_STILL), 0.0)
    for i in range(8, 12):
        fleet.observe(prediction(i, "WALKING", WALKING), 0.0)
    assert fleet.take_falls_cancelled() == 1
    assert fleet.take_falls_cancelled() == 0
    assert fleet.devices_tracked == 1
    fleet.forget(["dev-1"])
    assert fleet.take_falls_cancelled() == 0
    assert fleet.devices_tracked == 0


def test_non_finite_numbers_are_rejected() -> None:
    m = monitor()
    bad = prediction(0, "WALKING", replace(WALKING, movement_energy=float("nan")))
    with pytest.raises(PredictionRejectedError, match="movement_energy"):
        m.observe(bad, 0.0)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"start_time": float("inf")}, "start_time"),
        ({"end_time": float("nan")}, "end_time"),
        ({"probabilities": (float("nan"),) + (0.2,) * 5}, "probabilities"),
        ({"features": replace(WALKING, peak_acc_g=float("-inf"))}, "peak_acc_g"),
        ({"features": replace(WALKING, upright_cosine=float("nan"))}, "upright_cosine"),
    ],
)
def test_every_number_the_rules_compare_is_checked(changes: dict[str, object], named: str) -> None:
    bad = replace(prediction(0, "WALKING", WALKING), **changes)  # type: ignore[arg-type]
    with pytest.raises(PredictionRejectedError, match=named):
        monitor().observe(bad, 0.0)


def test_fleet_tracks_which_snapshots_changed_since_stored() -> None:
    """A checkpoint stores each changed device once; records that change nothing (duplicates,
    replayed traffic) leave nothing to store."""
    fleet = FleetMonitor(AlertRules(cooldown_s=0.0), _ids())  # type: ignore[arg-type]
    fleet.observe(prediction(0, "WALKING", WALKING, device="a"), 0.0)
    fleet.traffic("b", 100.0, 100.0)
    assert fleet.changed == {"a", "b"}
    fleet.stored(["a", "b"])
    assert fleet.changed == frozenset()

    fleet.observe(prediction(0, "WALKING", WALKING, device="a"), 0.0)  # a duplicate
    fleet.traffic("b", 99.0, 101.0)  # older than the newest traffic of b
    fleet.traffic("b", 100.0, 101.0)  # the same again
    assert fleet.changed == frozenset()
    assert fleet.take_duplicates() == 1

    fleet.observe(prediction(1, "WALKING", WALKING, device="a"), 0.0)
    fleet.traffic("b", 101.0, 101.0)
    fleet.stored(["a"])  # stored while b was not
    assert fleet.changed == {"b"}

    # An offline alert (a tick) and an operator's resolve both change what is stored.
    fleet.stored(["b"])
    (opened,) = fleet.tick(101.0 + AlertRules().offline_after_s, ["b"])
    assert fleet.changed == {"b"}
    fleet.stored(["b"])
    fleet.apply(fleet.plan_resolve(opened.alert, "ana", 500.0))
    assert fleet.changed == {"b"}

    # Devices restored from the store, or handed to another worker, have nothing to store.
    snapshot = fleet.snapshots(["a"])["a"]
    fleet.observe(prediction(2, "WALKING", WALKING, device="a"), 0.0)
    fleet.restore("a", snapshot)
    fleet.forget(["b"])
    assert fleet.changed == frozenset()


def test_a_rejected_prediction_changes_nothing_to_store() -> None:
    fleet = FleetMonitor(AlertRules())
    bad = prediction(0, "WALKING", replace(WALKING, movement_energy=float("nan")))
    with pytest.raises(PredictionRejectedError):
        fleet.observe(bad, 0.0)
    assert fleet.changed == frozenset()
