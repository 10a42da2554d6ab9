"""The gateway path (``POST /v1/packets:batch``) and MessagePack bodies, in-process (aiohttp
test server) against the real broker; and devices joining together from one address."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import numpy as np
import pytest

from services.common.broker import EmbeddedBroker, free_port
from services.common.kafka.topics import create_topics
from services.ingest.registry import SqliteRegistry
from services.ingest.settings import IngestSettings
from shared.messages.raw import RawPacket
from tests.integration.ingest_helpers import (
    auth,
    metric,
    packet,
    read_raw,
    run,
    serve,
)

pytestmark = pytest.mark.integration

BATCH = "/v1/packets:batch"
JSON = {"Content-Type": "application/json"}
MSGPACK = {"Content-Type": "application/msgpack"}


def packed(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with its samples as packed little-endian float32 (the MessagePack form)."""
    return {**body, "samples": np.asarray(body["samples"], dtype="<f4").tobytes()}


def records_by_seq(settings: IngestSettings, expected: int) -> dict[tuple[str, int], RawPacket]:
    records = read_raw(settings, expected=expected)
    decoded = [RawPacket.from_bytes(r.value) for r in records]
    for record, raw in zip(records, decoded, strict=True):
        assert record.key == raw.device_id.encode()
    by_seq = {(p.device_id, p.seq): p for p in decoded}
    assert len(by_seq) == len(decoded), "a packet was written twice"
    return by_seq


def test_a_mixed_batch_is_answered_per_packet_and_only_accepted_packets_are_written(
    make_settings: Callable[..., IngestSettings], registry: SqliteRegistry
) -> None:
    settings = make_settings()
    tokens = {name: registry.add(name)[1] for name in ("a", "b", "c", "f")}
    registry.revoke("c")
    bad_value = packet("a", seq=2, seed=3)
    bad_value["samples"][4][1] = 99.0  # g: beyond the accelerometer's range
    sent: list[Any] = [
        packet("a", seq=0, seed=1),  # 0 accepted
        packet("b", seq=0, seed=2),  # 1 accepted
        packet("a", seq=1, seed=4),  # 2 accepted
        packet("stranger", seq=0),  # 3 a token nobody has
        packet("b", seq=0, seed=5),  # 4 duplicate of 1
        bad_value,  # 5 422 out_of_range
        packet("c", seq=0),  # 6 revoked
        {"seq": 1, "samples": []},  # 7 no device id
        packet("e", seq=0),  # 8 no token for it in the batch
        packet("f", seq=0),  # 9 someone else's token
        "not a packet",  # 10
    ]
    body = {
        "tokens": {
            "a": tokens["a"],
            "b": tokens["b"],
            "c": tokens["c"],
            "stranger": secrets.token_urlsafe(32),
            "f": tokens["a"],
            "unused": "x",
        },
        "packets": sent,
    }

    async def scenario() -> dict[str, Any]:
        async with serve(settings, registry) as client:
            response = await client.post(BATCH, data=json.dumps(body), headers=JSON)
            assert response.status == 207, await response.text()
            assert response.content_type == "application/json"
            assert "Retry-After" not in response.headers
            answer: dict[str, Any] = await response.json()
            assert metric(client, "harstream_ingest_packets_total") == 3
            assert metric(client, "harstream_ingest_samples_total") == 150
            for reason, count in (
                ("unauthenticated", 3),
                ("duplicate", 1),
                ("out_of_range", 1),
                ("forbidden", 1),
                ("malformed", 2),
            ):
                assert (
                    metric(client, "harstream_ingest_rejections_total", reason=reason) == count
                ), reason
            assert metric(client, "harstream_ingest_batch_packets_count") == 1
            assert (
                metric(client, "harstream_ingest_batch_request_seconds_count", outcome="partial")
                == 1
            )
            return answer

    answer = run(scenario())
    assert (answer["accepted"], answer["refused"]) == (3, 8)
    results = answer["results"]
    assert [r["index"] for r in results] == list(range(len(sent)))
    assert [r["status"] for r in results] == [202, 202, 202, 401, 409, 422, 403, 400, 401, 401, 400]
    assert results[0] == {"index": 0, "device_id": "a", "seq": 0, "status": 202, "samples": 50}
    # one wording for unknown tokens and someone else's: no hint of who is registered
    assert results[3]["detail"] == results[9]["detail"]
    assert results[3]["reason"] == "unauthenticated" and results[3]["device_id"] == "stranger"
    assert results[4]["reason"] == "duplicate" and "packet 1" in results[4]["detail"]
    assert results[5]["reason"] == "out_of_range"
    assert results[5]["errors"][0]["field"] == "samples[4][1]"
    assert results[6]["reason"] == "forbidden"
    assert results[7]["errors"][0]["field"] == "device_id" and results[7]["seq"] == 1
    assert results[8]["errors"][0]["field"] == "tokens" and "'e'" in results[8]["detail"]
    for refused in results[3:]:
        assert refused["type"].startswith("urn:harstream:ingest:problem:")
        assert refused["title"] and refused["detail"]

    written = records_by_seq(settings, expected=3)
    assert set(written) == {("a", 0), ("b", 0), ("a", 1)}  # 0 lost, nothing refused written
    for index in (0, 1, 2):
        got = written[(sent[index]["device_id"], sent[index]["seq"])]
        expected = np.array(sent[index]["samples"], dtype=np.float64)
        assert got.samples.tobytes() == expected.tobytes()  # bit-exact
        assert got.first_sample_time == sent[index]["first_sample_time"]


def test_msgpack_batches_and_packets_with_packed_or_plain_samples(
    make_settings: Callable[..., IngestSettings], registry: SqliteRegistry
) -> None:
    settings = make_settings()
    tokens = {f"g-{i}": registry.add(f"g-{i}")[1] for i in range(3)}
    sent = [packed(packet(f"g-{i}", seq=s, seed=10 * i + s)) for s in range(2) for i in range(3)]
    plain = packet("g-0", seq=5, seed=99)
    single = packed(packet("g-1", seq=9, seed=7))

    async def scenario() -> None:
        async with serve(settings, registry) as client:
            body = msgpack.packb({"tokens": tokens, "packets": [*sent, plain]})
            response = await client.post(
                BATCH,
                data=gzip.compress(body),
                headers={"Content-Type": "application/vnd.msgpack", "Content-Encoding": "gzip"},
            )
            assert response.status == 202, await response.text()
            answer = await response.json()
            assert answer["accepted"] == 7 and answer["refused"] == 0
            assert all(r["status"] == 202 for r in answer["results"])
            # the single-packet endpoint takes MessagePack too
            headers = {**MSGPACK, **auth(tokens["g-1"])}
            response = await client.post("/v1/packets", data=msgpack.packb(single), headers=headers)
            assert response.status == 202, await response.text()
            assert await response.json() == {"device_id": "g-1", "seq": 9, "samples": 50}
            # a packet of the wrong size is the packet's 422, the others go on
            short = {**sent[0], "seq": 100, "samples": sent[0]["samples"][:-3]}
            body = msgpack.packb({"tokens": tokens, "packets": [short, packed(packet("g-2", 50))]})
            response = await client.post(BATCH, data=body, headers=MSGPACK)
            assert response.status == 207
            results = (await response.json())["results"]
            assert [r["status"] for r in results] == [422, 202]
            assert results[0]["reason"] == "invalid_shape"
            assert "not whole rows" in results[0]["detail"]

    run(scenario())
    written = records_by_seq(settings, expected=9)
    assert len(written) == 9
    for body in [*sent, single]:
        got = written[(body["device_id"], body["seq"])]
        floats = np.frombuffer(body["samples"], dtype="<f4").reshape(-1, 6).astype(np.float64)
        assert got.samples.tobytes() == floats.tobytes()  # exactly the float32 values sent
    assert written[("g-0", 5)].samples.tobytes() == np.array(plain["samples"]).tobytes()


def test_whole_request_refusals_are_problem_documents(
    make_settings: Callable[..., IngestSettings], registry: SqliteRegistry
) -> None:
    settings = make_settings(max_body_bytes=64 * 1024, max_batch_packets=3)
    _, token = registry.add("w")

    async def scenario() -> None:
        async with serve(settings, registry) as client:
            cases: list[tuple[bytes, dict[str, str], int, str]] = [
                (b"{}", {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
                (b"\xc1", MSGPACK, 400, "malformed"),
                (b'{"tokens": {}, "packets": [', JSON, 400, "malformed"),
                (b"[]", JSON, 400, "malformed"),
                (b'{"tokens": {}, "packets": []}', JSON, 422, "invalid_shape"),
                (
                    json.dumps({"tokens": {"w": token}, "packets": [packet("w")] * 4}).encode(),
                    JSON,
                    422,
                    "invalid_shape",
                ),
                (b" " * (64 * 1024 + 1), JSON, 413, "too_large"),
                (b"x", {**JSON, "Content-Encoding": "br"}, 415, "unsupported_media_type"),
                (b"not gzip", {**JSON, "Content-Encoding": "gzip"}, 400, "malformed"),
            ]
            for data, headers, status, reason in cases:
                response = await client.post(BATCH, data=data, headers=headers)
                assert response.status == status, (data[:40], await response.text())
                assert response.content_type == "application/problem+json"
                problem = await response.json()
                assert problem["status"] == status and problem["reason"] == reason
            response = await client.post(BATCH, data=b"{}", headers={"Content-Type": "text/plain"})
            assert "application/msgpack" in response.headers["Accept-Post"]
            assert (
                metric(client, "harstream_ingest_batch_request_seconds_count", outcome="rejected")
                == len(cases) + 1
            )

    run(scenario())


def test_packets_kafka_does_not_acknowledge_are_answered_503_never_dropped(
    registry: SqliteRegistry, unique_id: str, tmp_path: Path
) -> None:
    # Our own broker: pausing the shared session broker would stall every other test.
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as broker:
        settings = IngestSettings(
            kafka_bootstrap_servers=broker.bootstrap_servers,
            kafka_profile="tansu",
            topic_prefix=f"test-{unique_id}",
            topic_partitions=2,
            registry_url=f"sqlite:///{registry.path}",
            produce_timeout_s=1.0,
            readiness_timeout_s=1.0,
            broker_retry_after_s=4,
        )
        create_topics(settings)
        tokens = {name: registry.add(name)[1] for name in ("p", "q")}
        assert broker.pid is not None
        first = [packet("p", 0, seed=1), packet("q", 0, seed=2)]
        paused = [packet("p", 1, seed=3), packet("q", 1, seed=4), packet("q", 1, seed=4)]

        async def scenario() -> None:
            async with serve(settings, registry) as client:
                body = {"tokens": tokens, "packets": first}
                response = await client.post(BATCH, json=body)
                assert response.status == 202
                os.kill(broker.pid, signal.SIGSTOP)  # type: ignore[arg-type]
                try:
                    t0 = time.monotonic()
                    response = await client.post(BATCH, json={"tokens": tokens, "packets": paused})
                    assert 0.9 < time.monotonic() - t0 < 3.0  # the produce timeout, not longer
                    assert response.status == 207
                    assert response.headers["Retry-After"] == "4"
                    results = (await response.json())["results"]
                    assert [r["status"] for r in results] == [503, 503, 409]
                    assert results[0]["reason"] == "broker_unavailable"
                    assert results[0]["retry_after_s"] == 4
                finally:
                    os.kill(broker.pid, signal.SIGCONT)  # type: ignore[arg-type]
                # the gateway sends the packets answered 503 again until they are accepted
                deadline = time.monotonic() + 20
                while True:
                    response = await client.post(
                        BATCH, json={"tokens": tokens, "packets": paused[:2]}
                    )
                    if response.status == 202:
                        break
                    statuses = {r["status"] for r in (await response.json())["results"]}
                    assert statuses <= {202, 503}
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.5)

        run(scenario())
        records = read_raw(settings, expected=4, timeout_s=15)
        # at-least-once: a packet answered 503 may have been written too, so the retry can
        # duplicate it (dropped downstream by seq); every accepted packet is there
        seqs = {(r.key, RawPacket.from_bytes(r.value).seq) for r in records}
        assert seqs == {(b"p", 0), (b"q", 0), (b"p", 1), (b"q", 1)}


def test_a_batch_when_kafka_cannot_be_reached_is_all_503(
    registry: SqliteRegistry, unique_id: str
) -> None:
    settings = IngestSettings(
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        kafka_profile="tansu",
        topic_prefix=f"test-{unique_id}",
        registry_url=f"sqlite:///{registry.path}",
        broker_retry_after_s=7,
    )
    _, token = registry.add("dev")

    async def scenario() -> None:
        async with serve(settings, registry, wait_ready=False) as client:
            body = {"tokens": {"dev": token}, "packets": [packet("dev", 0), packet("dev", 1)]}
            response = await client.post(BATCH, json=body)
            assert response.status == 207
            assert response.headers["Retry-After"] == "7"
            answer = await response.json()
            assert answer["accepted"] == 0
            assert {r["reason"] for r in answer["results"]} == {"broker_unavailable"}

    run(scenario())


# -- devices joining together from one address ---------------------------------------------


def test_many_new_devices_from_one_address_all_get_in(
    make_settings: Callable[..., IngestSettings], registry: SqliteRegistry
) -> None:
    """60 devices never seen before post at once from one address (a NAT) with a burst of
    5 failures: every one is accepted (uncached lookups wait for a slot, never 429), and
    so are 60 more joining through one batch; a guess from that address afterwards still
    counts (and past the burst is refused)."""
    settings = make_settings(auth_failure_burst=5, auth_failure_rate_per_s=0.01)
    tokens = {f"n-{i:02d}": registry.add(f"n-{i:02d}")[1] for i in range(120)}
    names = sorted(tokens)

    async def scenario() -> None:
        async with serve(settings, registry) as client:
            responses = await asyncio.gather(
                *(
                    client.post("/v1/packets", json=packet(name), headers=auth(tokens[name]))
                    for name in names[:60]
                )
            )
            assert [r.status for r in responses] == [202] * 60
            body = {
                "tokens": {name: tokens[name] for name in names[60:]},
                "packets": [packet(name) for name in names[60:]],
            }
            response = await client.post(BATCH, json=body)
            assert response.status == 202, await response.text()
            limited = metric(
                client, "harstream_ingest_rejections_total", reason="auth_rate_limited"
            )
            assert limited == 0
            statuses = []
            for _ in range(7):
                guess = await client.post(
                    "/v1/packets", json=packet("n-00"), headers=auth(secrets.token_urlsafe(32))
                )
                statuses.append(guess.status)
            assert statuses == [401] * 5 + [429] * 2
            # a batch from the blocked address: cached devices still get in, guesses do not
            body = {
                "tokens": {"n-00": tokens["n-00"], "n-01": secrets.token_urlsafe(32)},
                "packets": [packet("n-00", seq=1), packet("n-01", seq=1)],
            }
            response = await client.post(BATCH, json=body)
            results = (await response.json())["results"]
            assert [r["status"] for r in results] == [202, 429]
            assert results[1]["reason"] == "auth_rate_limited"

    run(scenario())
    assert len(read_raw(settings, expected=121)) == 121
