"""The message decoders' JSON fast path (orjson) reads every document exactly as the
reference parser (``json`` with the finite-float check) does: same values of the same types,
same errors with the same messages."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.messages import Prediction, RawPacket, codec
from shared.messages.codec import _finite_float, _loads, _reject_constant
from tests.unit.alerting_helpers import WALKING, prediction


def _reference(data: bytes) -> Any:
    return json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)


def _outcome(load: Any, data: bytes) -> tuple[str, Any]:
    try:
        return "value", _typed(load(data))
    except Exception as exc:  # the error itself is what is compared
        return "error", (type(exc).__name__, str(exc))


def _typed(value: Any) -> Any:
    """The value with the type of every leaf (an int is not a float; -0.0 is not 0.0)."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if isinstance(value, float):
        return ("float", value, math.copysign(1.0, value))
    return (type(value).__name__, value)


_number_text = st.from_regex(
    r"-?(0|[1-9][0-9]{0,40})(\.[0-9]{1,40})?([eE][+-]?[0-9]{1,5})?", fullmatch=True
)
_documents = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(_documents)
def test_documents_read_as_the_reference_reads_them(document: Any) -> None:
    data = json.dumps(document).encode()
    assert _outcome(_loads, data) == _outcome(_reference, data)


@settings(max_examples=400, deadline=None)
@given(_number_text, st.sampled_from(["{}", '{{"n": {}}}', "[1, {}, 2]", '{{"a": "{}"}}']))
def test_number_texts_read_as_the_reference_reads_them(number: str, shape: str) -> None:
    data = shape.format(number).encode()
    assert _outcome(_loads, data) == _outcome(_reference, data)


@pytest.mark.parametrize(
    "data",
    [
        b"18446744073709551616",  # 2**64: a float for orjson, an int for json
        b'{"seq": -9223372036854775809}',
        b"[1e400]",
        b'{"a": NaN}',
        b"-Infinity",
        b'"\\ud800"',
        b"\xef\xbb\xbf{}",
        b"\xff",
        b"[" * 5000 + b"]" * 5000,
        b'{"a": 1} trailing',
        b"",
    ],
)
def test_what_orjson_refuses_or_reads_otherwise_goes_the_reference_way(data: bytes) -> None:
    assert _outcome(_loads, data) == _outcome(_reference, data)


def test_messages_decode_the_same_through_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    data = prediction(3, "WALKING", WALKING, device="dev-é").to_bytes()
    frame = RawPacket("dev-1", 7, 1.7e9, 50.0, np.zeros((50, 6)), 1.7e9 + 0.25).to_bytes()
    fast = Prediction.from_bytes(data), RawPacket.peek(frame)
    monkeypatch.setattr(codec, "_orjson_loads", None)  # the reference parser alone
    assert fast == (Prediction.from_bytes(data), RawPacket.peek(frame))
