"""Daily summaries in the wearer's time zone: minutes per activity, active/sedentary/lying,
the longest still stretch, posture changes and coverage, on ordinary and DST days."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.history.segments import Segment
from services.history.summary import STILL, day_bounds, local_day, summarize
from shared.activities import ACTIVITIES

UTC = ZoneInfo("UTC")
PARIS = ZoneInfo("Europe/Paris")
DAY = date(2026, 11, 30)


def at(hour: int, minute: int = 0, tz: ZoneInfo = UTC, day: date = DAY) -> float:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz).timestamp()


def seg(start: float, end: float, activity: str, version: int = 1) -> Segment:
    windows = max(1, round((end - start) / 1.28))
    return Segment("dev-1", start, end, activity, version, windows, 0.8 * windows)


def test_a_day_in_utc() -> None:
    segments = [
        seg(at(7), at(7, 30), "LAYING"),
        seg(at(7, 30), at(8), "SITTING"),  # lie -> sit
        seg(at(8), at(8, 20), "WALKING"),  # sit -> stand (walking is upright)
        seg(at(8, 20), at(9), "STANDING"),  # stand -> stand: no change
        seg(at(9), at(11), "SITTING"),  # stand -> sit
        seg(at(12), at(12, 10), "WALKING_UPSTAIRS"),  # an hour's gap: not a change
    ]
    summary = summarize("dev-1", segments, DAY, UTC, now=at(23, 59) + 3600)
    assert summary.minutes["LAYING"] == pytest.approx(30)
    assert summary.minutes["SITTING"] == pytest.approx(150)
    assert summary.minutes["WALKING_DOWNSTAIRS"] == 0
    assert summary.active_minutes == pytest.approx(30)
    assert summary.sedentary_minutes == pytest.approx(180)
    assert summary.lying_minutes == pytest.approx(30)
    # 07:00-08:00 lying then sitting (60 min) vs 08:20-11:00 standing then sitting (160).
    assert summary.longest_still is not None
    assert (summary.longest_still.start, summary.longest_still.end) == (at(8, 20), at(11))
    assert summary.posture_changes == 3
    assert summary.posture_change_kinds == {"lie->sit": 1, "sit->stand": 1, "stand->sit": 1}
    assert summary.minutes_with_data == pytest.approx(250)
    assert summary.minutes_expected == pytest.approx(1440)
    doc = summary.to_dict()
    assert doc["date"] == "2026-11-30" and doc["timezone"] == "UTC"
    assert doc["coverage"]["ratio"] == pytest.approx(250 / 1440, abs=1e-4)
    assert set(doc["minutes"]) == set(ACTIVITIES)


def test_segments_crossing_midnight_count_their_part_of_the_day() -> None:
    segments = [
        seg(at(23) - 86_400, at(1), "LAYING"),  # 23:00 the day before to 01:00
        seg(at(23, 30), at(1) + 86_400, "LAYING"),  # 23:30 to 01:00 the day after
    ]
    summary = summarize("dev-1", segments, DAY, UTC, now=at(12) + 86_400)
    assert summary.minutes["LAYING"] == pytest.approx(90)
    assert summary.longest_still is not None and summary.longest_still.minutes == 60


def test_the_day_in_progress_expects_data_up_to_now_and_a_future_day_none() -> None:
    summary = summarize("dev-1", [], DAY, UTC, now=at(6))
    assert summary.minutes_expected == pytest.approx(360)
    assert summary.coverage == 0 and summary.longest_still is None
    future = summarize("dev-1", [], date(2026, 12, 2), UTC, now=at(6))
    assert future.minutes_expected == 0 and future.coverage == 0


@pytest.mark.parametrize(
    ("day", "hours"),
    [
        (date(2026, 3, 29), 23),  # clocks go forward in Europe/Paris: 02:00 -> 03:00
        (date(2026, 10, 25), 25),  # back: 03:00 -> 02:00
        (date(2026, 6, 1), 24),
    ],
)
def test_dst_days_have_their_own_length(day: date, hours: int) -> None:
    start, end = day_bounds(day, PARIS)
    assert end - start == hours * 3600
    # Lying all day long, one segment from the day before to the day after.
    summary = summarize("dev-1", [seg(start - 7200, end + 7200, "LAYING")], day, PARIS, end + 1)
    assert summary.minutes["LAYING"] == pytest.approx(hours * 60)
    assert summary.minutes_expected == pytest.approx(hours * 60)
    assert summary.coverage == 1.0


def test_the_local_day_is_not_the_utc_day() -> None:
    """01:30 in Paris on Nov 30 is 00:30 UTC: Nov 30 in both; 23:30 UTC on Nov 30 is
    00:30 in Paris on Dec 1."""
    late = at(23, 30)
    assert local_day(late, UTC) == DAY
    assert local_day(late, PARIS) == date(2026, 12, 1)
    segments = [seg(late, late + 1800, "WALKING")]
    assert summarize("dev-1", segments, DAY, UTC, late + 7200).minutes["WALKING"] == 30
    paris_day = summarize("dev-1", segments, DAY, PARIS, late + 7200)
    # Paris's Nov 30 ended at 23:00 UTC: none of it.
    assert paris_day.minutes["WALKING"] == 0
    assert summarize("dev-1", segments, date(2026, 12, 1), PARIS, late + 7200).minutes[
        "WALKING"
    ] == pytest.approx(30)


def test_posture_change_at_the_day_start_counts_on_that_day() -> None:
    segments = [seg(at(23) - 86_400, at(0), "LAYING"), seg(at(0), at(0, 30), "STANDING")]
    summary = summarize("dev-1", segments, DAY, UTC, at(12))
    assert summary.posture_change_kinds == {"lie->stand": 1}


@st.composite
def days_of_segments(draw: st.DrawFn) -> list[Segment]:
    """Disjoint segments of one device around DAY."""
    t = at(0) - 3 * 3600
    out = []
    for _ in range(draw(st.integers(0, 40))):
        t += draw(st.floats(0, 3600))
        length = draw(st.floats(1.28, 4 * 3600))
        out.append(seg(t, t + length, draw(st.sampled_from(ACTIVITIES))))
        t += length
    return out


def test_a_still_stretch_bridges_short_gaps_so_it_can_outlast_its_data() -> None:
    # Found by test_minutes_add_up: standing across midnight, a 1.5 s gap, then sitting.
    midnight = at(0)
    segments = [
        seg(midnight - 2, midnight + 0.5, "STANDING"),
        seg(midnight + 2, midnight + 4, "SITTING"),
    ]
    summary = summarize("dev-1", segments, DAY, UTC, now=midnight + 86_400)
    assert summary.minutes_with_data * 60 == pytest.approx(2.5)
    still = summary.longest_still
    assert still is not None and (still.start, still.end) == (midnight, midnight + 4)


@settings(max_examples=200, deadline=None)
@given(days_of_segments(), st.sampled_from([UTC, PARIS, ZoneInfo("America/New_York")]))
def test_minutes_add_up(segments: list[Segment], tz: ZoneInfo) -> None:
    summary = summarize("dev-1", segments, DAY, tz, now=at(0) + 3 * 86_400)
    total = sum(summary.minutes.values())
    assert total == pytest.approx(summary.minutes_with_data)
    assert total <= summary.minutes_expected + 1e-6
    assert summary.active_minutes + summary.sedentary_minutes + summary.minutes[
        "STANDING"
    ] == pytest.approx(total)
    still = summary.longest_still
    if still is not None:
        assert summary.day_start <= still.start < still.end <= summary.day_end
        inside = [s for s in segments if s.start < still.end and s.end > still.start]
        assert inside and all(s.activity in STILL for s in inside)
        covered = sum(min(s.end, still.end) - max(s.start, still.start) for s in inside)
        # A still stretch bridges gaps of up to max_gap_s (5 s) between its segments, so
        # it may outlast the data in it by that much per gap, and no more.
        assert still.end - still.start <= covered + 5.0 * (len(inside) - 1) + 1e-6
    # Order of the input does not matter.
    assert summarize("dev-1", segments[::-1], DAY, tz, now=at(0) + 3 * 86_400) == summary
