"""A device's latency while another address floods ingest with random tokens, and new
devices joining together from one address meanwhile.

``python -m benchmarks.auth_flood [--flood-s 20] [--idle-s 10] [--nat-devices 200]
[--no-compare]``

Starts the embedded broker and ``harstream ingest`` (its own process, loopback only), then
for each configuration: a device with a valid token posts packets one after another from
127.0.0.1 (``--idle-s`` alone, then ``--flood-s`` under the flood) while a flooding process
posts packets with random tokens from 127.0.0.2, as fast as 32 connections allow (at most
``MAX_FLOOD_REQUESTS`` requests). Halfway through the flood, ``--nat-devices`` devices
ingest has never seen post one packet each, all at once, from one address (127.0.0.3: a
NAT, a care home's gateway): every one must be accepted, none 429, although their token
lookups together exceed the address's failure budget (only failures count). Prints the
device's p50/p90 in both phases, how the flood was answered and how the joining devices
were. By default it also runs with the failed-authentication limit lifted
(burst 10^9), which is how ingest behaved before the limit existed.

Loopback only: the flood's requests are bounded in count and time and stop by themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import secrets
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

DEVICE_ADDRESS = "127.0.0.1"
FLOOD_ADDRESS = "127.0.0.2"
NAT_ADDRESS = "127.0.0.3"
FLOOD_CONNECTIONS = 32
MAX_FLOOD_REQUESTS = 500_000
#: Samples per device packet and the pause between packets: 20 samples at 50 Hz every
#: 50 ms is 400 samples/s, under the per-device rate limit (800/s).
PACKET_SAMPLES = 20
DEVICE_PAUSE_S = 0.05


def _packet(device_id: str, seq: int, t0: float) -> bytes:
    rng = np.random.default_rng(seq)
    samples = np.column_stack(
        [rng.normal(0, 0.6, (PACKET_SAMPLES, 3)), rng.normal(0, 1.5, (PACKET_SAMPLES, 3))]
    )
    return json.dumps(
        {
            "device_id": device_id,
            "seq": seq,
            "first_sample_time": t0 + seq * PACKET_SAMPLES / 50.0,
            "sample_rate_hz": 50.0,
            "samples": samples.tolist(),
        }
    ).encode()


def _flood(port: int, seconds: float, results: Any) -> None:
    """The flooding process: random tokens from FLOOD_ADDRESS for ``seconds``."""
    import aiohttp

    body = _packet("victim", 0, time.time() - 3600)

    async def main() -> Counter[int]:
        statuses: Counter[int] = Counter()
        deadline = time.monotonic() + seconds
        connector = aiohttp.TCPConnector(local_addr=(FLOOD_ADDRESS, 0), limit=FLOOD_CONNECTIONS)
        url = f"http://127.0.0.1:{port}/v1/packets"
        sent = 0
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker() -> None:
                nonlocal sent
                while time.monotonic() < deadline and sent < MAX_FLOOD_REQUESTS:
                    sent += 1
                    headers = {
                        "Authorization": f"Bearer {secrets.token_urlsafe(32)}",
                        "Content-Type": "application/json",
                    }
                    try:
                        async with session.post(url, data=body, headers=headers) as response:
                            await response.read()
                            statuses[response.status] += 1
                    except aiohttp.ClientError:
                        statuses[0] += 1

            await asyncio.gather(*(worker() for _ in range(FLOOD_CONNECTIONS)))
        return statuses

    results.put(dict(asyncio.run(main())))


def _nat_join(port: int, tokens: dict[str, str], t0: float) -> tuple[Counter[int], list[float]]:
    """Every device of ``tokens`` posts one packet at once from NAT_ADDRESS, each on its own
    connection; their statuses and latencies."""
    import aiohttp

    async def main() -> tuple[Counter[int], list[float]]:
        statuses: Counter[int] = Counter()
        latencies: list[float] = []
        connector = aiohttp.TCPConnector(local_addr=(NAT_ADDRESS, 0), limit=len(tokens) + 1)
        url = f"http://127.0.0.1:{port}/v1/packets"
        async with aiohttp.ClientSession(connector=connector) as session:

            async def join(device_id: str, token: str) -> None:
                headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
                started = time.perf_counter()
                try:
                    body = _packet(device_id, 0, t0)
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        statuses[response.status] += 1
                except aiohttp.ClientError:
                    statuses[0] += 1
                latencies.append(time.perf_counter() - started)

            await asyncio.gather(*(join(d, t) for d, t in tokens.items()))
        return statuses, latencies

    return asyncio.run(main())


def _device_phase(
    port: int, token: str, seconds: float, seq: int, t0: float
) -> tuple[list[float], Counter[int], int]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=30, source_address=(DEVICE_ADDRESS, 0)
    )
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            body = _packet("bench-device", seq, t0)
            started = time.perf_counter()
            conn.request(
                "POST",
                "/v1/packets",
                body,
                {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            response.read()
            latencies.append(time.perf_counter() - started)
            statuses[response.status] += 1
            seq += 1
            time.sleep(DEVICE_PAUSE_S)  # a device's cadence, not a wait for an event
    finally:
        conn.close()
    return latencies, statuses, seq


def _ms(values: list[float], q: float) -> float:
    return 1000.0 * float(np.quantile(values, q)) if values else float("nan")


def run_once(
    label: str,
    extra_env: dict[str, str],
    idle_s: float,
    flood_s: float,
    workdir: Path,
    nat_devices: int = 0,
) -> tuple[float, float]:
    from services.common.broker import (
        EmbeddedBroker,
        free_port,
    )
    from services.common.kafka.topics import create_topics
    from services.common.processes import ServiceProcess
    from services.ingest.registry import NewDevice, SqliteRegistry
    from shared.settings import StreamSettings

    run_dir = workdir / label.replace(" ", "-")
    run_dir.mkdir()
    with EmbeddedBroker(log_path=run_dir / "broker.log") as broker:
        prefix = f"bench-{secrets.token_hex(4)}"
        create_topics(
            StreamSettings(
                kafka_bootstrap_servers=broker.bootstrap_servers,
                kafka_profile="tansu",
                topic_prefix=prefix,
            )
        )
        registry_path = run_dir / "devices.db"
        registry = SqliteRegistry(registry_path)
        _, token = registry.add("bench-device")
        joining = {
            record.device_id: new_token
            for record, new_token in registry.add_many(
                [NewDevice(f"nat-{i:04d}") for i in range(nat_devices)]
            )
        }
        registry.close()
        port = free_port()
        env = {
            "HARSTREAM_INGEST_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "HARSTREAM_INGEST_KAFKA_PROFILE": "tansu",
            "HARSTREAM_INGEST_TOPIC_PREFIX": prefix,
            "HARSTREAM_INGEST_REGISTRY_URL": f"sqlite:///{registry_path}",
            "HARSTREAM_INGEST_HOST": "127.0.0.1",
            "HARSTREAM_INGEST_PORT": str(port),
            "HARSTREAM_INGEST_METRICS_PORT": "0",  # not measured here; never a port clash
            **extra_env,
        }
        ingest = ServiceProcess.harstream("ingest", ["ingest"], env, run_dir)
        ingest.start()
        try:
            ingest.wait_http(f"http://127.0.0.1:{port}/readyz", 60)
            t0 = time.time() - 3600
            _, _, seq = _device_phase(port, token, 2.0, 0, t0)  # warm-up
            idle, idle_statuses, seq = _device_phase(port, token, idle_s, seq, t0)
            results: Any = multiprocessing.get_context("spawn").Queue()
            flooder = multiprocessing.get_context("spawn").Process(
                target=_flood, args=(port, flood_s, results)
            )
            flooder.start()
            flooded, flooded_statuses, seq = _device_phase(port, token, flood_s / 2, seq, t0)
            nat: list[tuple[Counter[int], list[float]]] = []
            joiner = threading.Thread(target=lambda: nat.append(_nat_join(port, joining, t0)))
            joiner.start()
            more, more_statuses, seq = _device_phase(port, token, flood_s / 2, seq, t0)
            joiner.join(60)
            flooded += more
            flooded_statuses += more_statuses
            flood_statuses: dict[int, int] = results.get(timeout=flood_s + 60)
            flooder.join(30)
        finally:
            ingest.stop()
    total = sum(flood_statuses.values())
    print(f"{label}:")
    print(
        f"  device idle:    p50 {_ms(idle, 0.5):7.2f} ms  p90 {_ms(idle, 0.9):7.2f} ms  "
        f"({len(idle)} requests, {dict(idle_statuses)})"
    )
    print(
        f"  device flooded: p50 {_ms(flooded, 0.5):7.2f} ms  p90 {_ms(flooded, 0.9):7.2f} ms  "
        f"({len(flooded)} requests, {dict(flooded_statuses)})"
    )
    print(
        f"  flood: {total} requests in {flood_s:g} s ({total / flood_s:,.0f}/s) from "
        f"{FLOOD_ADDRESS}, answered {dict(sorted(flood_statuses.items()))}"
    )
    ratio = statistics.median(flooded) / statistics.median(idle)
    print(f"  flooded/idle p50: {ratio:.2f}x")
    if nat_devices:
        nat_statuses, nat_latencies = nat[0] if nat else (Counter[int](), [])
        print(
            f"  {nat_devices} new devices joining at once from {NAT_ADDRESS} during the flood: "
            f"answered {dict(sorted(nat_statuses.items()))}, p50 {_ms(nat_latencies, 0.5):.1f} "
            f"ms, p99 {_ms(nat_latencies, 0.99):.1f} ms"
        )
    return _ms(idle, 0.5), _ms(flooded, 0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood-s", type=float, default=20.0)
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument(
        "--no-compare", action="store_true", help="Skip the run with the limit lifted."
    )
    parser.add_argument(
        "--nat-devices",
        type=int,
        default=200,
        help="new devices joining at once from one address during the flood [200]",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run_once(
            "failed-authentication limit on (defaults)",
            {},
            args.idle_s,
            args.flood_s,
            Path(tmp),
            args.nat_devices,
        )
        if not args.no_compare:
            run_once(
                "limit lifted (auth_failure_burst 10^9)",
                {"HARSTREAM_INGEST_AUTH_FAILURE_BURST": "1000000000"},
                args.idle_s,
                args.flood_s,
                Path(tmp),
                args.nat_devices,
            )


if __name__ == "__main__":
    main()
