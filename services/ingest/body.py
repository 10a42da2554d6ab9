"""A request body's bytes → the parsed JSON document, at orjson's speed, with refusals
worded from the document ``json.loads`` reads. Pure.

``json.loads`` of a 50-sample packet took ~10 % of ingest's CPU under a live fleet
(``python -m benchmarks.bench_ingest --profile``); orjson parses it ~8× faster. The two
agree on every document orjson accepts but one kind: an integer beyond 64 bits (below
-2**63 or from 2**64 on) is an ``int`` for ``json`` and a ``float`` for orjson. Such a
number cannot be part of a valid packet (no field of one comes near 2**63), so a packet
that validates gives the same :class:`~services.ingest.validation.ValidPacket` from either
document; a packet that does not is validated again from :func:`parse_exact`'s document, so
its errors are the ones ``json.loads`` gave (a too-large ``seq`` stays a 422, not a 400).
Bodies orjson refuses (invalid UTF-8, lone surrogates, NaN/Infinity literals, numbers
beyond float64, deep nesting, a BOM) are parsed the old way at once, with the same result
or the same error message as before.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


class BodyError(ValueError):
    """The body is not a UTF-8 JSON document; the message says why (for a 400)."""


def parse_json(raw: bytes) -> tuple[Any, bool]:
    """``(document, exact)``: the JSON document in ``raw`` (UTF-8), and whether it is the
    one ``json.loads`` reads (False: orjson's, which may hold a float for an integer beyond
    64 bits). :class:`BodyError` if ``raw`` is not a JSON document."""
    try:
        return orjson.loads(raw), False
    except orjson.JSONDecodeError:
        pass  # the reference parser says why, in its own words (or reads what orjson cannot)
    return parse_exact(raw), True


def parse_exact(raw: bytes) -> Any:
    """The document ``json.loads`` reads from ``raw`` decoded as strict UTF-8, or
    :class:`BodyError` saying why there is none."""
    try:
        # JSON travels as UTF-8 (RFC 8259 8.1). Decoded strictly here: json.loads(bytes)
        # would accept encoded surrogates (ED A0 80) and other invalid UTF-8.
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(f"body is not valid UTF-8: {exc}") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BodyError(f"body is not valid JSON: {str(exc)[:200]}") from None
