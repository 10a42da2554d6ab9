"""The fleet load generator: N live wearables against an ingest URL, at real time.

Unlike :mod:`services.demo.loadgen` (a replay at any speed through one aiohttp session of
64 connections, each request awaited in turn) this offers the load a fleet really puts on
ingest: one keep-alive connection per device, one 50-sample packet per device per second,
devices spread over the second (:func:`services.demo.fleet.phase_of`), in several worker
processes (each an asyncio loop owning a slice of the devices) so the generator is not
what limits a benchmark. HTTP/1.1 is written by hand over asyncio streams: a request is
one pre-rendered write and a read of the answer's head, a fraction of aiohttp's client
cost per request.

A device sends its packets in order over its one connection, like a real wearable; a packet
due while the previous one is still unanswered waits (counted ``late``). A packet that
times out or is answered 429/5xx is sent again with the project's backoff
(:func:`services.demo.fleet.retry_delay`), at most ``max_retries`` times, then given up
and counted: never a retry storm, never a silent loss.

Gateway mode (``gateways`` > 0): device ``i`` is forwarded by gateway ``i % gateways``,
and each gateway, on one keep-alive connection from one address of its own (a hub behind
a care home's NAT), posts every ``gateway_interval_s`` one ``POST /v1/packets:batch`` with
each of its devices' packets that is due (devices still make one packet per period each,
on the same schedule). With ``gateway_tokens`` each gateway authenticates with a credential
of its own (:func:`register_gateways`) and its batches carry no device tokens. It reads
each packet's result: a packet answered 429 or 5xx (or in a batch that got no answer) goes
into a later batch, after the backoff, at most ``max_retries`` times; a device's packets
are sent in order.

Bodies are JSON or MessagePack (``body``; MessagePack packets carry their samples as packed
float32, pre-rendered like the JSON ones).

MQTT (``url`` ``mqtt://host:port``): each device is an MQTT 5 client of its own
(:class:`services.mqtt_bridge.loadgen.Publisher`, logged in with its id and token) and
publishes the same packets at QoS 1 to its own topic on the same schedule, awaiting each
PUBACK before the next packet (counted as the 202 it stands for; a refusal as 403).

The parent talks to each worker over a pipe: ``add`` devices, ``snapshot`` the counters,
``accepted`` samples per device (loss accounting), ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from services.common import eventloop
from services.common.kafka.backoff import BackoffPolicy
from services.demo.fleet import (
    CONTENT_TYPES,
    RETRIABLE_STATUSES,
    BodyKind,
    DeviceSpec,
    FleetCounters,
    ResponseError,
    ResponseHead,
    batch_body,
    gateway_of,
    packet_body,
    packet_msgpack,
    packets_due,
    parse_batch_answer,
    parse_response_head,
    phase_of,
    render_chunks,
    render_packed_chunks,
    retry_delay,
    source_address,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetConfig:
    #: Ingest base URL (``http://127.0.0.1:8080``), or an MQTT broker (``mqtt://host:port``).
    url: str
    packet_size: int = 50
    sample_rate_hz: float = 50.0
    #: HAPT subjects whose recordings the devices replay (None: the test subjects).
    subjects: tuple[int, ...] | None = None
    #: Longest wait for one answer before the packet counts as timed out (seconds).
    request_timeout_s: float = 10.0
    max_retries: int = 5
    #: Each device (each gateway) connects from its own loopback address
    #: (:func:`source_address`); only for a loopback ingest URL.
    spread_sources: bool = True
    backoff: BackoffPolicy = field(default_factory=lambda: BackoffPolicy(0.2, 5.0, 2.0, 0.5))
    #: Body format of every request.
    body: BodyKind = "json"
    #: 0: every device posts its own packets; else this many gateways forward them.
    gateways: int = 0
    #: How often a gateway posts the packets that are due (seconds).
    gateway_interval_s: float = 1.0
    #: Gateway ``i``'s own token (:func:`register_gateways`), one per gateway; empty: each
    #: batch carries its devices' tokens instead.
    gateway_tokens: tuple[str, ...] = ()
    #: Most packets per batch (ingest's max_batch_packets) and most bytes of a batch's
    #: packets (under ingest's max_body_bytes, 1 MiB, with room for the tokens): more due
    #: go in several batches, as a gateway catching up after an outage must send them.
    max_batch_packets: int = 1000
    max_batch_bytes: int = 1024 * 1024 - 64 * 1024

    def __post_init__(self) -> None:
        if self.gateways and self.mqtt:
            raise ValueError("gateways post batches over HTTP: no gateways with an mqtt:// URL")
        if self.gateway_tokens and len(self.gateway_tokens) != self.gateways:
            raise ValueError(
                f"{len(self.gateway_tokens)} gateway tokens for {self.gateways} gateways"
            )

    @property
    def mqtt(self) -> bool:
        """Devices publish to an MQTT broker rather than post to ingest."""
        return urlsplit(self.url).scheme == "mqtt"

    @property
    def period_s(self) -> float:
        """Seconds between a device's packets (one packet's worth of samples)."""
        return self.packet_size / self.sample_rate_hz

    def worker_of(self, index: int, processes: int) -> int:
        """Which worker process runs device ``index`` (a gateway's devices share one)."""
        owner = gateway_of(index, self.gateways) if self.gateways else index
        return owner % processes


# -- registration ---------------------------------------------------------------------------


def register_fleet(registry_url: str, count: int, prefix: str = "fleet") -> list[DeviceSpec]:
    """Register ``count`` devices ``<prefix>-00001``... with fresh tokens, in one transaction
    (:meth:`~services.ingest.registry.DeviceRegistry.add_many`: 5,000 devices in well under
    a second, where ``add`` commits per device)."""
    from services.ingest.registry import NewDevice, open_registry  # noqa: PLC0415

    ids = [f"{prefix}-{i + 1:05d}" for i in range(count)]
    registry = open_registry(registry_url)
    try:
        added = registry.add_many([NewDevice(device_id, "fleet") for device_id in ids])
    finally:
        registry.close()
    return [DeviceSpec(i, record.device_id, token) for i, (record, token) in enumerate(added)]


def register_gateways(
    registry_url: str, devices: Sequence[DeviceSpec], gateways: int, prefix: str = "hub"
) -> tuple[str, ...]:
    """Register ``gateways`` gateways ``<prefix>-001``..., gateway ``i`` bound to the
    ``devices`` it forwards (:func:`~services.demo.fleet.gateway_of`); their tokens, in
    order."""
    from services.ingest.registry import open_registry  # noqa: PLC0415

    registry = open_registry(registry_url)
    try:
        tokens = []
        for number in range(gateways):
            bound = [d.device_id for d in devices if gateway_of(d.index, gateways) == number]
            _, token = registry.add_gateway(f"{prefix}-{number + 1:03d}", bound, "fleet")
            tokens.append(token)
    finally:
        registry.close()
    return tuple(tokens)


# -- one device -----------------------------------------------------------------------------


class _HttpConnection:
    """One keep-alive HTTP/1.1 connection, opened on first use and after a failure."""

    def __init__(self, host: str, port: int, source: str | None = None) -> None:
        self.host, self.port = host, port
        self.local_addr = None if source is None else (source, 0)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, data: bytes) -> tuple[int, float | None]:
        """``(status, retry_after)`` of the answer."""
        head, _ = await self.exchange(data)
        return head.status, head.retry_after

    async def exchange(self, data: bytes) -> tuple[ResponseHead, bytes]:
        """Send one request; the answer's head and body."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, local_addr=self.local_addr
            )
        assert self._reader is not None
        # One request in flight per connection and ~6 KB each: the socket buffer takes it
        # whole, so no drain() (a coroutine per request saved).
        self._writer.write(data)
        head = parse_response_head(await self._reader.readuntil(b"\r\n\r\n"))
        body = b""
        if head.content_length:
            body = await self._reader.readexactly(head.content_length)
        if head.close:
            self.close()
        return head, body

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


@dataclass
class _DeviceState:
    spec: DeviceSpec
    start: float
    phase: float
    accepted_samples: int = 0
    gave_up: int = 0
    #: Gateway mode: the next packet to make, and packets made but not yet accepted or
    #: given up, oldest first.
    next_seq: int = 0
    next_chunk: int = 0
    pending: list[_Pending] = field(default_factory=list)


@dataclass
class _Pending:
    """A packet a gateway holds until it is accepted or given up."""

    seq: int
    body: bytes
    due: float
    attempts: int = 0
    #: Not to be sent again before this (Unix time): the backoff after a refusal.
    not_before: float = 0.0


@dataclass
class _Gateway:
    index: int
    devices: list[_DeviceState] = field(default_factory=list)


class _Worker:
    """The devices of one worker process, on its asyncio loop."""

    def __init__(self, config: FleetConfig, chunks: list[list[bytes]], seed: int) -> None:
        self.config = config
        self.chunks = chunks
        self.counters = FleetCounters()
        self.devices: list[_DeviceState] = []
        self.gateways: dict[int, _Gateway] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.rng = random.Random(seed)
        parts = urlsplit(config.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (1883 if config.mqtt else 80)
        self.spread_sources = config.spread_sources and self.host.startswith("127.")

    def add(self, specs: Sequence[DeviceSpec], start_at: float) -> None:
        config = self.config
        for spec in specs:
            state = _DeviceState(spec, start_at, phase_of(spec.index, config.period_s))
            self.devices.append(state)
            if not config.gateways:
                run = self._run_mqtt if config.mqtt else self._run
                self.tasks.append(asyncio.create_task(run(state)))
                continue
            chunks = self.chunks[spec.recording(len(self.chunks))]
            state.next_chunk = spec.first_chunk(len(chunks))
            number = gateway_of(spec.index, config.gateways)
            gateway = self.gateways.get(number)
            if gateway is None:
                gateway = self.gateways[number] = _Gateway(number)
                self.tasks.append(asyncio.create_task(self._run_gateway(gateway, start_at)))
            gateway.devices.append(state)

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        period = self.config.period_s
        self.counters.offered = sum(
            packets_due(d.start, d.phase, now, period) for d in self.devices
        )
        return self.counters.to_dict()

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _run(self, device: _DeviceState) -> None:
        config, spec = self.config, device.spec
        chunks = self.chunks[spec.recording(len(self.chunks))]
        chunk = spec.first_chunk(len(chunks))
        period = config.period_s
        # Device clock of sample 0: the first packet is sent once its last sample is measured.
        origin = device.start + device.phase - period
        prefix = (
            f"POST /v1/packets HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {spec.token}\r\n"
            f"Content-Type: {CONTENT_TYPES[config.body]}\r\nContent-Length: "
        ).encode()
        source = source_address(spec.index) if self.spread_sources else None
        connection = _HttpConnection(self.host, self.port, source)
        seq = 0
        try:
            while True:
                wait = device.start + device.phase + seq * period - time.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                elif -wait > period:
                    self.counters.late += 1
                body = self._packet(spec.device_id, seq, origin + seq * period, chunks, chunk)
                request = b"".join((prefix, str(len(body)).encode(), b"\r\n\r\n", body))
                if await self._send(connection, request):
                    device.accepted_samples += config.packet_size
                else:
                    device.gave_up += 1
                seq += 1
                chunk += 1
        finally:
            connection.close()

    async def _run_mqtt(self, device: _DeviceState) -> None:
        """:meth:`_run` over MQTT. No timeout or retry of our own: paho keeps a packet
        until its PUBACK and sends it again after a reconnect (a device does the same)."""
        from services.mqtt_bridge.loadgen import NOT_AUTHORIZED_STATUS, Publisher  # noqa: PLC0415
        from services.mqtt_bridge.packets import device_topic  # noqa: PLC0415

        config, spec, counters = self.config, device.spec, self.counters
        chunks = self.chunks[spec.recording(len(self.chunks))]
        chunk = spec.first_chunk(len(chunks))
        period = config.period_s
        origin = device.start + device.phase - period  # device clock of sample 0
        topic = device_topic(spec.device_id)
        loop = asyncio.get_running_loop()
        publisher = Publisher(loop, self.host, self.port, spec.device_id, spec.token)
        seq = 0
        try:
            await publisher.connected.wait()
            while True:
                wait = device.start + device.phase + seq * period - time.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                elif -wait > period:
                    counters.late += 1
                body = self._packet(spec.device_id, seq, origin + seq * period, chunks, chunk)
                counters.requests += 1
                t0 = time.perf_counter()
                code = await publisher.publish(topic, body)
                counters.observe_latency(time.perf_counter() - t0)
                if code.is_failure:
                    counters.statuses[NOT_AUTHORIZED_STATUS] += 1
                    counters.failed[NOT_AUTHORIZED_STATUS] += 1
                    device.gave_up += 1
                else:
                    counters.statuses[202] += 1
                    counters.accepted += 1
                    counters.samples_accepted += config.packet_size
                    device.accepted_samples += config.packet_size
                seq += 1
                chunk += 1
        finally:
            publisher.close()

    async def _send(self, connection: _HttpConnection, request: bytes) -> bool:
        """Send until accepted (True) or given up (False)."""
        counters, config = self.counters, self.config
        attempt = 0
        while True:
            counters.requests += 1
            retry_after: float | None = None
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(config.request_timeout_s):
                    status, retry_after = await connection.request(request)
                counters.observe_latency(time.perf_counter() - t0)
            except TimeoutError:
                status = 0
                counters.timeouts += 1
                connection.close()
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ResponseError):
                status = 0
                counters.connection_errors += 1
                connection.close()
            counters.statuses[status] += 1
            if status == 202:
                counters.accepted += 1
                counters.samples_accepted += config.packet_size
                return True
            attempt += 1
            delay = retry_delay(
                status, attempt, config.max_retries, config.backoff, retry_after, self.rng
            )
            if delay is None:
                counters.failed[status] += 1
                if status in RETRIABLE_STATUSES:
                    counters.gave_up += 1
                return False
            counters.retries += 1
            await asyncio.sleep(delay)

    def _packet(
        self, device_id: str, seq: int, first_sample_time: float, chunks: list[bytes], chunk: int
    ) -> bytes:
        rendered = chunks[chunk % len(chunks)]
        rate = self.config.sample_rate_hz
        if self.config.body == "msgpack":
            return packet_msgpack(device_id, seq, first_sample_time, rate, rendered)
        return packet_body(device_id, seq, first_sample_time, rate, rendered)

    # -- gateways -----------------------------------------------------------------------------

    def _make_due(self, device: _DeviceState, now: float) -> None:
        """Render the device's packets whose last sample has been measured by ``now``."""
        period = self.config.period_s
        spec = device.spec
        chunks = self.chunks[spec.recording(len(self.chunks))]
        origin = device.start + device.phase - period  # device clock of sample 0
        while (due := device.start + device.phase + device.next_seq * period) <= now:
            seq = device.next_seq
            body = self._packet(
                spec.device_id, seq, origin + seq * period, chunks, device.next_chunk
            )
            device.pending.append(_Pending(seq, body, due))
            device.next_seq += 1
            device.next_chunk += 1

    async def _run_gateway(self, gateway: _Gateway, start_at: float) -> None:
        """Every ``gateway_interval_s`` (from the gateway's own phase), post what is due."""
        config = self.config
        interval = config.gateway_interval_s
        source = source_address(gateway.index) if self.spread_sources else None
        connection = _HttpConnection(self.host, self.port, source)
        credential = (
            f"Authorization: Bearer {config.gateway_tokens[gateway.index]}\r\n"
            if config.gateway_tokens
            else ""
        )
        prefix = (
            f"POST /v1/packets:batch HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{credential}"
            f"Content-Type: {CONTENT_TYPES[config.body]}\r\nContent-Length: "
        ).encode()
        next_at = start_at + phase_of(gateway.index, interval)
        try:
            while True:
                wait = next_at - time.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                now = time.time()
                batch: list[tuple[_DeviceState, _Pending]] = []
                for device in gateway.devices:
                    self._make_due(device, now)
                    # In order: a device's later packets wait while an earlier one backs off.
                    for item in device.pending:
                        if item.not_before > now:
                            break
                        batch.append((device, item))
                for part in split_batch(batch, config.max_batch_packets, config.max_batch_bytes):
                    await self._post_batch(connection, prefix, part)
                # After a slow answer the next batch goes at once, without a burst to catch up.
                next_at = max(next_at + interval, time.time())
        finally:
            connection.close()

    async def _post_batch(
        self,
        connection: _HttpConnection,
        prefix: bytes,
        batch: list[tuple[_DeviceState, _Pending]],
    ) -> None:
        config, counters = self.config, self.counters
        now = time.time()
        tokens = (
            None
            if config.gateway_tokens
            else list({device.spec.device_id: device.spec.token for device, _ in batch}.items())
        )
        body = batch_body(config.body, tokens, [item.body for _, item in batch])
        request = b"".join((prefix, str(len(body)).encode(), b"\r\n\r\n", body))
        counters.requests += 1
        for _, item in batch:
            if item.attempts == 0 and now - item.due > config.period_s:
                counters.late += 1
        statuses: list[tuple[int, float | None]]
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(config.request_timeout_s):
                head, answer = await connection.exchange(request)
            counters.observe_latency(time.perf_counter() - t0)
            if head.status in (202, 207):
                statuses = [
                    (a.status, a.retry_after) for a in parse_batch_answer(answer, len(batch))
                ]
            else:  # the whole request refused: each packet shares its fate
                statuses = [(head.status, head.retry_after)] * len(batch)
        except TimeoutError:
            counters.timeouts += 1
            connection.close()
            statuses = [(0, None)] * len(batch)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ResponseError):
            counters.connection_errors += 1
            connection.close()
            statuses = [(0, None)] * len(batch)
        now = time.time()
        for (device, item), (status, retry_after) in zip(batch, statuses, strict=True):
            counters.statuses[status] += 1
            if status == 202:
                counters.accepted += 1
                counters.samples_accepted += config.packet_size
                device.accepted_samples += config.packet_size
                device.pending.remove(item)
                continue
            item.attempts += 1
            delay = retry_delay(
                status, item.attempts, config.max_retries, config.backoff, retry_after, self.rng
            )
            if delay is None:
                counters.failed[status] += 1
                if status in RETRIABLE_STATUSES:
                    counters.gave_up += 1
                device.gave_up += 1
                device.pending.remove(item)
                continue
            counters.retries += 1
            item.not_before = now + delay


def split_batch(
    batch: list[tuple[_DeviceState, _Pending]], max_packets: int, max_bytes: int
) -> list[list[tuple[_DeviceState, _Pending]]]:
    """``batch`` in consecutive parts of at most ``max_packets`` packets and ``max_bytes``
    of packet bodies each (a packet larger than that alone goes alone)."""
    parts: list[list[tuple[_DeviceState, _Pending]]] = []
    part: list[tuple[_DeviceState, _Pending]] = []
    size = 0
    for entry in batch:
        length = len(entry[1].body)
        if part and (len(part) >= max_packets or size + length > max_bytes):
            parts.append(part)
            part, size = [], 0
        part.append(entry)
        size += length
    if part:
        parts.append(part)
    return parts


# -- worker process -------------------------------------------------------------------------


def _load_chunks(config: FleetConfig) -> list[list[bytes]]:
    from shared.data.cache import HaptCache, default_cache_dir  # noqa: PLC0415
    from shared.data.splits import TEST_SUBJECTS  # noqa: PLC0415

    cache = HaptCache(default_cache_dir())
    cache.ensure()
    subjects = list(config.subjects) if config.subjects else list(TEST_SUBJECTS)
    recordings = cache.load(subjects=subjects)
    render = render_packed_chunks if config.body == "msgpack" else render_chunks
    chunks = [render(r.samples, config.packet_size) for r in recordings]
    return [c for c in chunks if c]


def _worker_main(pipe: Connection, config: FleetConfig, seed: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    chunks = _load_chunks(config)
    # uvloop: the generator's own CPU per request, taken from the pipeline it measures.
    eventloop.run(_serve(pipe, config, chunks, seed), "uvloop")


async def _serve(
    pipe: Connection, config: FleetConfig, chunks: list[list[bytes]], seed: int
) -> None:
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[Any] = asyncio.Queue()

    def read_commands() -> None:
        # Blocking reads in a thread: the loop never waits on the pipe.
        while True:
            try:
                message = pipe.recv()
            except (EOFError, OSError):
                message = ("stop",)
            loop.call_soon_threadsafe(commands.put_nowait, message)
            if message[0] == "stop":
                return

    threading.Thread(target=read_commands, name="fleet-commands", daemon=True).start()
    worker = _Worker(config, chunks, seed)
    pipe.send(("ready", None))
    while True:
        command, *args = await commands.get()
        if command == "add":
            worker.add(args[0], args[1])
            pipe.send(("added", len(worker.devices)))
        elif command == "snapshot":
            pipe.send(("snapshot", worker.snapshot()))
        elif command == "accepted":
            pipe.send(
                (
                    "accepted",
                    {d.spec.device_id: (d.accepted_samples, d.gave_up) for d in worker.devices},
                )
            )
        elif command == "stop":
            await worker.stop()
            with contextlib.suppress(OSError):
                pipe.send(("stopped", worker.snapshot()))
            return


# -- the parent's handle ----------------------------------------------------------------------


class Fleet:
    """Worker processes simulating devices; ``with Fleet(config, processes=2) as fleet:``.

    Device ``i`` lives in worker ``i % processes`` (gateway mode: its gateway's worker,
    :meth:`FleetConfig.worker_of`); :meth:`add` starts devices (a ramp adds more while the
    first keep sending)."""

    def __init__(self, config: FleetConfig, processes: int = 2, start_timeout_s: float = 60.0):
        if processes < 1:
            raise ValueError("need at least one process")
        self.config = config
        self._start_timeout_s = start_timeout_s
        # spawn: the parent may run threads (Kafka clients) that a fork would copy mid-lock.
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        for n in range(processes):
            parent, child = context.Pipe()
            process = context.Process(
                target=_worker_main, args=(child, config, n), name=f"fleet-{n}", daemon=True
            )
            self._pipes.append(parent)
            self._processes.append(process)
        self.devices = 0

    def start(self) -> Fleet:
        for process in self._processes:
            process.start()
        for pipe in self._pipes:
            self._expect(pipe, "ready", self._start_timeout_s)
        return self

    def add(self, specs: Sequence[DeviceSpec], start_at: float | None = None) -> None:
        """Start ``specs``; their first packets are due at ``start_at`` (default: in 0.5 s)
        plus each device's phase."""
        start_at = time.time() + 0.5 if start_at is None else start_at
        n = len(self._pipes)
        for w, pipe in enumerate(self._pipes):
            mine = [s for s in specs if self.config.worker_of(s.index, n) == w]
            pipe.send(("add", mine, start_at))
        for pipe in self._pipes:
            self._expect(pipe, "added", 30.0)
        self.devices += len(specs)

    def snapshot(self) -> FleetCounters:
        for pipe in self._pipes:
            pipe.send(("snapshot",))
        return FleetCounters.total(
            FleetCounters.from_dict(self._expect(pipe, "snapshot", 30.0)) for pipe in self._pipes
        )

    def accepted(self) -> dict[str, tuple[int, int]]:
        """``{device_id: (samples accepted, packets given up)}``."""
        for pipe in self._pipes:
            pipe.send(("accepted",))
        out: dict[str, tuple[int, int]] = {}
        for pipe in self._pipes:
            out.update(self._expect(pipe, "accepted", 30.0))
        return out

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    def stop(self) -> FleetCounters | None:
        """Stop every device; the final counters (None if a worker had already gone)."""
        finals: list[FleetCounters] = []
        for pipe in self._pipes:
            with contextlib.suppress(OSError, ValueError):
                pipe.send(("stop",))
        for pipe in self._pipes:
            with contextlib.suppress(OSError, EOFError, TimeoutError, RuntimeError):
                finals.append(FleetCounters.from_dict(self._expect(pipe, "stopped", 30.0)))
        for process in self._processes:
            process.join(10.0)
            if process.is_alive():
                process.kill()
                process.join(5.0)
        for pipe in self._pipes:
            pipe.close()
        return FleetCounters.total(finals) if len(finals) == len(self._pipes) else None

    def __enter__(self) -> Fleet:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _expect(self, pipe: Connection, kind: str, timeout_s: float) -> Any:
        if not pipe.poll(timeout_s):
            raise TimeoutError(f"fleet worker did not answer {kind!r} in {timeout_s:.0f} s")
        got, payload = pipe.recv()
        if got != kind:
            raise RuntimeError(f"fleet worker answered {got!r}, expected {kind!r}")
        return payload
