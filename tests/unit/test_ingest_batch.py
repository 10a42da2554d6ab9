"""The gateway path's pure parts: MessagePack bodies, packed float32 samples, the batch
document and its multi-status answer. No I/O."""

from __future__ import annotations

import json
from typing import Any

import msgpack  # type: ignore[import-untyped]
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.ingest import batch as batches
from services.ingest.batch import Accepted, Refused, Result
from services.ingest.body import BodyError, BodyFormat, body_format, parse_body, parse_msgpack
from services.ingest.validation import (
    PACKED_ROW_BYTES,
    FieldError,
    Invalid,
    PacketLimits,
    Reason,
    ValidPacket,
    _valid_fast,
    _validate,
    validate_packet,
)

NOW = 1_767_225_700.0
LIMITS = PacketLimits()


def _rows(n: int = 50, seed: int = 0) -> np.ndarray[Any, np.dtype[np.float64]]:
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.normal(0, 0.6, (n, 3)), rng.normal(0, 1.5, (n, 3))])


def _packet(samples: Any, device_id: str = "watch-1", seq: int = 7) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "seq": seq,
        "first_sample_time": NOW - 10.0,
        "sample_rate_hz": 50.0,
        "samples": samples,
    }


# -- content types and MessagePack bodies --------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "fmt"),
    [
        ("application/json", BodyFormat.JSON),
        ("application/vnd.harstream+json", BodyFormat.JSON),
        ("application/msgpack", BodyFormat.MSGPACK),
        ("application/vnd.msgpack", BodyFormat.MSGPACK),
        ("application/x-msgpack", BodyFormat.MSGPACK),
        ("application/octet-stream", None),
        ("text/plain", None),
        ("application/cbor", None),
        ("", None),
    ],
)
def test_body_format_by_content_type(content_type: str, fmt: BodyFormat | None) -> None:
    assert body_format(content_type) is fmt


def test_a_msgpack_packet_with_plain_rows_is_the_json_packet() -> None:
    rows = _rows().tolist()
    from_json, _ = parse_body(json.dumps(_packet(rows)).encode(), BodyFormat.JSON)
    from_msgpack, exact = parse_body(msgpack.packb(_packet(rows)), BodyFormat.MSGPACK)
    assert exact and from_msgpack == from_json
    a = validate_packet(from_json, LIMITS, NOW)
    b = validate_packet(from_msgpack, LIMITS, NOW)
    assert isinstance(a, ValidPacket) and isinstance(b, ValidPacket)
    assert a.samples.tobytes() == b.samples.tobytes()


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"", "incomplete"),
        (b"\xc1", "starts no value"),
        (b"\x81\x91\x01\x02", "map key"),
        (b"\x91" * 5000, "nested too deeply"),
        (b"\xa2\xff\xfe", "not UTF-8"),
        (b"\x01\x02", "bytes after the document"),
        (b"\xdd\xff\xff\xff\xff", "max_array_len"),
    ],
)
def test_bad_msgpack_is_a_body_error_saying_why(raw: bytes, words: str) -> None:
    with pytest.raises(BodyError, match=words):
        parse_msgpack(raw)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_hostile_msgpack_bytes_only_ever_raise_body_error(raw: bytes) -> None:
    try:
        document = parse_msgpack(raw)
    except BodyError:
        return
    # Whatever decoded is judged, never crashes the validators.
    validate_packet(document, LIMITS, NOW)
    batches.parse_batch(document, 10)
    batches.identity(document)


def test_extension_types_are_no_numbers() -> None:
    body = msgpack.packb(_packet([[0.0] * 6]))
    document = parse_msgpack(body)
    document["first_sample_time"] = msgpack.Timestamp(1767225600)
    result = validate_packet(document, LIMITS, NOW)
    assert isinstance(result, Invalid) and result.status == 400
    assert result.errors[0].field == "first_sample_time"


# -- packed float32 samples --------------------------------------------------------------------


def test_packed_float32_rows_become_exactly_those_values() -> None:
    rows32 = _rows().astype("<f4")
    result = validate_packet(_packet(rows32.tobytes()), LIMITS, NOW)
    assert isinstance(result, ValidPacket)
    assert result.samples.dtype == np.float64 and result.samples.shape == (50, 6)
    assert np.array_equal(result.samples, rows32.astype(np.float64))
    # the same packet as plain rows of those float32 values gives the same record values
    plain = validate_packet(_packet(rows32.astype(np.float64).tolist()), LIMITS, NOW)
    assert isinstance(plain, ValidPacket)
    assert plain.samples.tobytes() == result.samples.tobytes()


@pytest.mark.parametrize(
    ("size", "words"),
    [
        (0, "at least one sample"),
        (PACKED_ROW_BYTES * 3 + 5, "not whole rows of 24"),
        (PACKED_ROW_BYTES * 2001, "at most 2000"),
    ],
)
def test_packed_samples_of_the_wrong_size_are_422(size: int, words: str) -> None:
    result = validate_packet(_packet(bytes(size)), LIMITS, NOW)
    assert isinstance(result, Invalid) and result.status == 422
    assert result.reason is Reason.INVALID_SHAPE and words in result.detail


def test_packed_values_are_checked_like_rows() -> None:
    rows = _rows(10).astype("<f4")
    rows[3, 1] = np.nan
    rows[4, 4] = 40.0  # rad/s, beyond the gyro limit
    result = validate_packet(_packet(rows.tobytes()), LIMITS, NOW)
    assert isinstance(result, Invalid)
    assert [e.field for e in result.errors] == ["samples[3][1]"]  # non-finite first
    rows[3, 1] = 0.0
    result = validate_packet(_packet(rows.tobytes()), LIMITS, NOW)
    assert isinstance(result, Invalid) and result.reason is Reason.OUT_OF_RANGE
    assert result.errors[0].field == "samples[4][4]"


_packed_values = st.lists(st.floats(-40, 40, width=32), min_size=0, max_size=30).map(
    lambda values: np.array(values, dtype="<f4").tobytes()
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(st.binary(max_size=PACKED_ROW_BYTES * 4), _packed_values),
    st.sampled_from(["w-1", "w-1", "", "x" * 70]),
    st.integers(-1, 3),
)
def test_packed_fast_path_gives_the_reference_result(raw: bytes, device_id: str, seq: int) -> None:
    body = _packet(raw, device_id, seq)
    fast = _valid_fast(body, LIMITS, NOW, None)
    reference = _validate(body, LIMITS, NOW, None)
    if fast is not None:
        assert isinstance(reference, ValidPacket)
        assert fast.samples.tobytes() == reference.samples.tobytes()
    if isinstance(reference, ValidPacket):  # and what the reference accepts, the fast path too
        assert fast is not None


# -- the batch document --------------------------------------------------------------------


def test_parse_batch_takes_tokens_and_packets() -> None:
    doc = {"tokens": {"w-1": "t"}, "packets": [{"device_id": "w-1"}], "extra": 1}
    parsed = batches.parse_batch(doc, 10)
    assert isinstance(parsed, batches.Batch)
    assert parsed.tokens == {"w-1": "t"} and len(parsed.packets) == 1


@pytest.mark.parametrize(
    ("doc", "status", "fields"),
    [
        ([], 400, ["$"]),
        ("x", 400, ["$"]),
        ({}, 400, ["tokens", "packets"]),
        ({"tokens": [], "packets": {}}, 400, ["tokens", "packets"]),
        ({"tokens": {}, "packets": []}, 422, ["packets"]),
        ({"tokens": {}, "packets": [{}] * 11}, 422, ["packets"]),
    ],
)
def test_whole_batch_refusals(doc: Any, status: int, fields: list[str]) -> None:
    parsed = batches.parse_batch(doc, 10)
    assert isinstance(parsed, Invalid) and parsed.status == status
    assert [e.field for e in parsed.errors] == fields


@pytest.mark.parametrize(
    ("packet", "identity", "status"),
    [
        ({"device_id": "w-1", "seq": 3}, ("w-1", 3), None),
        ({"device_id": "w-1", "seq": True}, ("w-1", None), None),
        ({"device_id": "w-1", "seq": "3"}, ("w-1", None), None),
        ([1, 2], (None, None), 400),
        ({"seq": 1}, (None, 1), 400),
        ({"device_id": 5}, (None, None), 400),
        ({"device_id": "bad id!"}, (None, None), 422),
        ({"device_id": "w-1\n"}, (None, None), 422),
    ],
)
def test_a_packets_identity_and_the_refusal_without_one(
    packet: Any, identity: tuple[str | None, int | None], status: int | None
) -> None:
    assert batches.identity(packet) == identity
    if status is not None:
        refused = batches.unidentified(packet)
        assert refused.status == status and refused.errors


def test_answer_is_202_when_all_are_accepted() -> None:
    answer = batches.answer([Result(0, "a", 1, Accepted(50)), Result(1, "b", 1, Accepted(50))])
    assert answer.status == 202 and answer.retry_after is None
    assert json.loads(answer.body) == {
        "accepted": 2,
        "refused": 0,
        "results": [
            {"index": 0, "device_id": "a", "seq": 1, "status": 202, "samples": 50},
            {"index": 1, "device_id": "b", "seq": 1, "status": 202, "samples": 50},
        ],
    }


def test_answer_is_207_with_a_problem_per_refused_packet() -> None:
    error = FieldError("samples[0][0]", "must be finite", Reason.NON_FINITE)
    results = [
        Result(0, "a", 1, Accepted(50)),
        Result(
            1, "a", 2, Refused(422, Reason.NON_FINITE, "samples[0][0]: must be finite", (error,))
        ),
        Result(2, None, None, batches.unidentified([])),
        Result(3, "b", 4, Refused(503, Reason.BROKER_UNAVAILABLE, "not acked", retry_after=5)),
        Result(4, "c", 9, Refused(429, Reason.RATE_LIMITED, "slow down", retry_after=2)),
        Result(5, "a", 1, batches.duplicate("a", 1, 0)),
    ]
    answer = batches.answer(results)
    assert answer.status == 207 and answer.retry_after == 5
    assert (answer.accepted, answer.refused) == (1, 5)
    body = json.loads(answer.body)
    assert [r["status"] for r in body["results"]] == [202, 422, 400, 503, 429, 409]
    invalid = body["results"][1]
    assert invalid == {
        "index": 1,
        "device_id": "a",
        "seq": 2,
        "type": "urn:harstream:ingest:problem:non_finite",
        "title": "Invalid packet",
        "status": 422,
        "detail": "samples[0][0]: must be finite",
        "reason": "non_finite",
        "errors": [{"field": "samples[0][0]", "message": "must be finite", "reason": "non_finite"}],
    }
    assert body["results"][3]["retry_after_s"] == 5
    assert (
        body["results"][5]["reason"] == "duplicate" and "packet 0" in body["results"][5]["detail"]
    )


# -- the published document --------------------------------------------------------------------


def test_openapi_documents_the_batch_endpoint_and_both_body_formats() -> None:
    from services.ingest.schemas import BATCH_PROBLEMS, docs_html, openapi_document

    doc = openapi_document(PacketLimits(max_samples=123), 4096, "1.2.3", max_batch_packets=7)
    json.dumps(doc)
    for path in ("/v1/packets", "/v1/packets:batch"):
        content = doc["paths"][path]["post"]["requestBody"]["content"]
        assert set(content) == {
            "application/json",
            "application/msgpack",
            "application/vnd.msgpack",
            "application/x-msgpack",
        }
    batch = doc["paths"]["/v1/packets:batch"]["post"]
    assert set(batch["responses"]) == {"202", "207", *(str(s) for s in BATCH_PROBLEMS)}
    # Each packet by its own device's token (no scheme), or all by a gateway's token.
    assert batch["security"] == [{}, {"gatewayToken": []}]
    assert "gatewayToken" in doc["components"]["securitySchemes"]
    schemas = doc["components"]["schemas"]
    assert schemas["PacketBatch"]["properties"]["packets"]["maxItems"] == 7
    assert schemas["PacketBatch"]["properties"]["packets"]["items"]["$ref"].endswith("/Packet")
    packed = schemas["PacketMsgpack"]["properties"]["samples"]["anyOf"]
    assert packed[0]["maxItems"] == 123 and packed[1]["contentMediaType"]
    page = docs_html(doc)
    assert "/v1/packets:batch" in page and "application/msgpack" in page


def test_batch_schema_example_passes_the_validators() -> None:
    from services.ingest.schemas import PacketBatch

    example = PacketBatch.model_json_schema()["examples"][0]
    parsed = batches.parse_batch(example, 10)
    assert isinstance(parsed, batches.Batch)
    first = parsed.packets[0]
    assert isinstance(validate_packet(first, LIMITS, first["first_sample_time"]), ValidPacket)
    assert batches.identity(first)[0] in parsed.tokens


# -- a gateway's own credential ------------------------------------------------------------------


def test_a_gateway_batch_needs_no_tokens() -> None:
    parsed = batches.parse_batch({"packets": [{"device_id": "w1"}]}, 10, gateway=True)
    assert isinstance(parsed, batches.Batch)
    assert parsed.tokens == {} and parsed.packets == [{"device_id": "w1"}]


def test_a_gateway_batch_carrying_device_tokens_too_is_refused() -> None:
    parsed = batches.parse_batch(
        {"tokens": {"w1": "t"}, "packets": [{"device_id": "w1"}]}, 10, gateway=True
    )
    assert isinstance(parsed, Invalid)
    assert parsed.status == 400 and parsed.errors[0].field == "tokens"
    assert "gateway token" in parsed.errors[0].message


def test_without_a_gateway_token_tokens_stay_required_and_say_how_else() -> None:
    parsed = batches.parse_batch({"packets": [{"device_id": "w1"}]}, 10)
    assert isinstance(parsed, Invalid)
    assert parsed.status == 400 and parsed.errors[0].field == "tokens"
    assert "Authorization header" in parsed.errors[0].message


def test_a_device_not_bound_to_the_gateway_is_forbidden_by_name() -> None:
    refusal = batches.not_bound("w9", "hub-3")
    assert refusal.status == 403 and refusal.reason is Reason.FORBIDDEN
    assert "'w9'" in refusal.detail and "'hub-3'" in refusal.detail
