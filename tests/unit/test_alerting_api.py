"""Parsing of the alerting API's query parameters and bodies: client errors are 400s."""

from __future__ import annotations

import pytest

from services.alerting.api import MAX_LIMIT, BadRequestError, parse_actor, parse_limit


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
        (b'{"by": "nurse-ana"}', "nurse-ana"),
        (b'{"by": "Ana Lima@ward 3", "x": 1}', "Ana Lima@ward 3"),
        ('{"by": "jos\u00e9"}'.encode("utf-16"), "jos\u00e9"),
    ],
)
def test_actor_accepted(body: bytes, expected: str) -> None:
    assert parse_actor(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe\xfa",  # not UTF-8/16/32
        b"[" * 100_000,  # RecursionError in json: this was a 500
        b'{"by": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'["nurse-ana"]',
        b'{"by": 7}',
        b'{"by": ""}',
        b'{"by": "nurse-ana\\n"}',  # a trailing newline once slipped past ``$``
        b'{"by": " leading-space"}',
        b'{"by": "' + b"a" * 129 + b'"}',
    ],
)
def test_actor_refused(body: bytes) -> None:
    with pytest.raises(BadRequestError):
        parse_actor(body)
