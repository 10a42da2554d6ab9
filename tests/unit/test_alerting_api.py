"""Parsing of the alerting API's query parameters and bodies: client errors are 400s."""

from __future__ import annotations

import pytest

from services.alerting.api import MAX_LIMIT, MAX_NOTE, BadRequestError, parse_limit, parse_note


@pytest.mark.parametrize(("raw", "expected"), [(None, 100), ("1", 1), ("0042", 42), ("1000", 1000)])
def test_limit_accepted(raw: str | None, expected: int) -> None:
    assert parse_limit(raw) == expected


@pytest.mark.parametrize(
    "raw",
    # "²" and "٣" pass str.isdigit() but int() refuses the first: this was a 500.
    ["", "0", str(MAX_LIMIT + 1), "-1", "+5", " 5", "5\n", "1.0", "abc", "²", "٣", "9" * 5000],
)
def test_limit_refused(raw: str) -> None:
    with pytest.raises(BadRequestError, match="limit"):
        parse_limit(raw)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", None),
        (b"  \n", None),
        (b"{}", None),
        (b'{"note": null}', None),
        (b'{"note": ""}', None),
        (b'{"note": "on my way"}', "on my way"),
        (b'{"note": "line 1\\nline 2\\tx"}', "line 1\nline 2\tx"),
        ('{"note": "jos\u00e9"}'.encode("utf-16"), "jos\u00e9"),
        (('{"note": "' + "a" * MAX_NOTE + '"}').encode(), "a" * MAX_NOTE),
    ],
)
def test_note_accepted(body: bytes, expected: str | None) -> None:
    assert parse_note(body) == expected


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"not json", "JSON"),
        (b"\xff\xfe\xfa", "JSON"),  # not UTF-8/16/32
        (b"[" * 100_000, "JSON"),  # RecursionError in json: this was a 500
        (b'{"note": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "JSON"),
        (b'["on my way"]', "JSON"),
        (b'{"note": 7}', "string"),
        (b'{"note": "bell\\u0007"}', "control"),
        (('{"note": "' + "a" * (MAX_NOTE + 1) + '"}').encode(), "at most"),
        # Who acts is the authenticated operator: a name in the body is refused, not ignored.
        (b'{"by": "nurse-ana"}', '"by" is not accepted'),
        (b'{"by": "nurse-ana", "note": "x"}', '"by" is not accepted'),
        (b'{"notes": "x"}', "unknown field"),
    ],
)
def test_note_refused(body: bytes, why: str) -> None:
    with pytest.raises(BadRequestError, match=why):
        parse_note(body)
