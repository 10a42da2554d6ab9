"""Running the fuzz suite against a live pipeline: the I/O shell around the pure case
builders (:mod:`~services.fuzz.http_cases`, :mod:`~services.fuzz.poison`) and judges
(:mod:`~services.fuzz.tally`).

``fuzz_http`` sends malformed requests to ingest (raw sockets, hypothesis cases, then
schemathesis cases from ingest's own /openapi.json, both POST endpoints, JSON and
MessagePack, then replays of accepted requests) and checks the raw topic holds exactly the
accepted packets (those of batches included). ``fuzz_topics`` writes poison
records to every topic a worker consumes and waits for each one's dead letter, then checks
every worker is alive and that valid traffic still becomes predictions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import numpy as np
import requests
from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # type: ignore[import-untyped]
from kafka.errors import KafkaError  # type: ignore[import-untyped]

from services.common.kafka.clients import kafka_python_kwargs
from services.fuzz.http_cases import (
    CATEGORIES,
    WEIGHTS,
    Device,
    Fixture,
    FuzzRequest,
    draw_examples,
)
from services.fuzz.poison import (
    STAGES,
    Delivery,
    PoisonRecord,
    Template,
    non_finite_json,
    poison_set,
)
from services.fuzz.rawhttp import NoResponse, RawResponse, fetch, send_and_abandon
from services.fuzz.tally import Outcome, Tally, judge, kafka_mismatch
from services.ingest.registry import SqliteRegistry
from shared.messages import DeadLetter
from shared.messages.raw import RawPacket, raw_packets, split_raw
from shared.messages.windows import WindowMessage
from shared.settings import StreamSettings
from shared.topics import Topics

logger = logging.getLogger(__name__)

#: Requests drawn and sent per batch (bodies of the oversized category are ~1 MB each).
BATCH = 400
OVERSIZED_BATCH = 20
#: Longest wait for an answer (seconds): every request is small work for a healthy server.
ANSWER_TIMEOUT_S = 15.0
#: Share of the HTTP budget sent as schemathesis cases, and as replays of accepted requests.
SCHEMATHESIS_SHARE = 0.2
REPLAY_SHARE = 0.04


@dataclass(frozen=True)
class Target:
    """Where the pipeline under test lives."""

    ingest_host: str
    ingest_port: int
    bootstrap_servers: str
    topics: Topics
    #: The ingest service's device registry (SQLite file shared with it).
    registry_path: Path
    #: How to reach Kafka (TLS, SASL); None: plaintext to ``bootstrap_servers``.
    kafka: StreamSettings | None = None

    @property
    def kafka_settings(self) -> StreamSettings:
        return self.kafka or StreamSettings(kafka_bootstrap_servers=self.bootstrap_servers)

    @property
    def ingest_url(self) -> str:
        return f"http://{self.ingest_host}:{self.ingest_port}"


@dataclass
class HttpResult:
    tally: Tally
    #: Records on the raw topic per (device_id, seq).
    on_topic: Counter[tuple[str, int]]
    #: Raw-topic records that no 202 accounts for, and 202s whose record is missing.
    refused_records: int
    missing_records: int
    #: schemathesis: cases sent, cases the HTTP client could not send, failed checks by name.
    schemathesis_cases: int = 0
    schemathesis_unsendable: int = 0
    schemathesis_failures: Counter[str] = field(default_factory=Counter)
    health: dict[str, bool] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.tally.failures == 0
            and self.refused_records == 0
            and self.missing_records == 0
            and not self.schemathesis_failures
            and all(self.health.values())
        )


def register_devices(registry_path: Path, count: int, prefix: str = "fuzz") -> Fixture:
    """Register ``count`` fuzz devices and a revoked one in the ingest registry."""
    registry = SqliteRegistry(registry_path)
    try:
        devices = []
        for i in range(count):
            record, token = registry.add(f"{prefix}-{i:03d}", "fuzz suite")
            devices.append(Device(record.device_id, token))
        revoked, revoked_token = registry.add(f"{prefix}-revoked", "fuzz suite")
        registry.revoke(revoked.device_id)
    finally:
        registry.close()
    return Fixture(
        devices=tuple(devices),
        revoked=Device(revoked.device_id, revoked_token),
        max_body_bytes=1024 * 1024,
        max_samples=2000,
        now=time.time(),
    )


async def _send(
    target: Target, batch: Iterable[FuzzRequest], tally: Tally, accepted: list[FuzzRequest],
    concurrency: int,
) -> None:  # fmt: skip
    gate = asyncio.Semaphore(concurrency)

    async def one(request: FuzzRequest) -> None:
        async with gate:
            response: RawResponse | None = None
            if request.expects_response:
                try:
                    response = await fetch(
                        target.ingest_host, target.ingest_port, request.data, ANSWER_TIMEOUT_S
                    )
                except (NoResponse, TimeoutError, OSError) as exc:
                    logger.debug("no answer to a %s request: %s", request.category, exc)
            else:
                await send_and_abandon(target.ingest_host, target.ingest_port, request.data)
            outcome = judge(request.category, response, request.expects_response)
            tally.add(outcome, request.data)
            if outcome.accepted_any:
                accepted.append(request)

    await asyncio.gather(*(one(request) for request in batch))


def _schemathesis(
    target: Target, fx: Fixture, count: int, seed: int, tally: Tally, result: HttpResult
) -> None:
    """``count`` cases generated by schemathesis from ingest's /openapi.json (positive and
    negative), sent with its own client and judged by our invariants and its checks."""
    import schemathesis  # noqa: PLC0415 - dev dependency, only for fuzzing
    from schemathesis import GenerationMode  # noqa: PLC0415
    from schemathesis.checks import (  # noqa: PLC0415
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )
    from schemathesis.core.result import Ok  # noqa: PLC0415

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    _register_msgpack()
    schema = schemathesis.openapi.from_url(f"{target.ingest_url}/openapi.json")
    session = requests.Session()
    rng = random.Random(seed)
    operations = []
    for item in schema.get_all_operations():
        if isinstance(item, Ok):
            operations.append(item.ok())
        else:
            logger.warning("schemathesis cannot use an operation: %s", item.err())
    packets = [op for op in operations if op.path in POST_PATHS]
    others = [op for op in operations if op.path not in POST_PATHS]
    plan: list[tuple[Any, GenerationMode, int]] = []
    for op in packets:
        plan += [
            (op, GenerationMode.POSITIVE, int(count * 0.45)),
            (op, GenerationMode.NEGATIVE, int(count * 0.45)),
        ]
    for op in others:
        plan.append((op, GenerationMode.POSITIVE, max(1, int(count * 0.1 / max(1, len(others))))))
    for i, (op, mode, n) in enumerate(plan):
        try:
            cases = draw_examples(op.as_strategy(generation_mode=mode), n, seed + 100 + i)
        except Exception as exc:  # an unsatisfiable strategy is reported, not fatal
            logger.warning("schemathesis cannot generate %s %s cases: %s", op.label, mode, exc)
            continue
        for case in cases:
            headers = {}
            aim = mode is GenerationMode.POSITIVE and isinstance(case.body, dict)
            if op.path == "/v1/packets":
                device = rng.choice(fx.devices)
                if rng.random() < 0.8:
                    headers["Authorization"] = f"Bearer {device.token}"
                if aim and rng.random() < 0.5:  # aim some at acceptance: the token's device
                    _aim(case.body, device, fx, rng)
            elif op.path == "/v1/packets:batch" and aim and rng.random() < 0.5:
                # aim some at acceptance: real devices, their tokens
                tokens: dict[str, str] = {}
                for packet in case.body.get("packets") or []:
                    if isinstance(packet, dict):
                        device = rng.choice(fx.devices)
                        _aim(packet, device, fx, rng)
                        tokens[device.device_id] = device.token
                case.body["tokens"] = tokens
            try:
                response = case.call(
                    base_url=target.ingest_url, session=session, headers=headers, timeout=30
                )
            except (requests.RequestException, ValueError, UnicodeError) as exc:
                # e.g. a header value the client itself refuses to encode
                logger.debug("schemathesis case not sendable: %s", exc)
                result.schemathesis_unsendable += 1
                continue
            result.schemathesis_cases += 1
            raw = RawResponse(
                response.status_code,
                {
                    k.lower(): v[-1] if isinstance(v, list) else v
                    for k, v in response.headers.items()
                },
                response.content,
            )
            outcome = judge("schemathesis", raw, True)
            tally.add(outcome, f"{case.method} {case.path} {case.body!r}"[:300].encode())
            try:
                case.validate_response(response, checks=checks)
            except AssertionError as exc:  # schemathesis' FailureGroup / Failure
                for failure in getattr(exc, "exceptions", [exc]):
                    name = type(failure).__name__
                    result.schemathesis_failures[name] += 1
                    if result.schemathesis_failures[name] == 1:
                        logger.warning("schemathesis %s: %s", name, str(failure)[:500])


#: The operations that take packets (schemathesis aims part of their cases at acceptance).
POST_PATHS = ("/v1/packets", "/v1/packets:batch")


def _aim(packet: dict[str, Any], device: Device, fx: Fixture, rng: random.Random) -> None:
    """Make a generated packet ``device``'s, with a plausible time."""
    packet["device_id"] = device.device_id
    packet["first_sample_time"] = fx.now - rng.uniform(0, 3600)


def _register_msgpack() -> None:
    """Let schemathesis send the MessagePack bodies the document offers (its own
    serializers know JSON, YAML, XML, forms and plain bytes only)."""
    import schemathesis  # noqa: PLC0415

    def serialize(_ctx: Any, value: Any) -> bytes:
        if isinstance(value, bytes):  # a negative case's raw body
            return value
        try:
            packed: bytes = msgpack.packb(value)
        except (TypeError, ValueError, OverflowError):
            return repr(value).encode()
        return packed

    schemathesis.serializer(
        "application/msgpack", "application/vnd.msgpack", "application/x-msgpack"
    )(serialize)


def read_topic(
    kafka: StreamSettings,
    topic: str,
    expected: int = 0,
    quiet_s: float = 2.0,
    timeout_s: float = 60.0,
    keep: Callable[[Any], bool] = lambda record: True,
    holds: Callable[[Any], int] = lambda record: 1,
) -> list[Any]:
    """Every record of ``topic`` from the beginning: read until the kept ones hold at least
    ``expected`` items (``holds``: how many a record carries, e.g. a raw bundle's packets)
    and nothing new came for ``quiet_s`` (end offsets are not trusted: the local broker
    reports them wrong for multi-record batches)."""
    consumer = KafkaConsumer(
        **kafka_python_kwargs(kafka, enable_auto_commit=False, consumer_timeout_ms=500)
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        parts = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        records: list[Any] = []
        held = 0
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            got = [r for batch in consumer.poll(timeout_ms=300).values() for r in batch]
            if got:
                last_new = time.monotonic()
                kept = [r for r in got if keep(r)]
                records.extend(kept)
                held += sum(holds(r) for r in kept)
            elif held >= expected and time.monotonic() - last_new >= quiet_s:
                break
        return records
    finally:
        consumer.close()


def _raw_packets(record: Any) -> int:
    return len(split_raw(record.value).frames)


def _raw_seqs(records: list[Any]) -> Counter[tuple[str, int]]:
    counts: Counter[tuple[str, int]] = Counter()
    for record in records:
        for packet in raw_packets(record.value):
            counts[(packet.device_id, packet.seq)] += 1
    return counts


async def _health(target: Target, fx: Fixture) -> tuple[dict[str, bool], list[Outcome]]:
    """/healthz and /readyz answer 200, and a valid packet and a valid batch are still
    accepted (their outcomes are counted with the others)."""
    health = {}
    for path in ("/healthz", "/readyz"):
        request = f"GET {path} HTTP/1.1\r\nHost: ingest\r\n\r\n".encode()
        response = await fetch(target.ingest_host, target.ingest_port, request)
        health[path] = response.status == 200
    device = fx.devices[-1]
    body = json.dumps(
        {
            "device_id": device.device_id,
            "seq": 10**10,
            "first_sample_time": time.time() - 5,
            "sample_rate_hz": 50.0,
            "samples": [[0.0, 0.0, 1.0, 0.0, 0.0, 0.0]] * 50,
        }
    ).encode()
    request = (
        f"POST /v1/packets HTTP/1.1\r\nHost: ingest\r\nAuthorization: Bearer {device.token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    response = await fetch(target.ingest_host, target.ingest_port, request)
    health["valid packet accepted"] = response.status == 202
    outcomes = [judge("health", response, True)]
    packets = [
        {
            "device_id": d.device_id,
            "seq": 10**10,
            "first_sample_time": time.time() - 5,
            "sample_rate_hz": 50.0,
            "samples": np.full((50, 6), 0.5, dtype="<f4").tobytes(),
        }
        for d in fx.devices[:3]
    ]
    batch = msgpack.packb(
        {"tokens": {d.device_id: d.token for d in fx.devices[:3]}, "packets": packets}
    )
    request = (
        f"POST /v1/packets:batch HTTP/1.1\r\nHost: ingest\r\n"
        f"Content-Type: application/msgpack\r\nContent-Length: {len(batch)}\r\n\r\n"
    ).encode() + batch
    response = await fetch(target.ingest_host, target.ingest_port, request)
    health["valid batch accepted"] = response.status == 202
    outcomes.append(judge("health", response, True))
    return health, outcomes


def fuzz_http(
    target: Target, fx: Fixture, total: int, seed: int, concurrency: int = 16
) -> HttpResult:
    """About ``total`` hostile requests to ingest, then the raw-topic accounting."""
    started = time.monotonic()
    tally = Tally()
    accepted: list[FuzzRequest] = []
    result = HttpResult(tally, Counter(), 0, 0)
    own = int(total * (1 - SCHEMATHESIS_SHARE - REPLAY_SHARE))
    for i, (name, factory) in enumerate(CATEGORIES.items()):
        count = max(1, round(own * WEIGHTS[name]))
        batch_size = OVERSIZED_BATCH if name in ("oversized", "gzip") else BATCH
        for b, first in enumerate(range(0, count, batch_size)):
            size = min(batch_size, count - first)
            batch = draw_examples(factory(fx), size, seed * 1000 + i * 100 + b)
            asyncio.run(_send(target, batch, tally, accepted, concurrency))
        logger.info("fuzz: %s done (%d requests so far)", name, tally.requests)
    _schemathesis(target, fx, int(total * SCHEMATHESIS_SHARE), seed, tally, result)
    logger.info("fuzz: schemathesis done (%d requests so far)", tally.requests)
    rng = random.Random(seed)
    replays = [
        replace(rng.choice(accepted), category="replay")
        for _ in range(max(1, total - tally.requests) if accepted else 0)
    ]
    asyncio.run(_send(target, replays, tally, [], concurrency))
    health, outcomes = asyncio.run(_health(target, fx))
    for outcome in outcomes:
        tally.add(outcome)
    result.health = health
    records = read_topic(
        target.kafka_settings,
        target.topics.raw,
        expected=sum(tally.accepted.values()),
        holds=_raw_packets,
    )
    result.on_topic = _raw_seqs(records)
    result.refused_records, result.missing_records = kafka_mismatch(tally.accepted, result.on_topic)
    result.seconds = time.monotonic() - started
    return result


# -- poison on the topics ------------------------------------------------------------------


@dataclass
class TopicsResult:
    deliveries: list[Delivery]
    #: Produce failures (the record never reached the topic), by kind.
    unproduced: Counter[str] = field(default_factory=Counter)
    #: Stage → worker name → still running after that stage's poison.
    workers_alive: dict[str, dict[str, bool]] = field(default_factory=dict)
    #: Predictions for valid traffic sent before and after the poison.
    predictions_before: int = 0
    predictions_after: int = 0
    #: Dead letters on the DLQ topic by source topic, and by (source topic, service).
    dlq_by_topic: Counter[str] = field(default_factory=Counter)
    dlq_by_service: Counter[tuple[str, str]] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def missing(self) -> list[Delivery]:
        return [d for d in self.deliveries if not d.dead_letters]

    @property
    def ok(self) -> bool:
        return (
            not self.missing
            and all(all(alive.values()) for alive in self.workers_alive.values())
            and self.predictions_before > 0
            and self.predictions_after > 0
        )


def send_valid_traffic(target: Target, device: Device, seconds: float, seq0: int = 0) -> int:
    """``seconds`` of 50 Hz packets (1 s each, consecutive seqs) from ``device``; returns
    how many were accepted."""
    rng = np.random.default_rng(seq0)
    start = time.time() - seconds
    session = requests.Session()
    accepted = 0
    for i in range(int(seconds)):
        samples = np.column_stack([rng.normal(0, 0.3, (50, 3)), rng.normal(0, 0.5, (50, 3))])
        samples[:, 2] += 1.0  # gravity
        body = {
            "device_id": device.device_id,
            "seq": seq0 + i,
            "first_sample_time": start + i,
            "sample_rate_hz": 50.0,
            "samples": samples.tolist(),
        }
        response = session.post(
            f"{target.ingest_url}/v1/packets",
            json=body,
            headers={"Authorization": f"Bearer {device.token}"},
            timeout=30,
        )
        accepted += response.status_code == 202
    return accepted


def wait_for_records(
    kafka: StreamSettings,
    topic: str,
    key: bytes,
    timeout_s: float,
    keep: Callable[[Any], bool] | None = None,
) -> list[Any]:
    """Records of ``topic`` keyed ``key`` (or that ``keep`` keeps), once at least one is
    there (or the time is up)."""
    wanted = keep or (lambda r: r.key == key)
    deadline = time.monotonic() + timeout_s
    while True:
        records = read_topic(kafka, topic, quiet_s=0.5, timeout_s=5.0, keep=wanted)
        if records or time.monotonic() > deadline:
            return records


def wait_for_raw_packet(kafka: StreamSettings, topic: str, key: bytes, timeout_s: float) -> bytes:
    """The frame of a packet of device ``key`` on the raw topic, single or in a bundle (a
    RuntimeError if none came in time)."""
    device_id = key.decode()

    def frames(record: Any) -> list[bytes]:
        raw = split_raw(record.value)
        if raw.bundled:
            return [f for f in raw.frames if RawPacket.peek(f).device_id == device_id]
        return list(raw.frames) if record.key == key else []

    records = wait_for_records(kafka, topic, key, timeout_s, keep=lambda r: bool(frames(r)))
    if not records:
        raise RuntimeError(f"no packet of {device_id!r} on {topic}: the pipeline does not flow")
    return frames(records[0])[0]


def templates_from_stream(target: Target, key: bytes, timeout_s: float) -> dict[str, Template]:
    """A real record of raw, windows and predictions (the valid traffic's), each with a
    copy made non-finite."""
    found: dict[str, Template] = {}
    topics = target.topics
    for topic in (topics.raw, topics.windows, topics.predictions):
        if topic == topics.raw:  # a packet's own frame, also when ingest bundles packets
            value = wait_for_raw_packet(target.kafka_settings, topic, key, timeout_s)
        else:
            records = wait_for_records(target.kafka_settings, topic, key, timeout_s)
            if not records:
                raise RuntimeError(
                    f"no record keyed {key!r} on {topic}: the pipeline does not flow"
                )
            value = records[0].value
        if topic == topics.raw:
            packet = RawPacket.from_bytes(value)
            nan = replace(packet, samples=np.full_like(packet.samples, np.nan)).to_bytes()
        elif topic == topics.windows:
            window = WindowMessage.from_bytes(value)
            nan = replace(window, data=np.full_like(window.data, np.nan)).to_bytes()
        else:
            nan = non_finite_json(value, ("start_time", "ingested_at"))
        found[topic] = Template(key, value, nan)
    return found


def _produce(target: Target, stage: str, records: list[PoisonRecord], result: TopicsResult) -> None:
    producer = KafkaProducer(
        **kafka_python_kwargs(
            target.kafka_settings,
            acks="all",
            max_request_size=2 * 1024 * 1024,
            client_id="harstream-fuzz",
        )
    )
    try:
        for record in records:
            try:
                metadata = producer.send(record.topic, key=record.key, value=record.value).get(30)
            except (KafkaError, ValueError) as exc:
                logger.warning("poison %s on %s not produced: %s", record.kind, record.topic, exc)
                result.unproduced[f"{record.topic}:{record.kind}"] += 1
                continue
            result.deliveries.append(
                Delivery(stage, record, metadata.partition, metadata.offset, [])
            )
    finally:
        producer.close(timeout=10)


def _collect_dead_letters(
    target: Target, result: TopicsResult, stage: str, timeout_s: float
) -> None:
    """Match dead letters to the poison by source topic, partition and offset, until every
    record of ``stage`` has one or the time is up."""
    wanted = {(d.record.topic, d.partition, d.offset): d for d in result.deliveries}
    deadline = time.monotonic() + timeout_s
    while True:
        for delivery in result.deliveries:
            delivery.dead_letters.clear()
        result.dlq_by_topic.clear()
        result.dlq_by_service.clear()
        for record in read_topic(
            target.kafka_settings, target.topics.dlq, quiet_s=1.0, timeout_s=10.0
        ):
            letter = DeadLetter.from_bytes(record.value)
            result.dlq_by_topic[letter.source_topic] += 1
            result.dlq_by_service[(letter.source_topic, letter.service)] += 1
            found = wanted.get((letter.source_topic, letter.source_partition, letter.source_offset))
            if found is not None:
                found.dead_letters.append((letter.service, letter.reason))
        waiting = [d for d in result.missing if d.stage == stage]
        if not waiting or time.monotonic() > deadline:
            return
        time.sleep(1.0)


def fuzz_topics(
    target: Target,
    fx: Fixture,
    alive: Callable[[], dict[str, bool]],
    per_kind: int,
    seed: int,
    wait_s: float = 90.0,
) -> TopicsResult:
    """Valid traffic, poison on raw, windows and predictions, valid traffic again."""
    started = time.monotonic()
    result = TopicsResult([])
    # Devices of their own: the fuzzed devices' streams are full of gaps and jumps.
    flow = register_devices(target.registry_path, 2, prefix=f"flow-{seed}")
    before, after = flow.devices
    send_valid_traffic(target, before, 12.0)
    key = before.device_id.encode()
    templates = templates_from_stream(target, key, wait_s)
    result.predictions_before = len(
        wait_for_records(target.kafka_settings, target.topics.predictions, key, wait_s)
    )
    other_key = fx.devices[2].device_id.encode()
    for stage, kinds in STAGES:
        records = poison_set(templates, other_key, per_kind, seed, kinds)
        _produce(target, stage, records, result)
        logger.info("fuzz: %d %s records produced; waiting for dead letters", len(records), stage)
        _collect_dead_letters(target, result, stage, wait_s)
        result.workers_alive[stage] = alive()
    send_valid_traffic(target, after, 12.0)
    result.predictions_after = len(
        wait_for_records(
            target.kafka_settings, target.topics.predictions, after.device_id.encode(), wait_s
        )
    )
    result.seconds = time.monotonic() - started
    return result
