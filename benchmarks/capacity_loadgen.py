"""Can the load generator offer the load? The fleet against a sink that answers 202 at once.

``python -m benchmarks.capacity_loadgen [--devices 5000] [--seconds 30] [--processes 2]
[--client fleet|aiohttp] [--body json|msgpack] [--gateways G] [--gateway-interval-s 1]
[--sink protocol|aiohttp]``

Starts a sink on 127.0.0.1 (its own process on uvloop, a bare asyncio protocol: reads each
request and answers ``202`` with no work; ``--sink aiohttp``: an aiohttp app doing the same,
for aiohttp's own share of ingest's CPU per request) and runs N devices against it at real time for
``--seconds``; prints offered vs accepted packets/s, client latency, and the CPU of the
generator (per packet) and of the sink. ``--client aiohttp`` runs the same schedule through
one aiohttp session in one process instead (one connection per device, as the fleet), to
compare the two clients' CPU per request. ``--gateways G`` has G gateways forward the
devices' packets in batches (the sink then decodes each batch and answers a result per
packet, as ingest does); ``--body msgpack`` sends MessagePack. Loopback only; bounded in
time.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import time
from typing import Any, cast

import msgpack  # type: ignore[import-untyped]
import orjson

from benchmarks.capacity_stats import process_cpu_seconds, threads_cpu_seconds
from services.common.eventloop import run
from services.demo.fleet import DeviceSpec, FleetCounters, packets_due, phase_of
from services.demo.fleetgen import Fleet, FleetConfig

_ANSWER = b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def _batch_answer(head: bytes, body: bytes) -> bytes:
    """What ingest answers a batch whose packets all pass: a 202 result per packet."""
    packets = (msgpack.unpackb if b"msgpack" in head else orjson.loads)(body)["packets"]
    results = [
        {"index": i, "device_id": None, "seq": None, "status": 202} for i in range(len(packets))
    ]
    answer = orjson.dumps({"accepted": len(packets), "refused": 0, "results": results})
    return (
        b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % len(answer)
    ) + answer


class _Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio's: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            assert self.transport is not None
            batch = head.startswith(b"post /v1/packets:batch ")
            self.transport.write(_batch_answer(head, body) if batch else _ANSWER)


def _sink_main(sock: socket.socket, kind: str) -> None:
    async def serve_protocol() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Sink, sock=sock, backlog=4096)
        await server.serve_forever()

    async def serve_aiohttp() -> None:
        # aiohttp with no work in the handler and ingest's collector settings: what aiohttp
        # alone costs a request. Not ingest's listener (no connection limits or timers, no
        # middleware): their cost counts as ingest's own.
        from aiohttp import web

        from services.ingest.app import tune_gc

        tune_gc()

        async def accept(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(status=202, body=b"{}", content_type="application/json")

        app = web.Application()
        app.router.add_post("/v1/packets", accept)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock, backlog=4096).start()
        await asyncio.Event().wait()

    # Both on ingest's event loop (uvloop where installed).
    run(serve_aiohttp() if kind == "aiohttp" else serve_protocol(), "uvloop")


async def _aiohttp_fleet(url: str, devices: int, seconds: float) -> FleetCounters:
    """The same schedule through aiohttp (one session, a connection per device)."""
    import aiohttp

    from services.demo.fleet import packet_body

    counters = FleetCounters()
    start = time.time() + 0.5
    body = packet_body(
        "d", 0, start, 50.0, b"[" + b",".join([b"[0.1,0.2,0.3,0.4,0.5,0.6]"] * 50) + b"]"
    )
    connector = aiohttp.TCPConnector(limit=devices + 10)

    async def device(i: int, session: aiohttp.ClientSession) -> None:
        phase = phase_of(i)
        seq = 0
        while (due := start + phase + seq) < start + seconds:
            await asyncio.sleep(max(0.0, due - time.time()))
            t0 = time.perf_counter()
            async with session.post(
                url + "/v1/packets",
                data=body,
                headers={"Authorization": "Bearer x", "Content-Type": "application/json"},
            ) as response:
                await response.read()
                counters.statuses[response.status] += 1
                if response.status == 202:
                    counters.accepted += 1
            counters.observe_latency(time.perf_counter() - t0)
            seq += 1

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(device(i, session) for i in range(devices)))
    counters.offered = sum(packets_due(start, phase_of(i), start + seconds) for i in range(devices))
    return counters


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.capacity_loadgen")
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--client", choices=("fleet", "aiohttp"), default="fleet")
    parser.add_argument("--body", choices=("json", "msgpack"), default="json")
    parser.add_argument("--gateways", type=int, default=0, help="0: every device posts")
    parser.add_argument("--gateway-interval-s", type=float, default=1.0)
    parser.add_argument(
        "--sink",
        choices=("protocol", "aiohttp"),
        default="protocol",
        help="protocol: a bare asyncio protocol; aiohttp: an aiohttp app whose handler reads "
        "the body and answers 202 (aiohttp's own cost per request; devices posting only)",
    )
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=10.0,
        help="fleet: measure after this long (5,000 connections opening at once is a "
        "transient of its own)",
    )
    args = parser.parse_args(argv)
    if args.sink == "aiohttp" and args.gateways:
        parser.error("--sink aiohttp answers devices' own packets only (no --gateways)")

    sock = socket.create_server(("127.0.0.1", 0), backlog=4096)
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    sink = multiprocessing.get_context("spawn").Process(
        target=_sink_main, args=(sock, args.sink), daemon=True
    )
    sink.start()
    sock.close()
    assert sink.pid is not None
    if args.client == "aiohttp":
        me = os.getpid()
        cpu0, sink0, t0 = process_cpu_seconds(me), threads_cpu_seconds(sink.pid), time.time()
        counters = asyncio.run(_aiohttp_fleet(url, args.devices, args.seconds))
        dt = time.time() - t0
        gen_cpu = process_cpu_seconds(me) - cpu0
    else:
        specs = [DeviceSpec(i, f"d-{i:05d}", "x" * 43) for i in range(args.devices)]
        config = FleetConfig(
            url,
            body=args.body,
            gateways=args.gateways,
            gateway_interval_s=args.gateway_interval_s,
        )
        with Fleet(config, processes=args.processes) as fleet:
            pids = fleet.pids
            fleet.add(specs)
            time.sleep(args.warmup_s)
            cpu0 = sum(process_cpu_seconds(p) for p in pids)
            # The sink runs one thread: counted to the nanosecond, not in 10 ms ticks.
            sink0, t0 = threads_cpu_seconds(sink.pid), time.time()
            base = fleet.snapshot()
            time.sleep(args.seconds)
            counters = fleet.snapshot().minus(base)
            dt = time.time() - t0
            gen_cpu = sum(process_cpu_seconds(p) for p in pids) - cpu0
    sink_cpu = threads_cpu_seconds(sink.pid) - sink0
    sink.kill()
    sink.join(5)
    figures = {
        "client": args.client,
        "sink": args.sink,
        "body": args.body,
        "gateways": args.gateways,
        "devices": args.devices,
        "processes": args.processes if args.client == "fleet" else 1,
        "seconds": round(dt, 1),
        "offered_per_s": round(counters.offered / dt, 1),
        "accepted_per_s": round(counters.accepted / dt, 1),
        "late": counters.late,
        "failed": sum(counters.failed.values()),
        "retries": counters.retries,
        "client_p50_ms": round((counters.latency_quantile(0.5) or 0) * 1000, 2),
        "client_p99_ms": round((counters.latency_quantile(0.99) or 0) * 1000, 2),
        "generator_cpu_s_per_s": round(gen_cpu / dt, 3),
        "generator_cpu_us_per_packet": round(gen_cpu / max(counters.accepted, 1) * 1e6, 1),
        "requests_per_s": round(counters.requests / dt, 1),
        "sink_cpu_s_per_s": round(sink_cpu / dt, 3),
        "sink_cpu_us_per_request": round(sink_cpu / max(counters.requests, 1) * 1e6, 1),
    }
    for key, value in figures.items():
        print(f"{key:>28}: {value}")
    return figures


if __name__ == "__main__":
    main()
