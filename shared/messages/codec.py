"""Framing shared by every harstream message.

A frame is ``magic (2 bytes) | version (1 byte) | header length (uint32, big endian) |
header (UTF-8 JSON object) | payload``. The header carries the small typed fields; the
payload carries arrays as raw little-endian bytes (a 128×9 float32 window is 4,608 bytes,
about a quarter of its JSON and ~50× faster to decode).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from typing import Any

from shared.errors import SchemaError

_orjson_loads: Callable[[bytes], Any] | None
_orjson_dumps: Callable[[Any], bytes] | None
try:  # in the streaming services' extra; the core install codes with json alone
    from orjson import dumps as _orjson_dumps
    from orjson import loads as _orjson_loads
except ImportError:  # pragma: no cover - the dev environment has it
    _orjson_loads = _orjson_dumps = None

_PREFIX = struct.Struct(">2sBI")


def encode_frame(magic: bytes, version: int, header: dict[str, Any], payload: bytes = b"") -> bytes:
    """One frame from its parts."""
    head = _dump_header(header)
    return _PREFIX.pack(magic, version, len(head)) + head + payload


def _dump_header(header: dict[str, Any]) -> bytes:
    """``header`` as compact JSON: orjson's bytes where it gives the document ``json.dumps``
    would (~0.5 µs against ~6 µs for a raw packet's header, written for every packet and
    window), else ``json.dumps``'s, which also refuses NaN and infinities as it always did.

    orjson writes NaN as ``null`` instead of refusing it, so a header holding a float that
    is not finite goes to ``json.dumps``; so does one holding a type orjson refuses (a
    numpy scalar, an int beyond 64 bits). The two differ only in spelling a reader does not
    see: orjson leaves non-ASCII characters unescaped and writes ``1e16`` for ``1e+16``
    (``tests/unit/test_messages.py`` decodes both alike; the raw frame of a packet is pinned
    byte for byte in ``tests/unit/test_ingest_fastpath.py``).
    """
    if _orjson_dumps is not None and _finite(header):
        try:
            return _orjson_dumps(header)
        except TypeError:
            pass
    return json.dumps(header, separators=(",", ":"), allow_nan=False).encode()


def _finite(header: dict[str, Any]) -> bool:
    """Whether no float in ``header`` (a JSON-like document) is NaN or infinite."""
    pending: list[Any] = [header]
    while pending:
        value = pending.pop()
        values = value.values() if type(value) is dict else value
        for item in values:
            kind = type(item)
            if kind is float:
                if not math.isfinite(item):
                    return False
            elif kind is dict or kind is list or kind is tuple:
                pending.append(item)
    return True


def decode_frame(
    data: bytes, magic: bytes, versions: tuple[int, ...]
) -> tuple[int, dict[str, Any], memoryview]:
    """``(version, header, payload)`` of a frame, or :class:`SchemaError` saying why not."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SchemaError(f"expected bytes, got {type(data).__name__}")
    view = memoryview(data)
    if len(view) < _PREFIX.size:
        raise SchemaError(f"message of {len(view)} bytes is shorter than a frame prefix")
    got_magic, version, head_len = _PREFIX.unpack_from(view)
    if got_magic != magic:
        raise SchemaError(f"magic {bytes(got_magic)!r} is not {magic!r}")
    if version not in versions:
        raise SchemaError(f"schema version {version} of {magic!r} is not one of {versions}")
    end = _PREFIX.size + head_len
    if len(view) < end:
        raise SchemaError(f"header of {head_len} bytes runs past the message ({len(view)} bytes)")
    try:
        header = _loads(bytes(view[_PREFIX.size : end]))
    except (ValueError, RecursionError, TypeError) as exc:
        # ValueError covers UnicodeDecodeError, JSONDecodeError and ints over Python's
        # 4,300-digit limit; RecursionError comes from deeply nested arrays.
        raise SchemaError(f"header is not JSON: {describe(exc)}") from exc
    if not isinstance(header, dict):
        raise SchemaError("header is not a JSON object")
    return version, header, view[end:]


def encode_json(schema: str, version: int, body: dict[str, Any]) -> bytes:
    """Small messages (predictions, alerts, dead letters) are plain JSON with a schema tag."""
    return json.dumps(
        {"schema": schema, "v": version, **body}, separators=(",", ":"), allow_nan=False
    ).encode()


def decode_json(data: bytes, schema: str, versions: tuple[int, ...]) -> dict[str, Any]:
    try:
        body = _loads(data)
    except (ValueError, RecursionError, TypeError) as exc:
        raise SchemaError(f"not JSON: {describe(exc)}") from exc
    if not isinstance(body, dict):
        raise SchemaError("not a JSON object")
    if body.get("schema") != schema:
        raise SchemaError(f"schema {body.get('schema')!r} is not {schema!r}")
    if body.get("v") not in versions:
        raise SchemaError(f"version {body.get('v')!r} of {schema} is not one of {versions}")
    return body


def describe(exc: BaseException) -> str:
    """A decoding error in a few words, never with the input in it: the repr of a
    ``UnicodeDecodeError`` holds the whole message (megabytes, in a dead letter's reason)."""
    if isinstance(exc, UnicodeDecodeError):
        return f"invalid UTF-8 at byte {exc.start} ({exc.reason})"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def check_key(key: bytes | None, device_id: str) -> None:
    """Every harstream message is keyed by its device id, so a device's records stay in one
    partition and one worker owns its state. :class:`SchemaError` for any other key."""
    if key != device_id.encode(errors="surrogatepass"):
        shown = key[:80] if key is not None else None
        raise SchemaError(f"message key {shown!r} is not the device id {device_id[:80]!r}")


def _reject_constant(name: str) -> float:
    raise SchemaError(f"non-finite JSON constant {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # "1e400" parses to inf
        raise SchemaError(f"non-finite JSON number {text[:40]}")
    return value


#: The text with every digit as ``0``, the characters that continue a number's digits
#: (``.eE+``) as ``.`` and everything else as a space: an integer token of 19 digits or more
#: (2**63 has 19) then shows as a space followed by 19 zeros. orjson reads an integer beyond
#: 64 bits as a float where ``json`` reads an int, so such documents go the ``json`` way (as
#: do the rare floats or strings with such a run of digits: slower, never different).
_NUMBER_SHAPE = bytes(
    ord("0") if chr(c) in "0123456789" else ord(".") if chr(c) in ".eE+" else ord(" ")
    for c in range(256)
)
_LONG_INTEGER = b" " + b"0" * 19


def _loads(data: bytes | bytearray | str) -> Any:
    """Strict JSON: no NaN/Infinity, which every encoder here refuses (``allow_nan=False``)
    and which would otherwise only fail when a worker re-encodes the message downstream.

    orjson reads what it can (~7× faster than ``json`` with the float check below: JSON
    decoding was a third of the alerting worker's CPU at 2,500 devices,
    ``python -m benchmarks.bench_alerting --profile``). It refuses NaN/Infinity, numbers
    beyond float64, invalid UTF-8, lone surrogates and deep nesting; those documents, and
    any with a long integer (:data:`_NUMBER_SHAPE`), go the ``json`` way, which so decides
    every result and every error message exactly as before."""
    if (
        _orjson_loads is not None
        and isinstance(data, bytes)
        and _LONG_INTEGER not in (b" " + data).translate(_NUMBER_SHAPE)
    ):
        try:
            return _orjson_loads(data)
        except ValueError:  # orjson.JSONDecodeError: the reference parser says why
            pass
    return json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)


def field(header: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """``header[name]`` checked against ``kind`` (bool is never accepted as a number)."""
    if name not in header:
        raise SchemaError(f"missing field {name!r}")
    value = header[name]
    if isinstance(value, bool) and kind is not bool:
        raise SchemaError(f"field {name!r} must be {kind}, got a boolean")
    if not isinstance(value, kind):
        raise SchemaError(f"field {name!r} must be {kind}, got {type(value).__name__}")
    return value


def number(header: dict[str, Any], name: str) -> float:
    """``header[name]`` as a finite float: an int or float, never a bool, NaN or infinity."""
    if name not in header:
        raise SchemaError(f"missing field {name!r}")
    return finite(header[name], name)


def finite(value: Any, name: str) -> float:
    """``value`` (an int or float, not a bool) as a finite float, else :class:`SchemaError`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError(f"{name!r} must be a number, got {type(value).__name__}")
    try:
        result = float(value)
    except OverflowError as exc:  # a JSON integer of hundreds of digits
        raise SchemaError(f"{name!r} is out of range") from exc
    if not math.isfinite(result):
        raise SchemaError(f"{name!r} must be finite, got {result}")
    return result
