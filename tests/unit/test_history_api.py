"""Query parameters of the history API: client errors are 400s, never 500s."""

from __future__ import annotations

from datetime import date

import pytest

from services.common.operators import ROLE_PERMISSIONS, Role
from services.history.api import (
    PERMISSIONS,
    BadRequestError,
    iso,
    parse_day,
    parse_instant,
    parse_range,
    segment_document,
)
from services.history.segments import Segment

NOW = 1_764_547_200.0  # 2025-12-01T00:00:00Z


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2025-12-01T00:00:00Z", NOW),
        ("2025-12-01T01:00:00+01:00", NOW),
        ("2025-11-30T19:00:00-05:00", NOW),
        ("2025-12-01T00:00:00.500Z", NOW + 0.5),
    ],
)
def test_instants(raw: str, expected: float) -> None:
    assert parse_instant("from", raw) == expected


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("2025-12-01T00:00:00", "offset"),  # whose midnight?
        ("yesterday", "ISO 8601"),
        ("1764547200", "ISO 8601"),
        ("2025-13-01T00:00:00Z", "ISO 8601"),
        ("2025-12-01T00:00:00Z" + " " * 100, "ISO 8601"),
        ("\x00", "ISO 8601"),
    ],
)
def test_bad_instants(raw: str, why: str) -> None:
    with pytest.raises(BadRequestError, match=why):
        parse_instant("from", raw)


def test_range_defaults_to_the_last_day_and_is_bounded() -> None:
    assert parse_range(None, None, NOW, 31) == (NOW - 86_400, NOW)
    assert parse_range("2025-11-30T12:00:00Z", "", NOW, 31) == (NOW - 43_200, NOW)
    with pytest.raises(BadRequestError, match="before"):
        parse_range("2025-12-01T00:00:00Z", "2025-12-01T00:00:00Z", NOW, 31)
    with pytest.raises(BadRequestError, match="at most 31 days"):
        parse_range("2025-01-01T00:00:00Z", "2025-12-01T00:00:00Z", NOW, 31)


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, None), ("", None), ("2026-03-29", date(2026, 3, 29))]
)
def test_days(raw: str | None, expected: date | None) -> None:
    assert parse_day(raw) == expected


@pytest.mark.parametrize(
    "raw", ["2026-02-30", "2026-3-29", "29/03/2026", "2026-03-29T00:00", "２０２６-03-29"]
)
def test_bad_days(raw: str) -> None:
    with pytest.raises(BadRequestError, match="date"):
        parse_day(raw)


def test_segment_document() -> None:
    doc = segment_document(Segment("d", NOW, NOW + 60, "SITTING", 3, 47, 47 * 0.91234))
    assert doc == {
        "start": NOW,
        "end": NOW + 60,
        "start_at": "2025-12-01T00:00:00.000Z",
        "end_at": "2025-12-01T00:01:00.000Z",
        "activity": "SITTING",
        "mean_confidence": 0.9123,
        "model_version": 3,
        "windows": 47,
    }
    assert iso(None) is None


def test_a_viewer_may_read_every_history_route() -> None:
    assert all(p in ROLE_PERMISSIONS[Role.VIEWER] for p in PERMISSIONS.values())
