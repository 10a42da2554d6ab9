"""Hypothesis strategies for hostile requests to ingest's ``POST /v1/packets`` and
``POST /v1/packets:batch``, as raw HTTP bytes (no HTTP library would send most of them), in
JSON and MessagePack. Pure: builds bytes, sends nothing.

Each strategy is one category of the report. Nothing here predicts the exact answer: the
fuzz run asserts invariants that hold for every request (no 5xx, every refusal a problem
document with a reason, no Kafka record without a 202); the categories show the spread.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped]
import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from services.fuzz.rawhttp import request_bytes

PATH = "/v1/packets"
BATCH_PATH = "/v1/packets:batch"
MSGPACK = "application/msgpack"


@dataclass(frozen=True)
class Device:
    device_id: str
    token: str


@dataclass(frozen=True)
class Fixture:
    """What the fuzzer knows about the service under test."""

    #: Registered, active devices (the first few are also used as "other devices").
    devices: tuple[Device, ...]
    #: A registered device that was revoked.
    revoked: Device
    max_body_bytes: int
    max_samples: int
    #: Server time when the cases were built (Unix seconds).
    now: float
    #: Most packets in one batch.
    max_batch_packets: int = 1000


@dataclass(frozen=True)
class FuzzRequest:
    category: str
    #: The whole request as sent on the wire.
    data: bytes
    #: False for requests abandoned mid-way (nobody is there to read an answer).
    expects_response: bool = True


JSON = "application/json"


def _gzip(data: bytes) -> bytes:
    """gzip without the header's timestamp, so one seed builds the same requests every run."""
    return gzip.compress(data, mtime=0)


def _headers(
    token: str | None, content_type: bytes = JSON.encode(), *extra: tuple[bytes, bytes]
) -> list[tuple[bytes, bytes]]:
    headers = [(b"Content-Type", content_type)] if content_type else []
    if token is not None:
        headers.append((b"Authorization", b"Bearer " + token.encode()))
    return [*headers, *extra]


def _post(token: str | None, body: bytes, *extra: tuple[bytes, bytes]) -> bytes:
    return request_bytes("POST", PATH, _headers(token, JSON.encode(), *extra), body)


@st.composite
def packets(draw: st.DrawFn, fx: Fixture, device: Device | None = None) -> dict[str, Any]:
    """A valid packet of one of the fixture's devices."""
    owner = device or draw(st.sampled_from(fx.devices))
    n = draw(st.integers(1, 60))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    samples = np.column_stack([rng.normal(0, 0.8, (n, 3)), rng.normal(0, 2.0, (n, 3))])
    return {
        "device_id": owner.device_id,
        "seq": draw(st.integers(0, 10**9)),
        "first_sample_time": fx.now - draw(st.floats(0, 7200, allow_nan=False)),
        "sample_rate_hz": draw(st.sampled_from([10.0, 25.0, 50.0, 100.0, 400.0])),
        "samples": np.clip(samples, -15.9, 15.9).tolist(),
    }


def _token_of(fx: Fixture, device_id: str) -> str:
    return next(d.token for d in fx.devices if d.device_id == device_id)


@st.composite
def valid(draw: st.DrawFn, fx: Fixture) -> FuzzRequest:
    """Well-formed packets, plain or gzip (the baseline: 202, or 429 when a device's
    budget runs out)."""
    body = draw(packets(fx))
    raw = json.dumps(body).encode()
    token = _token_of(fx, body["device_id"])
    if draw(st.booleans()):
        return FuzzRequest("valid", _post(token, raw))
    return FuzzRequest("valid", _post(token, _gzip(raw), (b"Content-Encoding", b"gzip")))


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)

#: Text spliced into a serialized packet in place of a value: JSON that Python's json module
#: accepts but a packet must not contain, and things that are not JSON at all.
_LITERALS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "9" * 400,
    "-0.0",
    "1E-400",
    "0x10",
    "01",
    "true",
    "null",
    '"\\ud800"',
    '"\\udfff\\ud800"',
    '"\\u0000"',
    '"watch\\n"',
    '"é"',
    '"' + "a" * 70 + '"',
    "[]",
    "{}",
    '"12"',
    "1.0",
    str(2**63),
    str(-(2**63) - 1),
]


@st.composite
def json_mutations(draw: st.DrawFn, fx: Fixture) -> FuzzRequest:
    """A valid packet's JSON with one field or value replaced, removed or added: wrong
    types, NaN/Infinity, huge numbers, surrogates, another device's id, deep nesting,
    duplicate keys, rows of the wrong width, too many samples."""
    body = draw(packets(fx))
    token = _token_of(fx, body["device_id"])
    fields = ["device_id", "seq", "first_sample_time", "sample_rate_hz", "samples"]
    how = draw(
        st.sampled_from(
            [
                "replace",
                "literal",
                "literal_in_row",
                "delete",
                "extra",
                "other_device",
                "nesting",
                "duplicate_key",
                "row_width",
                "too_many",
                "not_object",
            ]
        )
    )
    text: str
    if how == "replace":
        body[draw(st.sampled_from(fields))] = draw(_json_values)
        text = json.dumps(body)
    elif how in ("literal", "literal_in_row"):
        marker = "0.123456789"
        if how == "literal":
            body[draw(st.sampled_from(fields))] = float(marker)
        else:
            row = draw(st.integers(0, len(body["samples"]) - 1))
            body["samples"][row][draw(st.integers(0, 5))] = float(marker)
        text = json.dumps(body).replace(marker, draw(st.sampled_from(_LITERALS)), 1)
    elif how == "delete":
        del body[draw(st.sampled_from(fields))]
        text = json.dumps(body)
    elif how == "extra":
        body[draw(st.text(min_size=1, max_size=20))] = draw(_json_values)
        text = json.dumps(body)
    elif how == "other_device":
        others = [d for d in fx.devices if d.device_id != body["device_id"]]
        victim = draw(st.sampled_from([*others[:3], fx.revoked, Device("ghost-device", "")]))
        body["device_id"] = victim.device_id
        text = json.dumps(body)
    elif how == "nesting":
        depth = draw(st.sampled_from([10, 100, 1000, 10_000, 100_000]))
        nested = "[" * depth + "1" + "]" * depth
        text = json.dumps(body).replace('"samples": [', f'"samples": [{nested}, ', 1)
    elif how == "duplicate_key":
        name = draw(st.sampled_from(fields))
        text = "{" + f'"{name}": {json.dumps(draw(_json_values))}, ' + json.dumps(body)[1:]
    elif how == "row_width":
        row = draw(st.integers(0, len(body["samples"]) - 1))
        width = draw(st.sampled_from([0, 1, 5, 7, 12]))
        body["samples"][row] = [0.1] * width
        text = json.dumps(body)
    elif how == "too_many":
        body["samples"] = [[0.0, 0.0, 1.0, 0.0, 0.0, 0.0]] * (fx.max_samples + 1)
        text = json.dumps(body)
    else:  # not_object
        text = json.dumps(draw(_json_values))
    raw = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 3)) == 0:
        return FuzzRequest("json", _post(token, _gzip(raw), (b"Content-Encoding", b"gzip")))
    return FuzzRequest("json", _post(token, raw))


_INVALID_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xe2\x82"]


@st.composite
def raw_bodies(draw: st.DrawFn, fx: Fixture) -> FuzzRequest:
    """Bytes that are not a JSON document: random, invalid UTF-8 inside valid JSON, a BOM,
    UTF-16, NUL bytes, whitespace only, nothing."""
    token = fx.devices[0].token
    body = json.dumps(draw(packets(fx, fx.devices[0]))).encode()
    how = draw(st.sampled_from(["random", "bad_utf8", "bom", "utf16", "nul", "blank", "empty"]))
    if how == "random":
        data = draw(st.binary(max_size=2048))
    elif how == "bad_utf8":
        cut = draw(st.integers(0, len(body)))
        data = body[:cut] + draw(st.sampled_from(_INVALID_UTF8)) + body[cut:]
    elif how == "bom":
        data = b"\xef\xbb\xbf" + body
    elif how == "utf16":
        data = body.decode().encode("utf-16")
    elif how == "nul":
        cut = draw(st.integers(0, len(body)))
        data = body[:cut] + b"\0" + body[cut:]
    elif how == "blank":
        data = b" \n\t" * draw(st.integers(1, 100))
    else:
        data = b""
    return FuzzRequest("raw_body", _post(token, data))


@st.composite
def gzip_bodies(draw: st.DrawFn, fx: Fixture) -> FuzzRequest:
    """gzip done right and wrong: several members, truncated, corrupted, trailing junk, a
    bomb, zlib or raw deflate under a gzip label, gzip without the label, odd labels."""
    packet = draw(packets(fx))
    token = _token_of(fx, packet["device_id"])
    body = json.dumps(packet).encode()
    gz = _gzip(body)
    how = draw(
        st.sampled_from(
            [
                "members",
                "truncated",
                "corrupt",
                "junk",
                "bomb",
                "zlib",
                "deflate_raw",
                "unlabelled",
                "label",
                "empty_member",
            ]
        )
    )
    encoding = b"gzip"
    if how == "members":
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
        edges = [0, *cuts, len(body)]
        data = b"".join(_gzip(body[a:b]) for a, b in itertools.pairwise(edges))
    elif how == "truncated":
        data = gz[: draw(st.integers(0, len(gz) - 1))]
    elif how == "corrupt":
        position = draw(st.integers(0, len(gz) - 1))
        data = (
            gz[:position] + bytes([gz[position] ^ draw(st.integers(1, 255))]) + gz[position + 1 :]
        )
    elif how == "junk":
        data = gz + draw(st.binary(min_size=1, max_size=64))
    elif how == "bomb":
        data = _gzip(b" " * (fx.max_body_bytes * draw(st.integers(2, 20))))
    elif how == "zlib":
        data = zlib.compress(body)
    elif how == "deflate_raw":
        compressor = zlib.compressobj(wbits=-15)
        data = compressor.compress(body) + compressor.flush()
    elif how == "unlabelled":
        data, encoding = gz, b"identity"
    elif how == "label":
        data = gz
        encoding = draw(
            st.sampled_from([b"GZIP", b" gzip ", b"x-gzip", b"gzip, gzip", b"br", b"deflate", b""])
        )
    else:  # empty_member
        data = _gzip(b"") + gz
    return FuzzRequest("gzip", _post(token, data, (b"Content-Encoding", encoding)))


@st.composite
def content_types(draw: st.DrawFn, fx: Fixture) -> FuzzRequest:
    """A valid packet under other media types (or none, or a garbled one)."""
    device = fx.devices[1 % len(fx.devices)]
    body = json.dumps(draw(packets(fx, device))).encode()
    content_type = draw(
        st.sampled_from(
            [
                b"text/plain",
                b"application/x-www-form-urlencoded",
                b"multipart/form-data; boundary=x",
                b"application/json; charset=latin-1",
                b"application/merge-patch+json",
                b"APPLICATION/JSON",
                b"application/json;;;",
                b"application/",
                b"*/*",
                b"\xff\xfe/json",
                b"application/json" + b" " * 200,
                b"",
            ]
        )
    )
    headers = [(b"Authorization", b"Bearer " + device.token.encode())]
    if content_type:
        headers.append((b"Content-Type", content_type))
    return FuzzRequest("content_type", request_bytes("POST", PATH, headers, body))


@st.composite
def header_abuse(draw: st.DrawFn, fx: Fixture) -> FuzzRequest:
    """Headers that are huge, numerous, not UTF-8, or duplicated."""
    device = fx.devices[2 % len(fx.devices)]
    body = json.dumps(draw(packets(fx, device))).encode()
    auth = (b"Authorization", b"Bearer " + device.token.encode())
    how = draw(st.sampled_from(["big", "many", "bytes", "dup_auth", "dup_type", "weird_name"]))
    extra: list[tuple[bytes, bytes]]
    if how == "big":
        extra = [(b"X-Fuzz", b"a" * draw(st.sampled_from([1000, 8000, 8200, 20_000])))]
    elif how == "many":
        extra = [(f"X-F{i}".encode(), b"1") for i in range(draw(st.sampled_from([50, 120, 200])))]
    elif how == "bytes":
        value = draw(
            st.binary(min_size=1, max_size=64).filter(lambda b: b"\r" not in b and b"\n" not in b)
        )
        extra = [(draw(st.sampled_from([b"X-Fuzz", b"Content-Type", b"Content-Encoding"])), value)]
    elif how == "dup_auth":
        extra = [(b"Authorization", b"Bearer " + fx.devices[0].token.encode())]
    elif how == "dup_type":
        extra = [(b"Content-Type", b"text/plain")]
    else:
        extra = [(draw(st.sampled_from([b"X Fuzz", b"X:Fuzz", b"\xff", b"X-\x00"])), b"1")]
    headers = [(b"Content-Type", JSON.encode()), auth, *extra]
    return FuzzRequest("headers", request_bytes("POST", PATH, headers, body))


@st.composite
def auth_abuse(draw: st.DrawFn, fx: Fixture) -> FuzzRequest:
    """Missing, unknown, malformed, non-ASCII, revoked and other devices' tokens."""
    victim = draw(st.sampled_from(fx.devices))
    body = json.dumps(draw(packets(fx, victim))).encode()
    others = [d for d in fx.devices if d != victim]
    value = draw(
        st.sampled_from(
            [
                None,
                b"",
                b"Bearer",
                b"Bearer ",
                b"Basic dXNlcjpwYXNz",
                b"bearer " + victim.token.encode(),
                b"Bearer  " + victim.token.encode(),
                b"Bearer " + victim.token.encode() + b" extra",
                b"Bearer " + b"x" * 43,
                b"Bearer " + b"x" * 300,
                b"Bearer " + victim.token.encode()[:-1],
                b"Bearer \xff\xfe" + victim.token.encode(),
                b"Bearer caf\xc3\xa9" + b"x" * 40,
                b"Bearer " + fx.revoked.token.encode(),
                b"Bearer " + others[0].token.encode() if others else b"Bearer x",
                b"Bearer " + others[-1].token.encode() if others else b"Bearer y",
            ]
        )
    )
    headers = [(b"Content-Type", JSON.encode())]
    if value is not None:
        headers.append((b"Authorization", value))
    return FuzzRequest("auth", request_bytes("POST", PATH, headers, body))


@st.composite
def oversized(draw: st.DrawFn, fx: Fixture) -> FuzzRequest:
    """Bodies above max_body_bytes (by Content-Length and chunked), and packets of more
    samples than max_samples."""
    device = fx.devices[3 % len(fx.devices)]
    auth = [
        (b"Authorization", b"Bearer " + device.token.encode()),
        (b"Content-Type", b"application/json"),
    ]
    size = fx.max_body_bytes + draw(st.integers(1, fx.max_body_bytes))
    how = draw(st.sampled_from(["length", "chunked", "samples", "length_lies"]))
    if how == "length":
        data = request_bytes("POST", PATH, auth, b" " * size)
    elif how == "chunked":
        chunk = b" " * 65536
        body = b"".join(b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(size // 65536 + 1))
        data = request_bytes(
            "POST", PATH, [*auth, (b"Transfer-Encoding", b"chunked")], body + b"0\r\n\r\n", False
        )
    elif how == "samples":
        packet = draw(packets(fx, device))
        packet["samples"] = packet["samples"][:1] * (fx.max_samples + draw(st.integers(1, 5000)))
        data = request_bytes("POST", PATH, auth, json.dumps(packet).encode())
    else:  # Content-Length says huge, the body is small and the client hangs up
        head = request_bytes("POST", PATH, auth, b"", False)
        data = head[:-2] + b"Content-Length: " + str(size).encode() + b"\r\n\r\n{}"
        return FuzzRequest("oversized", data, expects_response=True)
    return FuzzRequest("oversized", data)


@st.composite
def truncated(draw: st.DrawFn, fx: Fixture) -> FuzzRequest:
    """A packet's JSON cut off (Content-Length matching what is sent), or a body cut off
    and the connection closed (no answer expected: a client going away)."""
    packet = draw(packets(fx))
    token = _token_of(fx, packet["device_id"])
    body = json.dumps(packet).encode()
    cut = draw(st.integers(0, len(body) - 1))
    if draw(st.integers(0, 4)) == 0:
        whole = _post(token, body)
        return FuzzRequest("disconnect", whole[: len(whole) - len(body) + cut], False)
    return FuzzRequest("truncated", _post(token, body[:cut]))


# -- MessagePack and batches ---------------------------------------------------------------

#: Values spliced into MessagePack packets: what JSON cannot carry too (bytes, an extension
#: type, a timestamp, integers to the 64-bit edges, float32 and float64 specials).
_msgpack_values = st.one_of(
    _json_values,
    st.binary(max_size=64),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
    st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1)),
    st.sampled_from([2**64 - 1, -(2**63), 2**63, math.nan, math.inf, -math.inf]),
)


def _packb(value: Any) -> bytes:
    """``value`` in MessagePack; integers beyond its 64 bits become their decimal string (an
    invalid value of another kind: MessagePack has no bigger integer to carry)."""

    def fit(v: Any) -> Any:
        if type(v) is int and not -(2**63) <= v < 2**64:
            return str(v)
        if isinstance(v, list):
            return [fit(x) for x in v]
        if isinstance(v, dict):
            return {k: fit(x) for k, x in v.items()}
        return v

    packed: bytes = msgpack.packb(fit(value))
    return packed


def _packed(samples: list[list[float]]) -> bytes:
    return np.asarray(samples, dtype="<f4").tobytes()


def _post_msgpack(token: str | None, body: bytes, path: str = PATH) -> bytes:
    return request_bytes("POST", path, _headers(token, MSGPACK.encode()), body)


@st.composite
def msgpack_bodies(draw: st.DrawFn, fx: Fixture) -> FuzzRequest:
    """MessagePack packets: valid (samples packed float32 or plain rows), a field replaced by
    any MessagePack value, packed samples of odd sizes or holding NaN/huge values, ext types,
    truncated or random bytes, and a JSON body under the MessagePack label (or the other
    way round)."""
    body = draw(packets(fx))
    token = _token_of(fx, body["device_id"])
    how = draw(
        st.sampled_from(
            ["packed", "plain", "replace", "odd_size", "specials", "truncated", "random", "swap"]
        )
    )
    content_type = MSGPACK.encode()
    if how == "packed":
        data = _packb({**body, "samples": _packed(body["samples"])})
    elif how == "plain":
        data = _packb(body)
    elif how == "replace":
        body[draw(st.sampled_from(sorted(body)))] = draw(_msgpack_values)
        data = _packb(body)
    elif how == "odd_size":
        packed = _packed(body["samples"])
        size = draw(st.sampled_from([0, 1, 23, 25, len(packed) - 1, len(packed) + 4]))
        data = _packb({**body, "samples": (packed * 2)[:size]})
    elif how == "specials":
        values = np.asarray(body["samples"], dtype="<f4")
        special = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -40.0, 3.4e38]))
        values[draw(st.integers(0, len(values) - 1)), draw(st.integers(0, 5))] = special
        data = _packb({**body, "samples": values.tobytes()})
    elif how == "truncated":
        whole = _packb({**body, "samples": _packed(body["samples"])})
        data = whole[: draw(st.integers(0, len(whole) - 1))]
    elif how == "random":
        data = draw(st.binary(max_size=1024))
    elif draw(st.booleans()):  # swap: JSON labelled MessagePack...
        data = json.dumps(body).encode()
    else:  # ...or MessagePack labelled JSON
        data, content_type = _packb(body), JSON.encode()
    request = request_bytes("POST", PATH, _headers(token, content_type), data)
    return FuzzRequest("msgpack", request)


def _packed_rows(packet: Any) -> Any:
    """``packet`` with its samples packed float32, if they are rows of 6 numbers."""
    samples = packet.get("samples") if isinstance(packet, dict) else None
    if not isinstance(samples, list) or not samples:
        return packet
    for row in samples:
        if not isinstance(row, list) or len(row) != 6:
            return packet
        if not all(type(v) in (int, float) and abs(v) < 1e30 for v in row):
            return packet
    return {**packet, "samples": _packed(samples)}


@st.composite
def batch_bodies(draw: st.DrawFn, fx: Fixture) -> FuzzRequest:
    """``POST /v1/packets:batch``: valid batches of several devices, and batches with a
    token missing, unknown, malformed, another device's or revoked, packets repeated,
    mutated or not objects, tokens and packets of the wrong types, no packets or too many,
    in JSON or MessagePack (packed or plain samples), plain or gzip."""
    count = draw(st.integers(1, 6))
    chosen: list[Any] = [draw(packets(fx)) for _ in range(count)]
    tokens: dict[str, Any] = {p["device_id"]: _token_of(fx, p["device_id"]) for p in chosen}
    document: Any = {"tokens": tokens, "packets": chosen}
    how = draw(
        st.sampled_from(
            [
                "valid",
                "valid",
                "unknown_token",
                "missing_token",
                "other_token",
                "revoked",
                "token_value",
                "duplicate",
                "mutated",
                "not_object",
                "top_level",
                "empty",
                "too_many",
                "extra",
            ]
        )
    )
    victim = chosen[draw(st.integers(0, count - 1))]
    if how == "unknown_token":
        tokens[victim["device_id"]] = "u" * 43
    elif how == "missing_token":
        del tokens[victim["device_id"]]
    elif how == "other_token":
        others = [d for d in fx.devices if d.device_id != victim["device_id"]]
        tokens[victim["device_id"]] = others[0].token
    elif how == "revoked":
        chosen.append({**victim, "device_id": fx.revoked.device_id})
        tokens[fx.revoked.device_id] = fx.revoked.token
    elif how == "token_value":
        tokens[victim["device_id"]] = draw(
            st.one_of(_json_values, st.sampled_from(["", "x" * 300, "caf\u00e9" * 10, "a\nb"]))
        )
    elif how == "duplicate":
        chosen.append(dict(victim))
    elif how == "mutated":
        victim[draw(st.sampled_from(sorted(victim)))] = draw(_json_values)
    elif how == "not_object":
        chosen.insert(draw(st.integers(0, count)), draw(_json_values))
    elif how == "top_level":
        document = draw(
            st.sampled_from(
                [
                    [chosen],
                    {"packets": chosen},
                    {"tokens": tokens},
                    {"tokens": [tokens], "packets": chosen},
                    {"tokens": tokens, "packets": {"0": chosen[0]}},
                    None,
                ]
            )
        )
    elif how == "empty":
        document["packets"] = []
    elif how == "too_many":
        one = {**victim, "samples": victim["samples"][:1]}
        document["packets"] = [
            {**one, "seq": one["seq"] + i} for i in range(fx.max_batch_packets + 1)
        ]
    elif how == "extra":
        document = {**document, draw(st.text(min_size=1, max_size=10)): draw(_json_values)}
    if draw(st.booleans()):
        if draw(st.booleans()) and isinstance(document, dict):
            items = document.get("packets")
            if isinstance(items, list):
                document = {**document, "packets": [_packed_rows(p) for p in items]}
        data = _packb(document)
        content_type = MSGPACK.encode()
    else:
        data = json.dumps(document).encode()
        content_type = JSON.encode()
    extra: list[tuple[bytes, bytes]] = []
    if draw(st.integers(0, 3)) == 0:
        data = _gzip(data)
        extra.append((b"Content-Encoding", b"gzip"))
    headers = [(b"Content-Type", content_type), *extra]
    return FuzzRequest("batch", request_bytes("POST", BATCH_PATH, headers, data))


#: Requests aiohttp's HTTP parser refuses (or routing does) before any handler runs.
_PARSER_GARBAGE = [
    b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST  /v1/packets HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/packets HTTP/9.9\r\nHost: x\r\n\r\n",
    b"POST /v1/packets\r\n\r\n",
    b"GET /\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(48)),
    b"POST /v1/packets HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/packets HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /v1/packets HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3\r\n\r\n",
    b"POST /v1/packets HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"POST /v1/packets HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\n{}\r\n0\r\n\r\n",
    b"POST /v1/packets HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n",
    b"POST /v1/packets HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"POST /v1/packets HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5"
    b"\r\n\r\n0\r\n\r\n",
    b"POST /v1/packets HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n  folded\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Ctl: a\x01b\r\n\r\n",
    b"GET /healthz HTTP/1.1\nHost: x\n\n",
    b"GET /v1/packets HTTP/1.1\r\nHost: x\r\n\r\n",
    b"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /nope%00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://evil.example/healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/packets HTTP/1.0\r\n\r\n",
]


@st.composite
def parser_garbage(draw: st.DrawFn, fx: Fixture) -> FuzzRequest:
    """Request lines, headers and framing aiohttp's parser refuses, and random bytes."""
    if draw(st.integers(0, 2)) == 0:
        # Blank lines before a request line are skipped (RFC 9112, 2.2): a server rightly
        # waits for the request after them, so junk starts with something else.
        junk = draw(st.binary(min_size=1, max_size=512).filter(lambda b: b[:1] not in b"\r\n"))
        return FuzzRequest("parser", junk + b"\r\n\r\n")
    return FuzzRequest("parser", draw(st.sampled_from(_PARSER_GARBAGE)))


#: Category name → strategy factory, in report order (replays are built from accepted
#: requests at run time, schemathesis cases from the service's OpenAPI document).
CATEGORIES: dict[str, Callable[[Fixture], st.SearchStrategy[FuzzRequest]]] = {
    "valid": valid,
    "json": json_mutations,
    "raw_body": raw_bodies,
    "gzip": gzip_bodies,
    "content_type": content_types,
    "headers": header_abuse,
    "auth": auth_abuse,
    "oversized": oversized,
    "truncated": truncated,
    "parser": parser_garbage,
    "msgpack": msgpack_bodies,
    "batch": batch_bodies,
}
#: Share of the generated requests per category (the rest of the run: schemathesis, replays).
WEIGHTS = {
    "valid": 0.12,
    "json": 0.20,
    "raw_body": 0.07,
    "gzip": 0.09,
    "content_type": 0.05,
    "headers": 0.07,
    "auth": 0.07,
    "oversized": 0.03,
    "truncated": 0.09,
    "parser": 0.09,
    "msgpack": 0.05,
    "batch": 0.07,
}


def draw_examples(strategy: st.SearchStrategy[Any], count: int, random_seed: int) -> list[Any]:
    """``count`` examples of ``strategy`` (fewer if it cannot produce that many distinct
    ones), reproducibly from ``random_seed``; hypothesis' example database is not used."""
    found: list[Any] = []
    if count <= 0:
        return found

    @seed(random_seed)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: Any) -> None:
        found.append(example)

    collect()
    return found[:count]


def generate(fx: Fixture, total: int, random_seed: int) -> list[FuzzRequest]:
    """About ``total`` requests over the categories by :data:`WEIGHTS`."""
    requests: list[FuzzRequest] = []
    for i, (name, factory) in enumerate(CATEGORIES.items()):
        count = max(1, math.ceil(total * WEIGHTS[name]))
        requests.extend(draw_examples(factory(fx), count, random_seed + i))
    return requests
