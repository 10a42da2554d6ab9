"""Framing shared by every harstream message.

A frame is ``magic (2 bytes) | version (1 byte) | header length (uint32, big endian) |
header (UTF-8 JSON object) | payload``. The header carries the small typed fields; the
payload carries arrays as raw little-endian bytes (a 128×9 float32 window is 4,608 bytes,
about a quarter of its JSON and ~50× faster to decode).
"""

from __future__ import annotations

import json
import struct
from typing import Any

from shared.errors import SchemaError

_PREFIX = struct.Struct(">2sBI")


def encode_frame(magic: bytes, version: int, header: dict[str, Any], payload: bytes = b"") -> bytes:
    """One frame from its parts."""
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    return _PREFIX.pack(magic, version, len(head)) + head + payload


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
        header = json.loads(bytes(view[_PREFIX.size : end]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SchemaError(f"header is not JSON: {exc}") from exc
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
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
        raise SchemaError(f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise SchemaError("not a JSON object")
    if body.get("schema") != schema:
        raise SchemaError(f"schema {body.get('schema')!r} is not {schema!r}")
    if body.get("v") not in versions:
        raise SchemaError(f"version {body.get('v')!r} of {schema} is not one of {versions}")
    return body


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
