"""Pure helpers of alerting: rule checks, lifecycle, webhook backoff, settings (no I/O)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import time

import pytest
from pydantic import ValidationError

from services.alerting.lifecycle import (
    AlertEvent,
    InvalidTransitionError,
    acknowledge,
    open_alert,
    resolve,
)
from services.alerting.monitor import DeviceMonitor
from services.alerting.rules import AlertRules, smoothed_activity
from services.alerting.settings import AlertingSettings
from services.alerting.store import webhook_body
from services.alerting.webhooks import Outcome, classify, parse_retry_after
from shared.messages import AlertState, AlertType, Severity
from tests.unit.alerting_helpers import LYING_STILL, WALKING, prediction, probs


def test_smoothed_activity_is_the_argmax_of_mean_probabilities() -> None:
    assert smoothed_activity([probs("LAYING"), probs("LAYING"), probs("WALKING")]) == "LAYING"
    confident_walk = probs("WALKING", 0.99)
    unsure_lying = probs("LAYING", 0.4)
    assert smoothed_activity([confident_walk, unsure_lying, unsure_lying]) == "WALKING"


def test_sensor_fault_kinds() -> None:
    rules = AlertRules()
    healthy = prediction(0, "WALKING", WALKING)
    assert rules.sensor_faults(healthy) == []
    assert rules.sensor_faults(prediction(0, "LAYING", LYING_STILL)) == []
    stuck = prediction(0, "LAYING", replace(LYING_STILL, acc_std_g=5e-6))
    assert rules.sensor_faults(stuck) == ["flatline"]
    both = prediction(0, "WALKING", replace(WALKING, max_abs_acc_g=8.0, max_abs_gyro=35.0))
    assert rules.sensor_faults(both) == ["acc_saturation", "gyro_saturation"]
    # Miscalibrated: reads 0.5 g while still. Moving windows are never judged on gravity.
    low = replace(LYING_STILL, peak_acc_g=0.52, min_acc_g=0.48)
    assert rules.sensor_faults(prediction(0, "LAYING", low)) == ["implausible_gravity"]
    moving_low = replace(low, movement_energy=0.05)
    assert rules.sensor_faults(prediction(0, "WALKING", moving_low)) == []
    off = AlertRules(gravity_tolerance_g=0)
    assert off.sensor_faults(prediction(0, "LAYING", low)) == []


def test_a_silent_gyroscope_is_a_fault_unless_the_check_is_off() -> None:
    rules = AlertRules()
    silent = prediction(0, "SITTING", replace(WALKING, gyro_std_rad_s=0.0, max_abs_gyro=0.0))
    assert rules.sensor_faults(silent) == ["gyro_flatline"]
    # Messages written before the feature existed carry none: nothing to judge.
    older = prediction(0, "SITTING", replace(WALKING, gyro_std_rad_s=None))
    assert rules.sensor_faults(older) == []
    assert AlertRules(gyro_flatline_std_rad_s=0).sensor_faults(silent) == []


def test_day_hours_may_span_midnight() -> None:
    night_shift = AlertRules(day_start=time(22, 0), day_end=time(6, 0))
    assert night_shift.in_day_hours(1_705_356_000.0 + 3600)  # 23:00 UTC
    assert not night_shift.in_day_hours(1_705_312_800.0)  # 10:00 UTC


def test_rules_reject_nonsense() -> None:
    with pytest.raises(ValidationError):
        AlertRules(fall_confirm_s=0)
    with pytest.raises(ValidationError):
        AlertRules(smoothing_windows=0)
    with pytest.raises(ValidationError):
        AlertRules(fall_confirm_s_typo=3)  # type: ignore[call-arg]


def test_lifecycle_steps() -> None:
    opened = open_alert("dev-9", AlertType.SENSOR_FAULT, "flat", 10.0, {"faults": ["flatline"]})
    assert opened.event is AlertEvent.OPENED
    assert opened.alert.severity is Severity.WARNING
    assert opened.idempotency_key == f"{opened.alert.alert_id}:opened"
    other = open_alert("dev-9", AlertType.SENSOR_FAULT, "flat", 10.0, {})
    assert other.alert.alert_id != opened.alert.alert_id
    acked = acknowledge(opened.alert, "oncall", 11.0)
    assert acked is not None
    assert acked.alert.state is AlertState.ACKNOWLEDGED
    assert acknowledge(acked.alert, "oncall", 12.0) is None
    done = resolve(acked.alert, "auto", 13.0, "3 healthy windows")
    assert done.alert.details == {
        "faults": ["flatline"],
        "acknowledged_at": 11.0,
        "resolved_by": "auto",
        "resolved_at": 13.0,
        "resolution": "3 healthy windows",
    }
    with pytest.raises(InvalidTransitionError):
        acknowledge(done.alert, "oncall", 14.0)
    with pytest.raises(InvalidTransitionError):
        resolve(done.alert, "oncall", 14.0, "again")


def test_a_human_resolve_starts_the_cooldown_too() -> None:
    m = DeviceMonitor("dev-1", AlertRules(cooldown_s=100.0))
    m.traffic(0.0, 0.0)
    (opened,) = m.tick(300.0)
    step = m.plan_resolve(opened.alert, "oncall", 310.0, "replaced battery")
    assert AlertType.DEVICE_OFFLINE in m.active  # planned, not applied yet
    m.apply(step)
    assert AlertType.DEVICE_OFFLINE not in m.active
    assert m.tick(400.0) == []  # still silent, but within 100 s of the resolve
    assert [s.event for s in m.tick(410.0)] == [AlertEvent.OPENED]


def test_webhook_body_shape() -> None:
    opened = open_alert("dev-9", AlertType.FALL_SUSPECTED, "impact", 10.0, {"impact_g": 3.1})
    body = json.loads(webhook_body(opened))
    assert body["event"] == "opened"
    assert body["alert"] == opened.alert.to_dict()


def test_retry_after_header() -> None:
    assert parse_retry_after("120", now=0.0) == 120.0
    assert parse_retry_after(None, now=0.0) is None
    assert parse_retry_after("soon", now=0.0) is None
    when = parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1_445_412_470.0)
    assert when == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DELIVERED),
        (204, Outcome.DELIVERED),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (503, Outcome.RETRY),
        (408, Outcome.RETRY),
        (400, Outcome.FAILED),
        (404, Outcome.FAILED),
        (410, Outcome.FAILED),
    ],
)
def test_classify_status(status: int, outcome: Outcome) -> None:
    assert classify(status) is outcome


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARSTREAM_ALERTING_PORT", "9099")
    monkeypatch.setenv("HARSTREAM_ALERTING_WEBHOOK_URLS", "http://a/hook, http://b/hook,")
    monkeypatch.setenv("HARSTREAM_ALERTING_RULES__FALL_CONFIRM_S", "45")
    monkeypatch.setenv("HARSTREAM_ALERTING_RULES__TIMEZONE", "Europe/Lisbon")
    monkeypatch.setenv("XDG_DATA_HOME", "/var/lib/x")
    settings = AlertingSettings()
    assert settings.port == 9099
    assert settings.webhook_url_list == ["http://a/hook", "http://b/hook"]
    assert settings.rules.fall_confirm_s == 45.0
    assert settings.rules.timezone == "Europe/Lisbon"
    assert settings.rules.fall_impact_g == 2.2
    assert settings.store_url == "sqlite:////var/lib/x/harstream/alerts.db"
