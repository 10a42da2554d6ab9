"""Inflating gzip bodies: members, trailing bytes, the size limit (pure)."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.ingest.decompress import GzipError, GzipTooLarge, gunzip


def test_one_member() -> None:
    assert gunzip(gzip.compress(b"hello"), 100) == b"hello"


@given(st.lists(st.binary(max_size=200), min_size=1, max_size=8))
def test_any_series_of_members_is_their_concatenation(parts: list[bytes]) -> None:
    data = b"".join(gzip.compress(part) for part in parts)
    assert gunzip(data, 2000) == b"".join(parts)


@pytest.mark.parametrize("tail", [b"JUNK", b"\x00", b"\x00" * 8, b"\x1f", b"{}"])
def test_bytes_after_the_last_member_are_refused(tail: bytes) -> None:
    with pytest.raises(GzipError, match=r"not another gzip member|truncated"):
        gunzip(gzip.compress(b"hello") + tail, 100)


def test_corrupt_and_truncated_members_are_refused() -> None:
    good = gzip.compress(b"hello world" * 10)
    with pytest.raises(GzipError, match="truncated"):
        gunzip(good[:-5], 1000)
    with pytest.raises(GzipError, match="member 2"):
        gunzip(good + b"\x1f\x8b" + b"\xff" * 20, 1000)
    with pytest.raises(GzipError):
        gunzip(b"not gzip", 1000)
    with pytest.raises(GzipError):  # zlib, not gzip
        gunzip(zlib.compress(b"x"), 1000)


def test_the_limit_holds_across_members_without_inflating_a_bomb() -> None:
    member = gzip.compress(b"\0" * 600)
    assert gunzip(member, 600) == b"\0" * 600
    with pytest.raises(GzipTooLarge):
        gunzip(member * 2, 1000)
    bomb = gzip.compress(b"\0" * 50_000_000)  # 50 MB in ~50 KB
    with pytest.raises(GzipTooLarge):
        gunzip(bomb, 1_000_000)
