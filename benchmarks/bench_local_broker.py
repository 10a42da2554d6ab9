"""The local broker's CPU at a constant load, over time: does it grow with what it holds?

    python -m benchmarks.bench_local_broker [--rate 460] [--size 3000] [--seconds 50]
        [--groups 4] [--linger-ms 5,25] [--fetch-min-bytes 1]

For each linger, a fresh embedded broker (Tansu) gets ``--rate`` records/s of ``--size``
bytes, sent evenly (every 10 ms) to a 4-partition topic, read by ``--groups`` consumer groups;
the broker's CPU-seconds per second are printed every 10 s. Tansu lists every stored batch
object of a partition on each Fetch (``tansu-storage`` ``dynostore.rs``, commit 510f3e2), so
at a constant load its CPU rises as batches accumulate; fewer, larger batches (a longer
producer linger) slow that down. This is why the ``tansu`` profile of the Kafka edge gives
producers a 25 ms linger at least.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from kafka.admin import KafkaAdminClient, NewTopic  # type: ignore[import-untyped]

from benchmarks.capacity_stats import process_cpu_seconds
from services.common.broker import EmbeddedBroker

TOPIC = "load"
TICK_S = 0.01
REPORT_EVERY_S = 10.0


async def consume(servers: str, group: str, fetch_min_bytes: int, counts: list[int]) -> None:
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=servers,
        group_id=group,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        fetch_max_wait_ms=500,
        fetch_min_bytes=fetch_min_bytes,
    )
    await consumer.start()
    try:
        while True:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                counts[0] += len(records)
    finally:
        await consumer.stop()


async def load(broker: EmbeddedBroker, args: argparse.Namespace, linger_ms: int) -> None:
    servers = broker.bootstrap_servers
    assert broker.pid is not None
    KafkaAdminClient(bootstrap_servers=servers).create_topics([NewTopic(TOPIC, 4, 1)])
    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=linger_ms, acks="all")
    await producer.start()
    consumed = [0]
    readers = [
        asyncio.create_task(consume(servers, f"g{i}", args.fetch_min_bytes, consumed))
        for i in range(args.groups)
    ]
    payload = os.urandom(args.size)
    per_tick = max(1, round(args.rate * TICK_S))
    sent, pending = 0, []
    start = last = time.monotonic()
    last_cpu, last_sent = process_cpu_seconds(broker.pid), 0
    while time.monotonic() - start < args.seconds:
        tick = time.monotonic()
        for i in range(per_tick):
            pending.append(await producer.send(TOPIC, payload, key=str(sent + i).encode()))
        sent += per_tick
        if len(pending) > 2000:
            await asyncio.gather(*pending)
            pending.clear()
        await asyncio.sleep(max(0.0, TICK_S - (time.monotonic() - tick)))
        now = time.monotonic()
        if now - last >= REPORT_EVERY_S:
            cpu = process_cpu_seconds(broker.pid)
            print(
                f"  linger {linger_ms:3d} ms  t={now - start:4.0f} s  "
                f"{(sent - last_sent) / (now - last):5.0f} records/s  "
                f"consumed {consumed[0]:7d}  broker {(cpu - last_cpu) / (now - last):.3f} CPU-s/s",
                flush=True,
            )
            last, last_cpu, last_sent = now, cpu, sent
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*pending)
    await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_local_broker")
    parser.add_argument("--rate", type=int, default=460, help="records per second [460]")
    parser.add_argument("--size", type=int, default=3000, help="bytes per record [3000]")
    parser.add_argument("--seconds", type=float, default=50.0, help="per linger [50]")
    parser.add_argument("--groups", type=int, default=4, help="consumer groups [4]")
    parser.add_argument("--linger-ms", default="5,25", help="producer lingers to compare")
    parser.add_argument("--fetch-min-bytes", type=int, default=1)
    args = parser.parse_args()
    for linger in (int(x) for x in args.linger_ms.split(",")):
        with EmbeddedBroker() as broker:
            asyncio.run(load(broker, args, linger))


if __name__ == "__main__":
    main()
