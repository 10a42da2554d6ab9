"""Counting a fault-injection run: each check passes on a faultless record and fails on the
one defect it is about."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.faults import counting as c
from services.faults.records import PredictionRecord, RawRecord, WindowRecord
from services.faults.schedule import FaultKind
from tests.unit.faults_helpers import T0, alert, clean, delivery, fault


def test_a_clean_run_passes_every_check() -> None:
    result = c.count(clean())
    assert result.passed, [x for x in result.checks if not x.passed]
    assert (result.packets_accepted, result.packets_missing) == (250, 0)
    assert (result.windows_expected, result.windows_predicted, result.windows_lost) == (192, 192, 0)
    assert (result.falls_expected, result.falls_raised) == (1, 1)
    assert (result.offline_expected, result.offline_raised, result.false_offline) == (1, 1, 0)
    assert (result.alert_events, result.notified_events, result.repeated_keys) == (2, 2, 0)


def test_an_accepted_packet_missing_from_the_raw_topic_fails() -> None:
    obs = clean()
    obs.raw = [r for r in obs.raw if (r.device_id, r.seq) != ("steady", 7)]
    result = c.count(obs)
    assert result.packets_missing == 1
    assert not result.check(c.PACKETS).passed
    assert "steady:7" in result.check(c.PACKETS).detail


def test_extra_raw_records_of_retried_packets_are_allowed() -> None:
    obs = clean()
    obs.raw += obs.raw[:5]
    assert c.count(obs).check(c.PACKETS).passed


def test_lost_windows_fail_and_name_item_5_after_a_preprocess_kill() -> None:
    obs = clean([fault(20, FaultKind.KILL, "preprocess")])
    obs.predictions = [p for p in obs.predictions if p.window_id not in {"steady:64", "steady:128"}]
    obs.windows = [w for w in obs.windows if w.window_id != "steady:64"]
    result = c.count(obs)
    assert (result.windows_lost, result.windows_not_made) == (2, 1)
    check = result.check(c.WINDOWS_LOST)
    assert not check.passed
    assert check.known_issue is not None and check.known_issue.startswith("item 5")
    assert "after kill -9 preprocess" in check.known_issue
    moved = replace(obs, faults=[fault(20, FaultKind.JOIN, "preprocess")])
    assert "after preprocess-2 joins" in str(c.count(moved).check(c.WINDOWS_LOST).known_issue)
    elsewhere = replace(obs, faults=[fault(20, FaultKind.KILL, "inference")])
    assert c.count(elsewhere).check(c.WINDOWS_LOST).known_issue is None


def test_duplicate_predictions_are_allowed_but_differing_duplicates_are_not() -> None:
    obs = clean()
    obs.predictions += obs.predictions[:10]
    obs.windows += [obs.windows[0]]
    result = c.count(obs)
    assert result.duplicate_predictions == 10
    assert result.duplicate_windows == 1
    assert result.passed
    obs.windows += [obs.windows[1]._replace(digest="other")]
    assert not c.count(obs).check(c.WINDOWS_CONSISTENT).passed


def test_a_window_off_the_grid_is_unexpected() -> None:
    obs = clean()
    obs.windows.append(WindowRecord("steady:100", "steady", "x"))
    obs.predictions.append(PredictionRecord("steady:100", "steady", T0 + 5, T0 + 5.1))
    result = c.count(obs)
    assert result.unexpected_windows == 1
    assert not result.check(c.WINDOWS_UNEXPECTED).passed


def test_other_devices_on_the_topics_are_ignored() -> None:
    obs = clean()
    obs.raw.append(RawRecord("someone-else", 0, T0))
    obs.predictions.append(PredictionRecord("someone-else:0", "someone-else", T0, T0))
    assert c.count(obs).passed


def test_a_missed_fall_fails_and_names_item_1_after_an_alerting_kill_in_its_confirmation() -> None:
    obs = clean([fault(45, FaultKind.KILL, "alerting")])
    obs.alerts = [a for a in obs.alerts if a.type != c.FALL]
    obs.deliveries = [d for d in obs.deliveries if d.type != c.FALL]
    check = c.count(obs).check(c.FALL_ONCE)
    assert not check.passed
    assert "missed on fall-1" in check.detail
    assert check.known_issue is not None and check.known_issue.startswith("item 1")
    # A kill long after the fall's confirmation is not item 1.
    late = replace(obs, faults=[fault(90, FaultKind.KILL, "alerting")])
    assert c.count(late).check(c.FALL_ONCE).known_issue is None


def test_a_second_fall_alert_for_one_fall_fails() -> None:
    obs = clean()
    again = alert("a-fall-2", "fall-1", c.FALL, 75)
    obs.alerts.append(again)
    obs.deliveries.append(delivery(again, 75.1))
    check = c.count(obs).check(c.FALL_ONCE)
    assert not check.passed
    assert "fall-1 (2)" in check.detail


def test_a_fall_only_seen_on_the_webhook_still_counts_as_raised() -> None:
    obs = clean()
    obs.alerts = [a for a in obs.alerts if a.type != c.FALL]
    result = c.count(obs)
    assert result.check(c.FALL_ONCE).passed
    assert not result.check(c.PUBLISHED).passed


def test_a_fall_on_a_device_that_did_not_fall_is_false() -> None:
    obs = clean()
    obs.alerts.append(alert("a-x", "steady", c.FALL, 40))
    obs.deliveries.append(delivery(obs.alerts[-1], 40.1))
    result = c.count(obs)
    assert result.false_falls == 1
    assert not result.check(c.NO_FALSE_FALL).passed


def test_a_silent_device_without_offline_fails_and_names_item_2_after_an_alerting_kill() -> None:
    obs = clean([fault(53, FaultKind.KILL, "alerting")])
    obs.alerts = [a for a in obs.alerts if a.type != c.OFFLINE]
    obs.deliveries = [d for d in obs.deliveries if d.type != c.OFFLINE]
    check = c.count(obs).check(c.OFFLINE_ONCE)
    assert not check.passed
    assert check.known_issue is not None and check.known_issue.startswith("item 2")


def test_two_offline_alerts_for_one_silence_fail() -> None:
    obs = clean()
    again = alert("a-off-2", "silent-1", c.OFFLINE, 80)
    obs.alerts.append(again)
    obs.deliveries.append(delivery(again, 80.1))
    assert not c.count(obs).check(c.OFFLINE_ONCE).passed


def test_offline_while_a_device_is_still_sending_is_false_and_names_item_3_after_a_stall() -> None:
    obs = clean([fault(20, FaultKind.PAUSE, "modelserver", 60)])
    for i, device in enumerate(("steady", "fall-1")):
        record = alert(f"a-false-{i}", device, c.OFFLINE, 31 + i)
        obs.alerts.append(record)
        obs.deliveries.append(delivery(record, 31.1 + i))
    result = c.count(obs)
    assert (result.false_offline, result.false_offline_devices) == (2, 2)
    check = result.check(c.NO_FALSE_OFFLINE)
    assert not check.passed
    assert "opened 31.0-32.0 s after the start, after pause modelserver 60 s at 20.0 s" in (
        check.detail
    )
    assert check.known_issue is not None and check.known_issue.startswith("item 3")


def test_offline_after_a_device_stopped_is_not_false() -> None:
    obs = clean()
    end = alert("a-end", "steady", c.OFFLINE, 111)  # 11 s after its last packet
    obs.alerts.append(end)
    obs.deliveries.append(delivery(end, 111.1))
    assert c.count(obs).passed


def test_offline_of_a_silent_device_before_it_went_silent_is_false() -> None:
    obs = clean()
    early = alert("a-early", "silent-1", c.OFFLINE, 30)
    obs.alerts.append(early)
    obs.deliveries.append(delivery(early, 30.1))
    result = c.count(obs)
    assert not result.check(c.NO_FALSE_OFFLINE).passed
    assert result.check(c.OFFLINE_ONCE).passed


def test_every_event_must_be_notified_repeats_of_a_key_are_allowed() -> None:
    obs = clean()
    obs.deliveries.append(obs.deliveries[0])
    result = c.count(obs)
    assert result.repeated_keys == 1
    assert result.passed
    obs.deliveries = [d for d in obs.deliveries if d.type != c.OFFLINE]
    result = c.count(obs)
    assert not result.check(c.NOTIFIED).passed
    assert "a-off:opened" in result.check(c.NOTIFIED).detail


def test_an_event_delivered_under_another_key_fails() -> None:
    obs = clean()
    obs.deliveries.append(delivery(obs.alerts[0], 71, key="something-else"))
    assert not c.count(obs).check(c.ONE_KEY).passed


def test_resolved_events_need_their_own_notification() -> None:
    obs = clean()
    resolved = obs.alerts[1]._replace(state="resolved")
    obs.alerts.append(resolved)
    result = c.count(obs)
    assert not result.check(c.NOTIFIED).passed
    obs.deliveries.append(delivery(resolved, 90))
    assert c.count(obs).check(c.NOTIFIED).passed


@pytest.mark.parametrize(("raised", "ok"), [(0, True), (1, True), (2, False)])
def test_pipeline_alerts_at_most_one_per_stall(raised: int, ok: bool) -> None:
    obs = clean([fault(20, FaultKind.KILL, "inference")])
    for i in range(raised):
        record = alert(f"p{i}", "*pipeline", c.PIPELINE, 40 + i)
        obs.alerts.append(record)
        obs.deliveries.append(delivery(record, 40.1 + i))
    result = c.count(obs)
    assert result.pipeline_alerts == raised
    assert result.check(c.PIPELINE_ALERTS).passed is ok


def test_a_model_server_pause_beyond_the_stall_threshold_must_raise_a_pipeline_alert() -> None:
    obs = clean([fault(20, FaultKind.PAUSE, "modelserver", 60)], pipeline_stall_s=30.0)
    assert not c.count(obs).check(c.PIPELINE_ALERTS).passed
    record = alert("p", "*pipeline", c.PIPELINE, 55)
    obs.alerts.append(record)
    obs.deliveries.append(delivery(record, 55.1))
    assert c.count(obs).check(c.PIPELINE_ALERTS).passed
    # Without the rule (older alerting), none is required.
    assert c.count(clean([fault(20, FaultKind.PAUSE, "modelserver", 60)])).passed


def test_recovery_is_the_first_prediction_of_a_packet_accepted_after_thefault() -> None:
    obs = clean([fault(20, FaultKind.PAUSE, "broker", 30)])
    (recovery,) = c.count(obs).recoveries
    # fault ends at 50.05; next ingested_at >= 50.05 is window 1664/50 + 2.6 = 35.88 +...
    after = min(p.produced_at for p in obs.predictions if p.ingested_at >= T0 + 50.05)
    assert recovery.seconds == pytest.approx(after - (T0 + 50.05))


def test_no_fresh_prediction_after_a_broker_pause_never_recovers_item_4() -> None:
    obs = clean([fault(60, FaultKind.PAUSE, "broker", 30)])
    obs.predictions = [p for p in obs.predictions if p.ingested_at < T0 + 60]
    obs.expected_windows = {p.window_id for p in obs.predictions}
    result = c.count(obs)
    check = result.check(c.RECOVERED)
    assert not check.passed
    assert result.recoveries[0].seconds is None
    assert check.known_issue is not None and check.known_issue.startswith("item 4")


def test_alerting_and_webhook_recovery_come_from_the_controller() -> None:
    kill = fault(20, FaultKind.KILL, "alerting")
    kill.recovered_at = kill.ended_at + 7.5
    down = fault(30, FaultKind.DOWN, "webhook", 20)  # nothing to deliver after: no recovery
    result = c.count(clean([kill, down]))
    assert [r.seconds for r in result.recoveries] == [pytest.approx(7.5), None]
    assert result.check(c.RECOVERED).passed
    kill.recovered_at = None
    assert not c.count(clean([kill])).check(c.RECOVERED).passed


def test_a_missed_offline_after_a_false_one_says_so() -> None:
    obs = clean()
    obs.alerts = [a for a in obs.alerts if a.type != c.OFFLINE]
    obs.deliveries = [d for d in obs.deliveries if d.type != c.OFFLINE]
    early = alert("a-early", "silent-1", c.OFFLINE, 30)
    obs.alerts.append(early)
    obs.deliveries.append(delivery(early, 30.1))
    detail = c.count(obs).check(c.OFFLINE_ONCE).detail
    assert "missed on silent-1 (after a false one at 30.0 s)" in detail
