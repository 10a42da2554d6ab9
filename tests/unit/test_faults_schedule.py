"""The fault schedule: seeded, valid, and placed where issue 8's bugs would show."""

from __future__ import annotations

import itertools
import random

import pytest

from services.faults.schedule import (
    FALL_TAIL_S,
    Fault,
    FaultKind,
    ScenarioPlan,
    ScheduleError,
    Silence,
    _away_from,
    full_schedule,
    scenario_names,
    select,
    short_schedule,
)


def test_same_seed_same_schedule_other_seed_other_moments() -> None:
    assert full_schedule(3) == full_schedule(3)
    assert short_schedule(3) == short_schedule(3)
    moments = {tuple(f.at_s for p in full_schedule(s) for f in p.faults) for s in range(5)}
    assert len(moments) == 5


def test_full_schedule_has_every_scenario_of_issue_8() -> None:
    plans = {p.name: p for p in full_schedule(0)}
    assert list(plans) == [
        "kill-preprocess",
        "kill-inference",
        "kill-alerting",
        "pause-modelserver",
        "pause-broker",
        "rebalance-preprocess",
        "rebalance-alerting",
        "webhook-down",
    ]
    for target in ("preprocess", "inference", "alerting"):
        kills = plans[f"kill-{target}"].faults
        assert len(kills) >= 3
        assert {(f.kind, f.target) for f in kills} == {(FaultKind.KILL, target)}
    assert plans["pause-modelserver"].faults[0].duration_s == 60
    assert plans["pause-broker"].faults[0].duration_s == 30
    assert plans["webhook-down"].faults[0].duration_s == 120
    for target in ("preprocess", "alerting"):
        kinds = [f.kind for f in plans[f"rebalance-{target}"].faults]
        assert kinds == [FaultKind.JOIN, FaultKind.LEAVE]
    for plan in plans.values():
        assert plan.falls and plan.silences, plan.name


@pytest.mark.parametrize("seed", range(20))
def test_kills_hit_a_fall_confirmation_and_a_fresh_silence(seed: int) -> None:
    for plan in full_schedule(seed)[:3]:
        (impact,) = plan.falls
        (silence,) = plan.silences
        moments = sorted(f.at_s for f in plan.faults)
        # during the 30 s confirmation (~15 s after the impact)
        assert any(12 <= t - impact <= 18 for t in moments), (plan.name, moments, impact)
        # after the devices went silent, before their 10 s offline threshold
        assert any(1 <= t - silence.at_s <= 5 for t in moments), (plan.name, moments, silence)
        # a worker is back before it is killed again
        assert all(b - a >= 29.9 for a, b in itertools.pairwise(moments)), moments


@pytest.mark.parametrize("seed", range(20))
def test_short_schedule_kills_each_worker_once_and_pauses_the_broker(seed: int) -> None:
    (plan,) = short_schedule(seed)
    assert sorted((f.kind, f.target) for f in plan.faults) == sorted(
        [
            (FaultKind.KILL, "preprocess"),
            (FaultKind.KILL, "inference"),
            (FaultKind.KILL, "alerting"),
            (FaultKind.PAUSE, "broker"),
        ]
    )
    alerting = next(f for f in plan.faults if f.target == "alerting")
    assert 12 <= alerting.at_s - plan.falls[0] <= 18
    assert 0 < alerting.at_s - plan.silences[0].at_s < 10
    assert plan.duration_s <= 130  # the CI form must stay short


@pytest.mark.parametrize("seed", range(10))
def test_rebalances_follow_silences_and_fall_inside_confirmations(seed: int) -> None:
    for plan in full_schedule(seed)[5:7]:
        for fault in plan.faults:
            assert any(12 <= fault.at_s - t <= 18 for t in plan.falls)
            assert any(2 <= fault.at_s - s.at_s <= 5 for s in plan.silences)


def test_every_fault_ends_before_its_replay_and_every_fall_has_time_to_confirm() -> None:
    for seed in range(50):
        for plan in full_schedule(seed) + short_schedule(seed):
            assert all(f.end_s <= plan.duration_s for f in plan.faults)
            assert all(t + FALL_TAIL_S <= plan.duration_s for t in plan.falls)


def test_invalid_plans_are_refused() -> None:
    with pytest.raises(ScheduleError, match="cannot kill broker"):
        Fault(10, FaultKind.KILL, "broker")
    with pytest.raises(ScheduleError, match="duration"):
        Fault(10, FaultKind.PAUSE, "modelserver")
    with pytest.raises(ScheduleError, match="ends after the replay"):
        ScenarioPlan("x", 100, (Fault(90, FaultKind.PAUSE, "broker", 30),))
    with pytest.raises(ScheduleError, match="before it joined"):
        ScenarioPlan("x", 100, (Fault(10, FaultKind.LEAVE, "alerting"),))
    with pytest.raises(ScheduleError, match="out of order"):
        ScenarioPlan(
            "x", 100, (Fault(20, FaultKind.KILL, "alerting"), Fault(10, FaultKind.KILL, "alerting"))
        )
    with pytest.raises(ScheduleError, match="fall at 80"):
        ScenarioPlan("x", 100, (), falls=(80,))
    with pytest.raises(ScheduleError, match="silence at 90"):
        ScenarioPlan("x", 100, (), silences=(Silence(90),))


def test_away_from_keeps_its_distance_and_fails_when_nothing_is_free() -> None:
    rng = random.Random(1)
    for _ in range(200):
        t = _away_from(rng, 0, 100, (30, 60), gap=20)
        assert 0 <= t <= 100
        assert abs(t - 30) >= 19.95 and abs(t - 60) >= 19.95
    with pytest.raises(ScheduleError):
        _away_from(rng, 0, 50, (25,), gap=30)


def test_select_by_name() -> None:
    plans = full_schedule(0)
    assert [p.name for p in select(plans, ["pause-broker", "kill-alerting"])] == [
        "kill-alerting",
        "pause-broker",
    ]
    assert select(plans, []) == plans
    assert scenario_names() == [p.name for p in plans]
    with pytest.raises(ScheduleError, match="unknown scenario"):
        select(plans, ["nope"])


def test_labels() -> None:
    assert Fault(1, FaultKind.KILL, "alerting").label == "kill -9 alerting"
    assert Fault(1, FaultKind.PAUSE, "broker", 30).label == "pause broker 30 s"
    assert Fault(1, FaultKind.JOIN, "preprocess").label == "preprocess-2 joins"
    assert Fault(1, FaultKind.DOWN, "webhook", 120).label == "webhook down 120 s"
    assert not Fault(1, FaultKind.DOWN, "webhook", 120).stalls_flow
