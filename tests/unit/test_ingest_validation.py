"""Packet validation rules (pure)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from services.ingest.validation import (
    EARLIEST_SAMPLE_TIME,
    MAX_ERRORS,
    Invalid,
    LastAccepted,
    PacketLimits,
    Reason,
    ValidPacket,
    validate_packet,
)

NOW = 1_767_225_600.0  # 2026-01-01
LIMITS = PacketLimits()


def body(n: int = 4, **overrides: Any) -> dict[str, Any]:
    rng = np.random.default_rng(n)
    rows = np.column_stack([rng.normal(0, 0.5, (n, 3)), rng.normal(0, 1.0, (n, 3))])
    doc: dict[str, Any] = {
        "device_id": "watch-01",
        "seq": 7,
        "first_sample_time": NOW - 10.0,
        "sample_rate_hz": 50.0,
        "samples": rows.tolist(),
    }
    doc.update(overrides)
    return doc


def invalid(result: ValidPacket | Invalid) -> Invalid:
    assert isinstance(result, Invalid), result
    return result


def check(doc: Any, last: LastAccepted | None = None, limits: PacketLimits = LIMITS) -> Any:
    return validate_packet(doc, limits, NOW, last)


def test_valid_packet_keeps_values_bit_exact() -> None:
    doc = body(50)
    result = check(doc)
    assert isinstance(result, ValidPacket)
    assert result.samples.dtype == np.float64
    assert result.samples.shape == (50, 6)
    assert np.array_equal(result.samples, np.array(doc["samples"]))
    assert (result.device_id, result.seq, result.num_samples) == ("watch-01", 7, 50)


def test_integers_are_numbers() -> None:
    result = check(
        body(1, samples=[[0, 0, 1, 0, 0, 0]], first_sample_time=int(NOW), sample_rate_hz=50)
    )
    assert isinstance(result, ValidPacket)
    assert result.samples.tolist() == [[0.0, 0.0, 1.0, 0.0, 0.0, 0.0]]
    assert isinstance(result.first_sample_time, float)


@pytest.mark.parametrize("doc", [[], "x", 3, None, [1, 2]])
def test_body_must_be_an_object(doc: Any) -> None:
    result = invalid(check(doc))
    assert (result.status, result.reason, result.errors[0].field) == (400, Reason.MALFORMED, "$")


@pytest.mark.parametrize(
    "field", ["device_id", "seq", "first_sample_time", "sample_rate_hz", "samples"]
)
def test_missing_fields(field: str) -> None:
    doc = body()
    del doc[field]
    result = invalid(check(doc))
    assert result.status == 400
    assert result.errors[0].field == field
    assert "required" in result.errors[0].message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("device_id", 12),
        ("seq", "7"),
        ("seq", 7.0),
        ("seq", True),
        ("first_sample_time", "1767225600"),
        ("first_sample_time", False),
        ("sample_rate_hz", None),
        ("sample_rate_hz", True),
        ("samples", {"0": [0, 0, 0, 0, 0, 0]}),
    ],
)
def test_wrong_json_types_are_400(field: str, value: Any) -> None:
    result = invalid(check(body(**{field: value})))
    assert (result.status, result.reason) == (400, Reason.MALFORMED)
    assert result.errors[0].field == field


def test_all_type_errors_are_listed() -> None:
    result = invalid(check(body(seq="1", sample_rate_hz="50")))
    assert [e.field for e in result.errors] == ["seq", "sample_rate_hz"]
    assert result.total == 2
    assert "(and 1 more)" in result.detail


@pytest.mark.parametrize("value", [True, False, None, "0.5", "NaN", "Infinity", [0.1], {}])
def test_sample_values_must_be_numbers(value: Any) -> None:
    doc = body(3)
    doc["samples"][2][4] = value
    result = invalid(check(doc))
    assert (result.status, result.reason) == (400, Reason.MALFORMED)
    assert result.errors[0].field == "samples[2][4]"


def test_row_that_is_not_an_array_is_400() -> None:
    doc = body(3)
    doc["samples"][1] = 0.5
    result = invalid(check(doc))
    assert (result.status, result.errors[0].field) == (400, "samples[1]")


@pytest.mark.parametrize("width", [0, 1, 5, 7, 9])
def test_ragged_rows_are_422(width: int) -> None:
    doc = body(5)
    doc["samples"][3] = [0.0] * width
    result = invalid(check(doc))
    assert (result.status, result.reason) == (422, Reason.INVALID_SHAPE)
    assert result.errors[0].field == "samples[3]"
    assert f"has {width} values, expected 6" in result.errors[0].message


def test_type_errors_win_over_shape_errors() -> None:
    doc = body(5)
    doc["samples"][1] = [0.0] * 5
    doc["samples"][3][0] = "x"
    result = invalid(check(doc))
    assert result.status == 400
    assert [e.field for e in result.errors] == ["samples[3][0]"]


def test_empty_packet_is_422() -> None:
    result = invalid(check(body(samples=[])))
    assert (result.status, result.reason, result.errors[0].field) == (
        422,
        Reason.INVALID_SHAPE,
        "samples",
    )


def test_too_many_samples_is_422() -> None:
    limits = PacketLimits(max_samples=10)
    assert isinstance(check(body(10), limits=limits), ValidPacket)
    result = invalid(check(body(11), limits=limits))
    assert (result.status, result.reason) == (422, Reason.INVALID_SHAPE)
    assert "at most 10" in result.errors[0].message


@pytest.mark.parametrize("device_id", ["", "a" * 65, "bad id", "dev/1", "ü", "dev\n"])
def test_device_id_pattern(device_id: str) -> None:
    result = invalid(check(body(device_id=device_id)))
    assert (result.status, result.reason, result.errors[0].field) == (
        422,
        Reason.INVALID_FIELD,
        "device_id",
    )


@pytest.mark.parametrize("device_id", ["a", "A" * 64, "ward-3.bed:7_x"])
def test_device_id_accepted(device_id: str) -> None:
    assert isinstance(check(body(device_id=device_id)), ValidPacket)


@pytest.mark.parametrize("seq", [-1, 2**63])
def test_seq_range(seq: int) -> None:
    result = invalid(check(body(seq=seq)))
    assert (result.status, result.errors[0].field) == (422, "seq")


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
def test_non_finite_samples_from_json(text: str) -> None:
    doc = body(3)
    raw = json.dumps(doc).replace(json.dumps(doc["samples"][1][2]), text, 1)
    parsed = json.loads(raw)  # Python's json turns these into nan/inf, as the service does
    result = invalid(check(parsed))
    assert (result.status, result.reason) == (422, Reason.NON_FINITE)
    assert result.errors[0].field == "samples[1][2]"


def test_huge_integers_are_out_of_range_not_a_crash() -> None:
    doc = body(2)
    doc["samples"][0][0] = 10**400
    result = invalid(check(doc))
    assert (result.status, result.reason, result.errors[0].field) == (
        422,
        Reason.OUT_OF_RANGE,
        "samples[0][0]",
    )


@pytest.mark.parametrize("field", ["first_sample_time", "sample_rate_hz"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scalars(field: str, value: float) -> None:
    result = invalid(check(body(**{field: value})))
    assert (result.status, result.reason, result.errors[0].field) == (422, Reason.NON_FINITE, field)


@pytest.mark.parametrize("field", ["first_sample_time", "sample_rate_hz"])
@pytest.mark.parametrize("value", [10**400, -(10**400)])
def test_scalar_integers_too_large_for_float_are_422(field: str, value: int) -> None:
    # float(10**400) raises OverflowError: this was a 500 "internal" answer.
    parsed = json.loads(json.dumps(body(2, **{field: value})))
    result = invalid(check(parsed))
    assert (result.status, result.reason) == (422, Reason.OUT_OF_RANGE)
    assert [e.field for e in result.errors] == [field]


def test_error_list_is_capped() -> None:
    doc = body(100)
    for row in doc["samples"]:
        row[0] = float("nan")
    result = invalid(check(doc))
    assert len(result.errors) == MAX_ERRORS
    assert result.total == 100


@pytest.mark.parametrize(
    ("column", "value", "ok"),
    [
        (0, 16.0, True),
        (1, -16.0, True),
        (2, 16.01, False),
        (0, -20.0, False),
        (3, 35.0, True),
        (4, -35.5, False),
        (5, 100.0, False),
    ],
)
def test_physical_limits(column: int, value: float, ok: bool) -> None:
    doc = body(3)
    doc["samples"][2][column] = value
    result = check(doc)
    if ok:
        assert isinstance(result, ValidPacket)
    else:
        result = invalid(result)
        assert (result.status, result.reason) == (422, Reason.OUT_OF_RANGE)
        assert result.errors[0].field == f"samples[2][{column}]"
        assert ("g exceeds" if column < 3 else "rad/s exceeds") in result.errors[0].message


def test_limits_are_configurable() -> None:
    doc = body(2)
    doc["samples"][0][0] = 10.0
    result = invalid(check(doc, limits=PacketLimits(acc_limit_g=8.0)))
    assert result.reason is Reason.OUT_OF_RANGE


@pytest.mark.parametrize(
    ("rate", "ok"),
    [(10.0, True), (400, True), (9.99, False), (401.0, False), (0, False), (-50, False)],
)
def test_sample_rate_range(rate: float, ok: bool) -> None:
    result = check(body(sample_rate_hz=rate))
    if ok:
        assert isinstance(result, ValidPacket)
    else:
        result = invalid(result)
        assert (result.status, result.reason, result.errors[0].field) == (
            422,
            Reason.BAD_RATE,
            "sample_rate_hz",
        )


@pytest.mark.parametrize(
    ("first", "ok"),
    [
        (EARLIEST_SAMPLE_TIME, True),
        (EARLIEST_SAMPLE_TIME - 1, False),
        (0.0, False),
        (NOW + LIMITS.max_future_skew_s, True),
        (NOW + LIMITS.max_future_skew_s + 1, False),
    ],
)
def test_first_sample_time_plausible(first: float, ok: bool) -> None:
    result = check(body(first_sample_time=first))
    if ok:
        assert isinstance(result, ValidPacket)
    else:
        result = invalid(result)
        assert (result.status, result.reason) == (422, Reason.BAD_TIMESTAMP)


def test_a_clock_set_back_is_accepted_and_reported() -> None:
    # seq 8 starts 1 s before the accepted seq 7: the device clock was corrected. Refusing
    # it (422, not retryable) lost every packet until real time caught up.
    last = LastAccepted(seq=7, first_sample_time=NOW - 5.0)
    result = check(body(seq=8, first_sample_time=NOW - 6.0), last=last)
    assert isinstance(result, ValidPacket)
    assert result.clock_went_back_s == pytest.approx(1.0)
    # by as much as the whole accepted skew, too
    far = check(body(seq=8, first_sample_time=NOW - 300.0), last=LastAccepted(7, NOW + 290.0))
    assert isinstance(far, ValidPacket) and far.clock_went_back_s == pytest.approx(590.0)


@pytest.mark.parametrize(
    ("seq", "first"),
    [(8, -5.0), (8, -4.0), (7, -5.0), (6, -9.0), (3, -1.0)],  # later, equal, retry, reordered
)
def test_order_rules_accept_retries_and_reordering(seq: int, first: float) -> None:
    last = LastAccepted(seq=7, first_sample_time=NOW - 5.0)
    result = check(body(seq=seq, first_sample_time=NOW + first), last=last)
    assert isinstance(result, ValidPacket)
    assert result.clock_went_back_s is None  # only a higher seq starting earlier is one


def test_several_value_errors_are_reported_together() -> None:
    doc = body(3, sample_rate_hz=1000.0, first_sample_time=1.0)
    doc["samples"][0][0] = 99.0
    result = invalid(check(doc))
    assert {e.reason for e in result.errors} == {
        Reason.OUT_OF_RANGE,
        Reason.BAD_RATE,
        Reason.BAD_TIMESTAMP,
    }
    assert result.total == 3
    assert result.reason is Reason.OUT_OF_RANGE


def test_unknown_fields_are_ignored() -> None:
    assert isinstance(check(body(firmware="1.2.3")), ValidPacket)
