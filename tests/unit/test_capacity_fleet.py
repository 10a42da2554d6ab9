"""The fleet generator's pure parts: the packet schedule and its phase spreading, packet
bodies ingest accepts, the bounded retry policy, the HTTP answer parser and the counters."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest

from services.common.kafka.backoff import BackoffPolicy
from services.demo.fleet import (
    LATENCY_BOUNDS,
    DeviceSpec,
    FleetCounters,
    ResponseError,
    packet_body,
    packets_due,
    parse_response_head,
    phase_of,
    render_chunks,
    retry_delay,
    source_address,
)
from services.ingest.schemas import Packet


@pytest.mark.parametrize("n", [7, 20, 250, 1000, 5000])
def test_phases_spread_every_prefix_of_the_fleet_over_the_second(n: int) -> None:
    phases = sorted(phase_of(i) for i in range(n))
    assert all(0.0 <= p < 1.0 for p in phases)
    gaps = np.diff([*phases, phases[0] + 1.0])
    # Three-distance theorem: gaps within a factor ~2.6 of the mean 1/n, never a burst.
    assert gaps.max() < 3.0 / n
    assert gaps.min() > 0.3 / n
    # The busiest 10 ms holds about its share of the devices.
    per_10ms = np.bincount((np.array(phases) * 100).astype(int), minlength=100)
    assert per_10ms.max() <= n / 100 + 2


def test_phase_scales_with_the_packet_period() -> None:
    assert phase_of(3, period_s=2.0) == pytest.approx(2 * phase_of(3))


def test_offered_packets_follow_the_schedule() -> None:
    start, phase = 100.0, 0.25
    assert packets_due(start, phase, 100.2) == 0
    assert packets_due(start, phase, 100.25) == 1
    assert packets_due(start, phase, 101.24) == 1
    assert packets_due(start, phase, 160.25) == 61
    assert packets_due(start, phase, 102.0, period_s=0.5) == 4


def test_packet_bodies_are_packets_ingest_accepts() -> None:
    rng = np.random.default_rng(0)
    samples = rng.normal(0, 1, (175, 6))
    chunks = render_chunks(samples, 50)
    assert len(chunks) == 3  # whole packets only
    body = packet_body("fleet-00001", 17, 1767225600.02, 50.0, chunks[1])
    doc = json.loads(body)
    packet = Packet.model_validate(doc)
    assert packet.device_id == "fleet-00001"
    assert packet.seq == 17
    assert packet.first_sample_time == 1767225600.02
    assert np.array_equal(np.array(packet.samples), samples[50:100])  # floats round-trip


def test_devices_spread_over_recordings() -> None:
    specs = [DeviceSpec(i, f"d{i}", "t") for i in range(40)]
    assert Counter(s.recording(19) for s in specs).most_common(1)[0][1] <= 3
    starts = {s.first_chunk(400) for s in specs if s.recording(19) == 0}
    assert len(starts) == 3  # devices on the same recording start apart


POLICY = BackoffPolicy(initial_s=0.2, max_s=5.0, multiplier=2.0, jitter=0.5)


def test_retries_are_bounded_jittered_and_only_for_transient_answers() -> None:
    rng = random.Random(1)
    delays = [retry_delay(503, a, 5, POLICY, None, rng) for a in range(1, 7)]
    assert delays[-1] is None  # the sixth attempt is not made: given up
    for attempt, delay in enumerate(delays[:-1], start=1):
        assert delay is not None
        base = min(5.0, 0.2 * 2 ** (attempt - 1))
        assert base / 2 <= delay <= base
    assert retry_delay(0, 1, 5, POLICY, None, rng) is not None  # timeout
    assert retry_delay(429, 1, 5, POLICY, None, rng) is not None
    for status in (400, 401, 403, 413, 422):
        assert retry_delay(status, 1, 5, POLICY, None, rng) is None
    # The server's Retry-After wins, capped by the policy.
    assert retry_delay(503, 1, 5, POLICY, 1.5, rng) == 1.5
    assert retry_delay(503, 1, 5, POLICY, 120.0, rng) == 5.0


def test_response_heads() -> None:
    head = parse_response_head(
        b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 52\r\n\r\n"
    )
    assert (head.status, head.content_length, head.close, head.retry_after) == (
        202,
        52,
        False,
        None,
    )
    busy = parse_response_head(
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nConnection: close\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert (busy.status, busy.close, busy.retry_after) == (503, True, 2.0)
    dated = parse_response_head(
        b"HTTP/1.1 429 Too Many\r\nRetry-After: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n"
    )
    assert dated.retry_after is None
    assert parse_response_head(b"HTTP/1.0 200 OK\r\n\r\n").close
    for bad in (
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 abc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
    ):
        with pytest.raises(ResponseError):
            parse_response_head(bad)


def test_counters_add_subtract_and_survive_the_pipe() -> None:
    a = FleetCounters(offered=10, accepted=9, statuses=Counter({202: 9, 503: 2}))
    a.observe_latency(0.003)
    a.observe_latency(0.5)
    b = FleetCounters.from_dict(json.loads(json.dumps(a.to_dict())))
    assert b == a
    total = FleetCounters.total([a, b])
    assert total.accepted == 18
    assert total.statuses == Counter({202: 18, 503: 4})
    assert total.minus(a) == a
    assert sum(total.latency_counts) == 4


def test_client_latency_quantiles() -> None:
    c = FleetCounters()
    assert c.latency_quantile(0.5) is None
    for _ in range(99):
        c.observe_latency(0.002)
    c.observe_latency(3.0)
    p50 = c.latency_quantile(0.5)
    assert p50 is not None and 0.0015 < p50 <= 0.0025
    p999 = c.latency_quantile(0.999)
    assert p999 is not None and 2.0 < p999 <= 3.5
    c.observe_latency(1e6)  # past the last bound: counted, reported at the last bound
    assert c.latency_quantile(1.0) == LATENCY_BOUNDS[-1]


def test_each_device_connects_from_its_own_loopback_address() -> None:
    addresses = [source_address(i) for i in range(5000)]
    assert len(set(addresses)) == 5000
    assert all(a.startswith("127.") for a in addresses)
    assert all(0 <= int(part) < 255 for a in addresses for part in a.split("."))
    assert all(a.split(".")[3] != "0" for a in addresses)  # never a network address


# -- MessagePack packets and gateway batches -----------------------------------------------


def test_msgpack_packets_and_batches_are_what_ingest_accepts() -> None:
    import msgpack  # type: ignore[import-untyped]

    from services.demo.fleet import (
        batch_body,
        gateway_of,
        packet_msgpack,
        render_packed_chunks,
    )
    from services.ingest import batch as batches
    from services.ingest.body import BodyFormat, parse_body
    from services.ingest.validation import PacketLimits, ValidPacket, validate_packet

    rng = np.random.default_rng(1)
    samples = rng.normal(0, 1, (120, 6))
    packed = render_packed_chunks(samples, 50)
    assert len(packed) == 2 and len(packed[0]) == 50 * 24
    rows = render_chunks(samples, 50)
    now = 1767225700.0
    for kind, fmt, chunk in (
        ("json", BodyFormat.JSON, rows),
        ("msgpack", BodyFormat.MSGPACK, packed),
    ):
        render = packet_body if kind == "json" else packet_msgpack
        packets = [render(f"d-{i}", i, now - 5 + i * 0.01, 50.0, chunk[i % 2]) for i in range(20)]
        tokens = [(f"d-{i}", f"token-{i}") for i in range(20)]
        document, _ = parse_body(batch_body(kind, tokens, packets), fmt)  # type: ignore[arg-type]
        parsed = batches.parse_batch(document, 1000)
        assert isinstance(parsed, batches.Batch)
        assert parsed.tokens == dict(tokens)
        for i, packet in enumerate(parsed.packets):
            assert batches.identity(packet) == (f"d-{i}", i)
            result = validate_packet(packet, PacketLimits(), now)
            assert isinstance(result, ValidPacket)
            expected = samples[(i % 2) * 50 : (i % 2) * 50 + 50]
            if kind == "msgpack":  # float32 on the wire: exactly those values
                expected = expected.astype("<f4").astype(np.float64)
            assert result.samples.tobytes() == expected.tobytes()
    # 16+ entries take the 16-bit map and array headers
    one = msgpack.unpackb(
        batch_body("msgpack", [("a", "t")], [packet_msgpack("a", 0, now, 50.0, packed[0])])
    )
    assert list(one) == ["tokens", "packets"] and len(one["packets"]) == 1
    assert [gateway_of(i, 3) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_a_gateway_with_its_own_credential_sends_batches_without_tokens() -> None:
    from services.demo.fleet import batch_body, packet_msgpack, render_packed_chunks
    from services.demo.fleetgen import FleetConfig
    from services.ingest import batch as batches
    from services.ingest.body import BodyFormat, parse_body

    now = 1767225700.0
    samples = np.random.default_rng(7).normal(0, 1, (100, 6))
    for kind, fmt, chunk in (
        ("json", BodyFormat.JSON, render_chunks(samples, 50)),
        ("msgpack", BodyFormat.MSGPACK, render_packed_chunks(samples, 50)),
    ):
        render = packet_body if kind == "json" else packet_msgpack
        packets = [render(f"d-{i}", i, now - 5 + i * 0.01, 50.0, chunk[i % 2]) for i in range(20)]
        document, _ = parse_body(batch_body(kind, None, packets), fmt)  # type: ignore[arg-type]
        assert list(document) == ["packets"]
        parsed = batches.parse_batch(document, 1000, gateway=True)
        assert isinstance(parsed, batches.Batch) and len(parsed.packets) == 20
        assert [batches.identity(p) for p in parsed.packets] == [(f"d-{i}", i) for i in range(20)]
    with pytest.raises(ValueError, match="2 gateway tokens for 3 gateways"):
        FleetConfig("http://127.0.0.1:1", gateways=3, gateway_tokens=("a", "b"))


def test_batch_answers_are_read_per_packet_and_checked() -> None:
    from services.demo.fleet import parse_batch_answer
    from services.ingest import batch as batches
    from services.ingest.validation import Reason

    answer = batches.answer(
        [
            batches.Result(0, "a", 1, batches.Accepted(50)),
            batches.Result(
                1, "b", 1, batches.Refused(503, Reason.BROKER_UNAVAILABLE, "x", retry_after=5)
            ),
        ]
    )
    got = parse_batch_answer(answer.body, 2)
    assert [(a.status, a.retry_after) for a in got] == [(202, None), (503, 5)]
    with pytest.raises(ResponseError):
        parse_batch_answer(answer.body, 3)  # a result missing
    with pytest.raises(ResponseError):
        parse_batch_answer(b"<html>", 2)


def test_gateway_fleets_keep_a_gateways_devices_in_one_worker() -> None:
    from services.demo.fleetgen import FleetConfig

    config = FleetConfig("http://127.0.0.1:1", gateways=5)
    for index in range(100):
        assert config.worker_of(index, 2) == config.worker_of(index % 5, 2)
    assert {FleetConfig("http://x").worker_of(i, 3) for i in range(9)} == {0, 1, 2}


def test_a_gateways_backlog_goes_in_batches_ingest_takes() -> None:
    from services.demo.fleetgen import _DeviceState, _Pending, split_batch

    device = _DeviceState(DeviceSpec(0, "d", "t"), 0.0, 0.0)
    batch = [(device, _Pending(seq, b"x" * 300, 0.0)) for seq in range(2500)]
    parts = split_batch(batch, 1000, 100_000)
    assert [len(p) for p in parts] == [333] * 7 + [169]  # bytes bind before the count
    assert [entry for part in parts for entry in part] == batch  # all of them, in order
    assert [len(p) for p in split_batch(batch, 1000, 10**9)] == [1000, 1000, 500]
    huge = [(device, _Pending(0, b"x" * 500, 0.0))]
    assert split_batch(huge, 10, 100) == [huge]
    assert split_batch([], 10, 100) == []
