"""Inflating ``Content-Encoding: gzip`` request bodies under a size limit. Pure (zlib only).

RFC 1952 (2.2): "A gzip file consists of a series of members", so a body of several
members (what ``cat a.gz b.gz`` or a streaming compressor that flushes members gives) is
one valid body: every member is inflated and the results are joined. Bytes after the last
member that do not start another member are not gzip at all and are refused, rather than
silently ignored: a client whose body carries garbage has a bug worth hearing about.
"""

from __future__ import annotations

import zlib

#: The two bytes every gzip member starts with (RFC 1952, ID1 ID2).
GZIP_MAGIC = b"\x1f\x8b"


class GzipError(ValueError):
    """The body is not a valid series of gzip members."""


class GzipTooLarge(ValueError):
    """The inflated body would exceed the limit (a decompression bomb, or just too big)."""


def gunzip(data: bytes, limit: int) -> bytes:
    """The concatenated contents of the gzip members in ``data``.

    Never inflates more than ``limit + 1`` bytes: :class:`GzipTooLarge` as soon as the
    output passes ``limit``. :class:`GzipError` for corrupt or truncated members and for
    trailing bytes that are not a member.
    """
    out: list[bytes] = []
    size = 0
    rest = data
    members = 0
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # one gzip member
        try:
            chunk = inflater.decompress(rest, limit + 1 - size)  # budget >= 1 here
        except zlib.error as exc:
            where = "" if members == 0 else f" (member {members + 1})"
            raise GzipError(f"not valid gzip{where}: {exc}") from None
        size += len(chunk)
        out.append(chunk)
        if size > limit or inflater.unconsumed_tail:  # never inflate a bomb fully
            raise GzipTooLarge(f"inflates to more than {limit} bytes")
        if not inflater.eof:
            raise GzipError("gzip body is truncated")
        members += 1
        rest = inflater.unused_data
        if not rest:
            return b"".join(out)
        if not rest.startswith(GZIP_MAGIC):
            raise GzipError(
                f"{len(rest)} byte(s) after gzip member {members} are not another gzip member"
            )
