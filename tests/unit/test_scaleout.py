"""The scale-out benchmark's arithmetic (benchmarks.scaleout): which part of a drain counts,
and what it is divided by."""

from __future__ import annotations

import math

import pytest

from benchmarks.scaleout import Poll, StageResult, markdown, sustained


def _polls() -> list[Poll]:
    # 1,000 items: a slow join (0 → 50 in 2 s), then 100/s, then a slow tail.
    points = [(0, 0), (2, 50), (3, 100), (4, 200), (11, 900), (12, 950), (20, 1000)]
    return [
        Poll(t, done, {"preprocess": 0.5 * t, "preprocess-2": 0.25 * t, "broker": 0.1 * t})
        for t, done in points
    ]


def test_the_rate_counts_only_the_drain_between_10_and_90_percent() -> None:
    rate, cpu, per_cpu = sustained(_polls(), 1000, ["preprocess", "preprocess-2"])
    # First polls at or past 100 (t=3) and 900 (t=11): 800 items in 8 s.
    assert rate == pytest.approx(100.0)
    assert cpu == pytest.approx({"preprocess": 0.5, "preprocess-2": 0.25, "broker": 0.1})
    # Per CPU-second of the stage's own workers, the broker left out.
    assert per_cpu == pytest.approx(100 / 0.75)


def test_a_drain_too_quick_to_measure_is_an_error_not_a_figure() -> None:
    polls = [Poll(0, 0, {}), Poll(1, 1000, {})]
    with pytest.raises(ValueError, match="too quick"):
        sustained(polls, 1000, ["preprocess"])


def test_no_worker_cpu_gives_no_per_cpu_figure() -> None:
    polls = [Poll(0, 0, {}), Poll(1, 500, {}), Poll(2, 1000, {})]
    assert math.isnan(sustained(polls, 1000, ["inference"])[2])


def test_the_table_compares_each_count_with_the_fewest_workers() -> None:
    results = [
        StageResult("preprocess", 1, 1000, 400.0, {"preprocess": 0.8, "broker": 0.3}, 500.0, 3.0),
        StageResult(
            "preprocess", 2, 1000, 600.0, {"preprocess": 0.6, "preprocess-2": 0.6}, 500.0, 2.0
        ),
    ]
    rows = markdown(results).splitlines()
    assert rows[2].split("|")[5].strip() == "1.00"
    assert rows[3].split("|")[5].strip() == "1.50"
    assert rows[3].split("|")[6].strip() == "1.20"
