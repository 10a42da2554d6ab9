"""A request body's bytes → the parsed document: JSON at orjson's speed with refusals
worded from the document ``json.loads`` reads, or MessagePack. Pure.

Two body formats, chosen by ``Content-Type`` (:func:`body_format`): JSON
(``application/json`` or any ``application/*+json``) and MessagePack
(``application/msgpack``, ``application/vnd.msgpack``, ``application/x-msgpack``). Both
give the same document: maps with string keys, arrays, strings, numbers; a MessagePack
body may also carry a packet's samples as one ``bin`` of packed little-endian float32
(see :mod:`services.ingest.validation`).

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
from enum import StrEnum
from typing import Any

import msgpack  # type: ignore[import-untyped]
import orjson


class BodyError(ValueError):
    """The body is not a document of its format; the message says why (for a 400)."""


class BodyFormat(StrEnum):
    JSON = "json"
    MSGPACK = "msgpack"


#: MessagePack's media type (IANA registration pending) and the two names in use before it.
MSGPACK_TYPES = ("application/msgpack", "application/vnd.msgpack", "application/x-msgpack")
#: What a 415 offers (``Accept-Post``).
ACCEPTED_TYPES = "application/json, application/msgpack"


def body_format(content_type: str) -> BodyFormat | None:
    """The format of a body of media type ``content_type`` (lower case, without
    parameters, as aiohttp's ``request.content_type`` gives it), or None: unsupported."""
    if content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    ):
        return BodyFormat.JSON
    if content_type in MSGPACK_TYPES:
        return BodyFormat.MSGPACK
    return None


def parse_body(raw: bytes, fmt: BodyFormat) -> tuple[Any, bool]:
    """``(document, exact)`` of ``raw`` in ``fmt`` (see :func:`parse_json`; a MessagePack
    document is always exact). :class:`BodyError` if ``raw`` is not one."""
    if fmt is BodyFormat.MSGPACK:
        return parse_msgpack(raw), True
    return parse_json(raw)


def parse_msgpack(raw: bytes) -> Any:
    """The MessagePack document in ``raw``, or :class:`BodyError` saying why there is none.

    Strings must be UTF-8 and map keys strings (or bytes); extension types come back as
    objects no packet field accepts (a timestamp is not a number here: Unix seconds are
    sent as a float). Every length is bounded by the body's size, and nesting by the
    unpacker's stack, so hostile bytes cost at most one pass over the body.
    """
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
    except msgpack.ExtraData:
        raise BodyError("body is not valid MessagePack: bytes after the document") from None
    except msgpack.StackError:
        raise BodyError("body is not valid MessagePack: nested too deeply") from None
    except msgpack.FormatError:
        raise BodyError("body is not valid MessagePack: a byte that starts no value") from None
    except UnicodeDecodeError as exc:
        raise BodyError(f"body is not valid MessagePack: a string is not UTF-8: {exc}") from None
    except (ValueError, TypeError) as exc:  # FormatError, incomplete input, bad map keys
        detail = str(exc) or type(exc).__name__
        raise BodyError(f"body is not valid MessagePack: {detail[:200]}") from None


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
