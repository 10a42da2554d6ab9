"""The fuzz suite's pure parts: judging answers, the Kafka accounting, case and poison
builders (no I/O)."""

from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np
import pytest

from services.fuzz.http_cases import CATEGORIES, Device, Fixture, draw_examples, generate
from services.fuzz.poison import KINDS, STAGES, Template, poison_set
from services.fuzz.rawhttp import RawResponse
from services.fuzz.tally import Tally, judge, kafka_mismatch
from shared.errors import SchemaError
from shared.messages.raw import RawPacket

PROBLEM = {"content-type": "application/problem+json; charset=utf-8"}
FIXTURE = Fixture(
    devices=tuple(Device(f"fuzz-{i}", f"token-{i}-" + "x" * 40) for i in range(4)),
    revoked=Device("fuzz-revoked", "r" * 43),
    max_body_bytes=64 * 1024,
    max_samples=100,
    now=time.time(),
)


def problem(status: int, reason: str = "malformed") -> RawResponse:
    body = json.dumps({"status": status, "reason": reason, "type": "t", "title": "x"})
    return RawResponse(status, PROBLEM, body.encode())


def test_judge_applies_the_invariants() -> None:
    assert judge("c", problem(400), True).failure is None
    assert judge("c", problem(400), True).reason == "malformed"
    plain = RawResponse(400, {"content-type": "text/plain"}, b"Bad Request")
    assert "not application/problem+json" in (judge("c", plain, True).failure or "")
    assert "server error" in (judge("c", problem(503, "broker_unavailable"), True).failure or "")
    assert judge("c", problem(422, ""), True).failure is not None  # no reason
    assert judge("c", RawResponse(409, PROBLEM, b'{"status": 400, "reason": "x"}'), True).failure
    accepted = RawResponse(202, {}, b'{"device_id": "d", "seq": 7, "samples": 1}')
    assert judge("c", accepted, True).accepted == ("d", 7)
    assert judge("c", RawResponse(202, {}, b"{}"), True).failure is not None
    assert judge("c", None, True).failure == "no answer"
    assert judge("c", None, False).failure is None  # the client hung up on purpose


def test_tally_counts_categories_and_non_problem_refusals() -> None:
    tally = Tally()
    tally.add(judge("a", problem(401, "unauthenticated"), True))
    tally.add(judge("a", RawResponse(400, {}, b"oops"), True), b"POST /")
    tally.add(judge("b", RawResponse(202, {}, b'{"device_id": "d", "seq": 1}'), True))
    assert tally.requests == 3 and tally.refusals == 2 and tally.server_errors == 0
    assert tally.non_problem_refusals == 1 and tally.failures == 1
    assert tally.accepted == Counter({("d", 1): 1})
    assert tally.categories["a"].reasons == Counter({"unauthenticated": 1})
    assert len(tally.examples) == 1 and "POST /" in tally.examples[0]


def test_kafka_accounting_is_a_multiset_comparison() -> None:
    accepted = Counter({("d", 1): 2, ("d", 2): 1})  # seq 1 replayed and accepted twice
    assert kafka_mismatch(accepted, Counter({("d", 1): 2, ("d", 2): 1})) == (0, 0)
    assert kafka_mismatch(accepted, Counter({("d", 1): 1, ("d", 2): 1, ("e", 5): 1})) == (1, 1)


def test_every_category_builds_requests() -> None:
    for name, factory in CATEGORIES.items():
        requests = draw_examples(factory(FIXTURE), 20, random_seed=3)
        assert len(requests) == 20, name
        assert all(r.data for r in requests)
    mixed = generate(FIXTURE, 200, random_seed=1)
    assert len(mixed) >= 200
    assert {r.category for r in mixed} >= set(CATEGORIES) - {"truncated"} | {"disconnect"}
    # reproducible from the seed
    assert [r.data for r in generate(FIXTURE, 50, 9)] == [r.data for r in generate(FIXTURE, 50, 9)]


def test_poison_covers_every_kind_on_every_topic() -> None:
    templates = {
        topic: Template(b"dev", b'HR\x01\x00\x00\x00\x05{"a":1}payload', b"HR-nan")
        for topic in ("raw", "windows", "predictions")
    }
    records = poison_set(templates, b"other", per_kind=2, seed=0)
    kinds = {(r.topic, r.kind) for r in records}
    assert kinds == {(t, k) for t in templates for k in KINDS}
    assert all(r.key is not None or r.value is not None for r in records)
    assert {k for _, kinds_ in STAGES for k in kinds_} == set(KINDS)
    other = [r for r in records if r.kind == "other_schema" and r.topic == "raw"]
    assert other and other[0].value == templates["windows"].value


def test_a_corrupt_header_never_decodes() -> None:
    packet = RawPacket(
        "dev", 3, 1_767_225_600.0, 50.0, np.zeros((50, 6)), received_at=1_767_225_601.0
    )
    templates = {"raw": Template(b"dev", packet.to_bytes(), b"")}
    records = poison_set(templates, b"x", per_kind=200, seed=5, kinds=("corrupt_header",))
    assert len(records) == 200
    for record in records:
        assert record.value is not None
        with pytest.raises(SchemaError):
            RawPacket.from_bytes(record.value)


def _batch(
    status: int, results: list[dict[str, object]], accepted: int, refused: int
) -> RawResponse:
    body = {"accepted": accepted, "refused": refused, "results": results}
    return RawResponse(status, {"content-type": "application/json"}, json.dumps(body).encode())


def test_judge_checks_batch_answers_packet_by_packet() -> None:
    ok = {"index": 0, "device_id": "d", "seq": 1, "status": 202, "samples": 50}
    refused = {
        "index": 1, "device_id": "e", "seq": 2, "status": 409, "type": "t", "title": "x",
        "detail": "dup", "reason": "duplicate", "errors": [],
    }  # fmt: skip
    outcome = judge("batch", _batch(207, [ok, refused], 1, 1), True)
    assert outcome.failure is None and outcome.accepted_many == (("d", 1),)
    assert outcome.reasons == ("duplicate",)
    assert judge("batch", _batch(202, [ok], 1, 0), True).accepted_many == (("d", 1),)
    alone = {**refused, "index": 0}
    for bad, words in (
        (_batch(207, [{**alone, "status": 503}], 0, 1), "server error 503"),
        (_batch(207, [{**alone, "index": 5}], 0, 1), "out of order"),
        (_batch(207, [{**alone, "reason": ""}], 0, 1), "no problem"),
        (_batch(202, [ok, refused], 1, 1), "202 with 1 refused"),
        (_batch(207, [ok], 0, 1), "counts"),
        (_batch(207, [{**ok, "seq": None}], 1, 0), "without device/seq"),
        (RawResponse(207, {}, b"{}"), "without a batch answer"),
    ):
        assert words in (judge("batch", bad, True).failure or ""), words
    tally = Tally()
    tally.add(outcome)
    assert tally.accepted == Counter({("d", 1): 1})
    assert tally.categories["batch"].reasons == Counter({"duplicate": 1})


def test_batch_and_msgpack_cases_are_well_formed_requests() -> None:
    for name in ("batch", "msgpack"):
        for request in draw_examples(CATEGORIES[name](FIXTURE), 60, 3):
            assert request.category == name
            head = request.data.split(b"\r\n\r\n", 1)[0]
            assert head.startswith(b"POST /v1/packets")
            assert b"Content-Length: " in head
