"""Ingest's fast path (orjson parsing, whole-array validation) gives what the reference path
(``json.loads``, the per-value validator) gave, and the raw record a packet becomes is pinned
byte for byte (windows downstream must stay bit-equal)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.ingest.body import BodyError, parse_exact, parse_json
from services.ingest.validation import (
    EARLIEST_SAMPLE_TIME,
    Invalid,
    LastAccepted,
    PacketLimits,
    ValidPacket,
    _valid_fast,
    _validate,
    validate_packet,
)
from shared.messages.raw import RawPacket

NOW = 1_767_225_700.0
LIMITS = PacketLimits()

# Tricky numbers: negative zero, ints, subnormal-ish, the last float below 16, values
# whose shortest repr has 17 digits.
SMALL_ROWS = [
    [0.01, -0.02, 0.99, 0.001, 0, -0.003],
    [-0.0, 1e-7, 15.999999999999998, 34, -35, 2.5e-5],
    [1, 2, 3, -1.0000000000000002, 0.1, 0.30000000000000004],
]
SMALL_BODY = json.dumps(
    {
        "device_id": "watch-0042",
        "seq": 17,
        "first_sample_time": 1767225600.125,
        "sample_rate_hz": 50,
        "samples": SMALL_ROWS,
    }
).encode()
#: The raw frame of SMALL_BODY received at 1767225601.5, as ingest wrote it before the fast
#: path existed (commit 3495d70, json.loads + the per-value validator).
SMALL_FRAME_HEX = (
    "4852010000007d7b226465766963655f6964223a2277617463682d30303432222c22736571223a31372c"
    "2266697273745f73616d706c655f74696d65223a313736373232353630302e3132352c2273616d706c65"
    "5f726174655f687a223a35302e302c226e223a332c2272656365697665645f6174223a31373637323235"
    "3630312e357d7b14ae47e17a843f7b14ae47e17a94bfae47e17a14aeef3ffca9f1d24d62503f00000000"
    "00000000fa7e6abc749368bf000000000000008048afbc9af2d77a3effffffffffff2f40000000000000"
    "414000000000008041c02d431cebe236fa3e000000000000f03f00000000000000400000000000000840"
    "010000000000f0bf9a9999999999b93f343333333333d33f"
)
#: sha256 of the raw frame of a 50-sample packet of normal(0, 0.5) acc and normal(0, 1)
#: gyro values (seed 7), same commit.
BIG_FRAME_SHA256 = "cf3e2acfafaad09d1adf165100ba121ab2a2cfb56c6847e22c3c6326ad7237c9"


def _big_body() -> bytes:
    rng = np.random.default_rng(7)
    rows = np.column_stack([rng.normal(0, 0.5, (50, 3)), rng.normal(0, 1.0, (50, 3))]).tolist()
    return json.dumps(
        {
            "device_id": "fleet-00001",
            "seq": 123456,
            "first_sample_time": 1767225600.02,
            "sample_rate_hz": 50.0,
            "samples": rows,
        }
    ).encode()


def _frame(raw: bytes) -> bytes:
    """The raw record ingest writes for body ``raw`` received at 1767225601.5."""
    document, _ = parse_json(raw)
    packet = validate_packet(document, LIMITS, NOW)
    assert isinstance(packet, ValidPacket)
    return RawPacket(
        packet.device_id,
        packet.seq,
        packet.first_sample_time,
        packet.sample_rate_hz,
        packet.samples,
        1767225601.5,
    ).to_bytes()


def test_raw_frame_of_a_packet_is_pinned() -> None:
    assert _frame(SMALL_BODY).hex() == SMALL_FRAME_HEX
    assert hashlib.sha256(_frame(_big_body())).hexdigest() == BIG_FRAME_SHA256


# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"\xef\xbb\xbf{}",  # BOM
        b'"\xed\xa0\x80"',  # an encoded surrogate
        b"[" * 100_000 + b"]" * 100_000,
        b"{",
        b"\xff",
        b"",
    ],
)
def test_refusals_are_worded_as_before(raw: bytes) -> None:
    with pytest.raises(BodyError) as fast:
        parse_json(raw)
    with pytest.raises(BodyError) as reference:
        parse_exact(raw)
    assert str(fast.value) == str(reference.value)


@pytest.mark.parametrize(
    "raw",
    [b'{"a": NaN}', b"[1e400]", b'"\\ud800"', b"[-Infinity]"],
)
def test_what_orjson_refuses_but_json_reads_is_read_as_json_did(raw: bytes) -> None:
    document, exact = parse_json(raw)
    assert exact
    assert repr(document) == repr(json.loads(raw.decode()))


def _body(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "device_id": "watch-01",
        "seq": 7,
        "first_sample_time": NOW - 10.0,
        "sample_rate_hz": 50.0,
        "samples": [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]] * 3,
    }
    doc.update(overrides)
    return doc


@pytest.mark.parametrize(
    ("field", "literal"),
    [
        ("seq", "18446744073709551616"),  # 2**64: a float for orjson
        ("seq", "-9223372036854775809"),
        ("first_sample_time", "123456789012345678901234567890"),
        ("sample_rate_hz", "-123456789012345678901234567890"),
    ],
)
def test_integers_beyond_64_bits_are_refused_as_json_read_them(field: str, literal: str) -> None:
    raw = json.dumps(_body(**{field: 0})).replace(f'"{field}": 0', f'"{field}": {literal}')
    reference = validate_packet(json.loads(raw), LIMITS, NOW)
    assert isinstance(reference, Invalid)
    document, exact = parse_json(raw.encode())
    fast = validate_packet(document, LIMITS, NOW)
    assert isinstance(fast, Invalid) and not exact
    # What the service does with a refusal from orjson's document (services.ingest.app).
    again = validate_packet(parse_exact(raw.encode()), LIMITS, NOW)
    assert again == reference


# -- validation: the fast path agrees with the reference ----------------------------------------

_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-40, max_value=40),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-40, max_value=40),
)
_values = st.one_of(_numbers, st.booleans(), st.none(), st.text(max_size=3))
_rows = st.one_of(
    st.lists(st.floats(min_value=-20, max_value=20), min_size=6, max_size=6),
    st.lists(_numbers, min_size=6, max_size=6),
    st.lists(_values, min_size=5, max_size=7),
    _values,
)
_bodies = st.fixed_dictionaries(
    {
        "device_id": st.one_of(
            st.just("watch-01"), st.text(max_size=70), st.integers(), st.just("a\n")
        ),
        "seq": st.one_of(st.integers(min_value=-5, max_value=2**64), st.floats(), st.booleans()),
        "first_sample_time": st.one_of(
            st.floats(min_value=EARLIEST_SAMPLE_TIME - 5, max_value=NOW + 400),
            st.integers(min_value=int(EARLIEST_SAMPLE_TIME) - 5, max_value=int(NOW) + 400),
            _values,
        ),
        "sample_rate_hz": st.one_of(
            st.floats(min_value=5, max_value=500), st.integers(min_value=5, max_value=500), _values
        ),
        "samples": st.one_of(st.lists(_rows, max_size=8), _values),
    }
)


def _same(a: ValidPacket | Invalid, b: ValidPacket | Invalid) -> bool:
    if isinstance(a, Invalid) or isinstance(b, Invalid):
        return a == b
    return (
        (a.device_id, a.seq, a.first_sample_time, a.sample_rate_hz, a.clock_went_back_s)
        == (b.device_id, b.seq, b.first_sample_time, b.sample_rate_hz, b.clock_went_back_s)
        and type(a.first_sample_time) is type(b.first_sample_time)
        and type(a.sample_rate_hz) is type(b.sample_rate_hz)
        and a.samples.dtype == b.samples.dtype
        and a.samples.tobytes() == b.samples.tobytes()
        and a.samples.shape == b.samples.shape
    )


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=_bodies,
    drop=st.sampled_from([None, "device_id", "seq", "samples"]),
    last=st.one_of(st.none(), st.builds(LastAccepted, st.integers(0, 10), st.floats(0, 2e9))),
)
def test_fast_path_gives_the_reference_result(
    doc: dict[str, Any], drop: str | None, last: LastAccepted | None
) -> None:
    if drop is not None:
        del doc[drop]
    assert _same(validate_packet(doc, LIMITS, NOW, last), _validate(doc, LIMITS, NOW, last))


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.lists(
            st.one_of(st.floats(min_value=-16, max_value=16), st.integers(-16, 16)),
            min_size=6,
            max_size=6,
        ),
        min_size=1,
        max_size=60,
    ),
    seq=st.integers(0, 2**63 - 1),
)
def test_valid_packets_take_the_fast_path_with_the_reference_values(
    rows: list[list[float]], seq: int
) -> None:
    doc = _body(samples=rows, seq=seq)
    raw = json.dumps(doc).encode()
    document, exact = parse_json(raw)
    fast = _valid_fast(document, LIMITS, NOW, None)
    reference = _validate(json.loads(raw.decode()), LIMITS, NOW)
    assert fast is not None and not exact
    assert _same(fast, reference)
