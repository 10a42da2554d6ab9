"""Daily activity summaries of one device in its wearer's time zone (pure).

A day is the wearer's local calendar day, ``[00:00, next 00:00)`` in the device's IANA
zone: 23 hours on the day clocks go forward, 25 when they go back. Segments crossing
midnight count with the part inside the day.

Definitions (minutes unless named otherwise):

* ``minutes``: time per activity, from the segments' slots (see
  :mod:`services.history.segments`).
* ``active``: walking, upstairs and downstairs. ``sedentary``: sitting and lying (the usual
  definition of sedentary behaviour: a sitting or reclining posture). Standing is neither.
* ``lying``: LAYING.
* ``longest_still``: the longest stretch of consecutive sitting, standing or lying
  segments (in any mix, e.g. sitting then lying), with gaps of at most ``max_gap_s``.
* ``posture_changes``: changes between the postures sit, stand and lie, walking counting as
  standing (getting up from a chair and walking away is one sit-to-stand); counted between
  consecutive segments that touch (gaps of at most ``max_gap_s``), at the moment the new
  posture starts, if that is inside the day.
* ``coverage``: minutes with data (segment time inside the day) against the minutes
  expected (the day's length, up to ``now`` for the day in progress, 0 for a future day).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime, time, timedelta
from itertools import pairwise
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from services.history.segments import Segment
from shared.activities import ACTIVITIES

ACTIVE = frozenset({"WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS"})
SEDENTARY = frozenset({"SITTING", "LAYING"})
STILL = frozenset({"SITTING", "STANDING", "LAYING"})
POSTURE = {
    "SITTING": "sit",
    "LAYING": "lie",
    "STANDING": "stand",
    "WALKING": "stand",
    "WALKING_UPSTAIRS": "stand",
    "WALKING_DOWNSTAIRS": "stand",
}


def day_bounds(day: date, tz: ZoneInfo) -> tuple[float, float]:
    """Unix seconds of the local midnight starting ``day`` and of the next one."""
    start = datetime.combine(day, time(0), tzinfo=tz)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
    return start.timestamp(), end.timestamp()


def local_day(at: float, tz: ZoneInfo) -> date:
    """The wearer's calendar day at Unix time ``at``."""
    return datetime.fromtimestamp(at, tz).date()


class Period(NamedTuple):
    start: float
    end: float

    @property
    def minutes(self) -> float:
        return (self.end - self.start) / 60.0


class DailySummary(NamedTuple):
    device_id: str
    day: date
    timezone: str
    #: Unix seconds of the day's bounds (local midnights).
    day_start: float
    day_end: float
    minutes: dict[str, float]
    active_minutes: float
    sedentary_minutes: float
    lying_minutes: float
    longest_still: Period | None
    posture_changes: int
    #: ``"sit->stand"`` etc. → count.
    posture_change_kinds: dict[str, int]
    minutes_with_data: float
    minutes_expected: float

    @property
    def coverage(self) -> float:
        """Share of the expected time with data, 0..1 (0 when nothing is expected)."""
        if self.minutes_expected <= 0:
            return 0.0
        return min(1.0, self.minutes_with_data / self.minutes_expected)

    def to_dict(self) -> dict[str, Any]:
        still = self.longest_still
        return {
            "device_id": self.device_id,
            "date": self.day.isoformat(),
            "timezone": self.timezone,
            "day_start": self.day_start,
            "day_end": self.day_end,
            "minutes": {k: round(v, 3) for k, v in self.minutes.items()},
            "active_minutes": round(self.active_minutes, 3),
            "sedentary_minutes": round(self.sedentary_minutes, 3),
            "lying_minutes": round(self.lying_minutes, 3),
            "longest_still": None
            if still is None
            else {"start": still.start, "end": still.end, "minutes": round(still.minutes, 3)},
            "posture_changes": self.posture_changes,
            "posture_change_kinds": dict(self.posture_change_kinds),
            "coverage": {
                "minutes_with_data": round(self.minutes_with_data, 3),
                "minutes_expected": round(self.minutes_expected, 3),
                "ratio": round(self.coverage, 4),
            },
        }


def _clipped(segment: Segment, start: float, end: float) -> float:
    return max(0.0, min(segment.end, end) - max(segment.start, start))


def summarize(
    device_id: str,
    segments: Iterable[Segment],
    day: date,
    tz: ZoneInfo,
    now: float,
    max_gap_s: float = 5.0,
) -> DailySummary:
    """The summary of ``day`` from ``segments`` (any order; those outside the day are
    ignored). ``now`` (Unix seconds) bounds the expected time of the day in progress."""
    day_start, day_end = day_bounds(day, tz)
    # Segments that end just before the day too: a posture change at midnight needs the
    # segment before it (their minutes clip to nothing).
    ordered = sorted(
        (s for s in segments if s.end >= day_start - max_gap_s and s.start < day_end),
        key=lambda s: (s.start, s.end),
    )
    minutes = dict.fromkeys(ACTIVITIES, 0.0)
    for segment in ordered:
        minutes[segment.activity] = (
            minutes.get(segment.activity, 0.0) + _clipped(segment, day_start, day_end) / 60.0
        )
    changes, kinds = _posture_changes(ordered, day_start, day_end, max_gap_s)
    return DailySummary(
        device_id=device_id,
        day=day,
        timezone=tz.key,
        day_start=day_start,
        day_end=day_end,
        minutes=minutes,
        active_minutes=sum(minutes[a] for a in ACTIVE),
        sedentary_minutes=sum(minutes[a] for a in SEDENTARY),
        lying_minutes=minutes["LAYING"],
        longest_still=_longest_still(ordered, day_start, day_end, max_gap_s),
        posture_changes=changes,
        posture_change_kinds=kinds,
        # Segments of one device do not overlap (the builder makes them from disjoint
        # slots), so their clipped durations add up.
        minutes_with_data=sum(_clipped(s, day_start, day_end) for s in ordered) / 60.0,
        minutes_expected=max(0.0, min(day_end, now) - day_start) / 60.0,
    )


def _longest_still(
    ordered: Sequence[Segment], day_start: float, day_end: float, max_gap_s: float
) -> Period | None:
    best: Period | None = None
    run: Period | None = None
    for segment in ordered:
        if segment.end <= day_start:
            continue
        if segment.activity not in STILL:
            run = None
            continue
        start, end = max(segment.start, day_start), min(segment.end, day_end)
        if run is not None and start - run.end <= max_gap_s:
            run = Period(run.start, max(run.end, end))
        else:
            run = Period(start, end)
        if best is None or run.end - run.start > best.end - best.start:
            best = run
    return best


def _posture_changes(
    ordered: Sequence[Segment], day_start: float, day_end: float, max_gap_s: float
) -> tuple[int, dict[str, int]]:
    kinds: dict[str, int] = {}
    for before, after in pairwise(ordered):
        if after.start - before.end > max_gap_s or not day_start <= after.start < day_end:
            continue
        old, new = POSTURE.get(before.activity), POSTURE.get(after.activity)
        if old is None or new is None or old == new:
            continue
        kind = f"{old}->{new}"
        kinds[kind] = kinds.get(kind, 0) + 1
    return sum(kinds.values()), kinds
