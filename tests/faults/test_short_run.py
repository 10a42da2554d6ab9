"""The CI form of the fault-injection suite (issue 8): the real local pipeline (Tansu, model
server, every service its own process) with 22 devices replayed at real time, one kill -9 of
each worker (the alerting kill ~15 s after a fall's impact and ~3 s after two devices went
silent) and a short broker pause; ~3 minutes. The full run is ``harstream faults --report``.

The seed is new each run (printed; ``HARSTREAM_FAULTS_SEED`` repeats one). Each test is one
check of :mod:`services.faults.counting` and prints the run's report when it fails.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.faults import counting as c
from services.faults.counting import ScenarioResult
from services.faults.report import RunInfo, render
from services.faults.runner import run_scenario
from services.faults.schedule import short_schedule
from shared.data.cache import HaptCache
from shared.data.splits import TEST_SUBJECTS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(
    hapt_cache: HaptCache, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ScenarioResult, str]]:
    seed = int(os.environ.get("HARSTREAM_FAULTS_SEED") or random.SystemRandom().randrange(1, 10**6))
    (plan,) = short_schedule(seed)
    workdir: Path = tmp_path_factory.mktemp("faults")
    result, _ = run_scenario(plan, seed, hapt_cache.load(subjects=sorted(TEST_SUBJECTS)), workdir)
    report = render(
        [result],
        [plan],
        RunInfo(seed, f"HARSTREAM_FAULTS_SEED={seed} pytest tests/faults", "-", result.wall_s, []),
    )
    print(f"fault-injection seed {seed}; logs in {workdir}\n{report}")
    yield result, f"seed {seed}, logs in {workdir}\n{report}"


def _assert(run: tuple[ScenarioResult, str], *names: str) -> None:
    result, report = run
    for name in names:
        check = result.check(name)
        assert check.passed, f"{name}: {check.detail}\n\n{report}"


def test_the_schedule_injected_every_fault(run: tuple[ScenarioResult, str]) -> None:
    result, report = run
    kinds = sorted(result.faults)
    assert kinds == sorted(
        ["kill -9 preprocess", "kill -9 alerting", "kill -9 inference", "pause broker 6 s"]
    ), report
    assert result.devices >= 20
    # Injection errors (a service that did not come back) are notes named after the fault.
    assert not [n for n in result.notes if n.startswith(tuple(result.faults))], report


def test_every_accepted_packet_is_on_the_raw_topic(run: tuple[ScenarioResult, str]) -> None:
    result, report = run
    assert result.packets_accepted > 1500, report  # ~22 devices x ~100 s
    _assert(run, c.PACKETS)


def test_no_window_is_lost(run: tuple[ScenarioResult, str]) -> None:
    result, report = run
    assert result.windows_expected > 1000, report
    _assert(run, c.WINDOWS_LOST)


def test_duplicate_windows_are_identical_and_none_is_off_the_grid(
    run: tuple[ScenarioResult, str],
) -> None:
    _assert(run, c.WINDOWS_CONSISTENT, c.WINDOWS_UNEXPECTED)


def test_the_fall_raises_exactly_once_across_an_alerting_kill(
    run: tuple[ScenarioResult, str],
) -> None:
    _assert(run, c.FALL_ONCE, c.NO_FALSE_FALL)


def test_silent_devices_go_offline_exactly_once_across_an_alerting_kill(
    run: tuple[ScenarioResult, str],
) -> None:
    _assert(run, c.OFFLINE_ONCE)


def test_no_device_is_offline_while_it_is_sending(run: tuple[ScenarioResult, str]) -> None:
    _assert(run, c.NO_FALSE_OFFLINE, c.PIPELINE_ALERTS)


def test_every_alert_event_is_notified_under_its_own_key(run: tuple[ScenarioResult, str]) -> None:
    _assert(run, c.NOTIFIED, c.ONE_KEY, c.PUBLISHED)


def test_the_flow_recovers_after_every_fault(run: tuple[ScenarioResult, str]) -> None:
    _assert(run, c.RECOVERED)
