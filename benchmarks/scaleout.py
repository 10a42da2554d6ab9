"""Scale-out: throughput of 1, 2, 4 … preprocess and inference workers on 8 partitions (issue 10,
item 5).

``python -m benchmarks.scaleout [--workers 1,2,4] [--devices 1000] [--packets 40]``

For each worker count N the local pipeline starts on ``--partitions`` partitions with no
preprocess and no inference worker. The raw topic is then filled with a backlog: ``--devices``
devices × ``--packets`` consecutive 50-sample packets each, cut from the HAPT test recordings
(the raw frames ingest writes, written straight to Kafka so the load generator and ingest
are not what is measured). Then N preprocess workers start and drain it, then N inference
workers drain the windows they made. Per stage it prints the sustained rate (over the part of
the drain between 10 % and 90 % done, so group joins and the tail do not count), the
CPU-seconds per second of every process over the same interval, and the rate per CPU-second
of the stage's own workers: the per-core figure that sizing for larger fleets divides by.

A backlog drain measures a stage's throughput, not the fleet's latency: how many live
devices meet the 1 s p99 is the capacity benchmark's question (``benchmarks.capacity``).
On a 2-core machine every process shares the same two cores, so N workers can add at most
what the idle core gives; the rate per CPU-second is what carries over to more cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from kafka import KafkaProducer  # type: ignore[import-untyped]

from benchmarks.capacity import read_proc, scrape
from benchmarks.capacity_stats import counter_total, usage_of
from services.common.kafka.clients import kafka_python_kwargs
from services.demo.pipeline import Pipeline, PipelineConfig
from shared.messages.raw import RawPacket

logger = logging.getLogger(__name__)

PACKET_SAMPLES = 50
RATE_HZ = 50.0
#: The part of a drain whose rate counts: joins before and the tail after are left out.
FROM_DONE, TO_DONE = 0.10, 0.90


@dataclass(frozen=True)
class Poll:
    t: float
    done: float
    cpu_s: dict[str, float]


@dataclass(frozen=True)
class StageResult:
    stage: str
    workers: int
    items: int
    #: Items per second between FROM_DONE and TO_DONE of the drain.
    rate_per_s: float
    #: CPU-seconds per second of every process over that interval.
    cpu: dict[str, float]
    #: Items per CPU-second of the stage's own workers.
    per_cpu_s: float
    drain_s: float


def sustained(
    polls: Sequence[Poll], total: float, workers: Sequence[str]
) -> tuple[float, dict[str, float], float]:
    """Rate, CPU per process and rate per worker CPU-second between the first polls at or
    past FROM_DONE and TO_DONE of ``total`` (pure; polls in time order)."""
    start = next(p for p in polls if p.done >= FROM_DONE * total)
    end = next(p for p in polls if p.done >= TO_DONE * total)
    span = end.t - start.t
    if span <= 0:
        raise ValueError("the drain was too quick to measure: give it a larger backlog")
    rate = (end.done - start.done) / span
    cpu = {
        name: (end.cpu_s.get(name, 0.0) - start.cpu_s.get(name, 0.0)) / span for name in end.cpu_s
    }
    own = sum(v for k, v in cpu.items() if k in workers)
    return rate, cpu, rate / own if own > 0 else float("nan")


def backlog(devices: int, packets: int, start_time: float) -> list[tuple[bytes, bytes]]:
    """``devices`` × ``packets`` raw frames, in the order live devices would send them (all
    devices' packet 0, then all packets 1, …); each device reads its own HAPT test
    recording from its own offset, so windows carry real signals."""
    from shared.data.cache import HaptCache, default_cache_dir
    from shared.data.splits import TEST_SUBJECTS

    cache = HaptCache(default_cache_dir())
    recordings = [r.samples for r in cache.load(subjects=list(TEST_SUBJECTS))]
    need = packets * PACKET_SAMPLES
    records = []
    for seq in range(packets):
        for d in range(devices):
            samples = recordings[d % len(recordings)]
            offset = (d * 997 * PACKET_SAMPLES) % max(1, len(samples) - need)
            chunk = samples[offset + seq * PACKET_SAMPLES : offset + (seq + 1) * PACKET_SAMPLES]
            device_id = f"scale-{d:05d}"
            packet = RawPacket(
                device_id=device_id,
                seq=seq,
                first_sample_time=start_time + seq * PACKET_SAMPLES / RATE_HZ,
                sample_rate_hz=RATE_HZ,
                samples=np.asarray(chunk, dtype=np.float64),
                received_at=time.time(),
            )
            records.append((device_id.encode(), packet.to_bytes()))
    return records


def fill_raw(pipeline: Pipeline, records: Sequence[tuple[bytes, bytes]]) -> float:
    """Write ``records`` to the raw topic, every one acknowledged; seconds taken."""
    assert pipeline.settings is not None
    started = time.monotonic()
    producer = KafkaProducer(
        **kafka_python_kwargs(pipeline.settings, acks="all", linger_ms=20, batch_size=512 * 1024)
    )
    try:
        futures = [producer.send(pipeline.settings.topics.raw, key=k, value=v) for k, v in records]
        producer.flush()
        for future in futures:
            future.get(timeout=60)
    finally:
        producer.close()
    return time.monotonic() - started


def drain(
    pipeline: Pipeline,
    stage: str,
    workers: int,
    counter: str,
    total: float,
    timeout_s: float,
    ticks_per_s: float = float(os.sysconf("SC_CLK_TCK")),
) -> StageResult:
    """Start ``workers`` workers of ``stage`` and poll ``counter`` (summed over them) every
    0.5 s until it reaches ``total``."""
    names = [pipeline.add_worker(stage) for _ in range(workers)]
    page = os.sysconf("SC_PAGE_SIZE")
    polls: list[Poll] = []

    def done() -> float:
        metrics = scrape({n: pipeline.metrics_urls()[n] for n in names})
        return sum(counter_total(m, counter) for m in metrics.values())

    def cpu() -> dict[str, float]:
        groups = {name: [pid] for name, pid in pipeline.pids().items()}
        usage = usage_of(groups, read_proc(), ticks_per_s, page, with_children=list(groups))
        return {name: u.cpu_s for name, u in usage.items()}

    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        polls.append(Poll(time.monotonic(), done(), cpu()))
        if polls[-1].done >= total:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{stage}: {polls[-1].done:.0f} of {total:.0f} after {timeout_s:.0f} s"
            )
        time.sleep(0.5)
    rate, usage, per_cpu = sustained(polls, total, names)
    return StageResult(stage, workers, int(total), rate, usage, per_cpu, polls[-1].t - started)


def run_one(
    args: argparse.Namespace,
    workers: int,
    records: Sequence[tuple[bytes, bytes]],
    say: Callable[[str], None],
) -> list[StageResult]:
    with tempfile.TemporaryDirectory(prefix="scaleout-") as tmp:
        config = PipelineConfig(
            Path(tmp), partitions=args.partitions, workers={"preprocess": 0, "inference": 0}
        )
        with Pipeline(config) as pipeline:
            took = fill_raw(pipeline, records)
            say(f"  {workers} worker(s): {len(records):,} raw records written in {took:.1f} s")
            pre = drain(
                pipeline,
                "preprocess",
                workers,
                "harstream_preprocess_packets_total",
                len(records),
                args.timeout_s,
            )
            say(_line(pre))
            windows = sum(
                counter_total(m, "harstream_windows_emitted_total")
                for n, m in scrape(pipeline.metrics_urls()).items()
                if n.startswith("preprocess")
            )
            inf = drain(
                pipeline,
                "inference",
                workers,
                "harstream_predictions_total",
                windows,
                args.timeout_s,
            )
            say(_line(inf))
            return [pre, inf]


def _line(r: StageResult) -> str:
    own = sum(v for k, v in r.cpu.items() if k.startswith(r.stage))
    others = ", ".join(
        f"{k} {v:.2f}" for k, v in sorted(r.cpu.items()) if not k.startswith(r.stage)
    )
    return (
        f"    {r.stage:<10} ×{r.workers}: {r.rate_per_s:,.0f}/s sustained ({r.items:,} in "
        f"{r.drain_s:.1f} s), its workers {own:.2f} CPU-s/s → {r.per_cpu_s:,.0f} per CPU-s; "
        f"others: {others}"
    )


def markdown(results: Sequence[StageResult]) -> str:
    lines = [
        "| stage | workers | items | sustained /s | × vs 1 worker | workers' CPU s/s "
        "| per CPU-s | broker CPU s/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {r.stage: r.rate_per_s for r in results if r.workers == min(x.workers for x in results)}
    for r in results:
        own = sum(v for k, v in r.cpu.items() if k.startswith(r.stage))
        lines.append(
            f"| {r.stage} | {r.workers} | {r.items:,} | {r.rate_per_s:,.0f} | "
            f"{r.rate_per_s / base[r.stage]:.2f} | {own:.2f} | {r.per_cpu_s:,.0f} | "
            f"{r.cpu.get('broker', 0.0):.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scaleout", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workers", default="1,2,4", help="worker counts to try [%(default)s]")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--packets", type=int, default=40, help="packets per device [40]")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="per drain [600]")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # A worker that is still starting has no metrics port yet: that is not worth a warning.
    logging.getLogger("benchmarks.capacity").setLevel(logging.ERROR)
    counts = [int(n) for n in args.workers.split(",")]
    records = backlog(args.devices, args.packets, time.time() - args.packets)
    print(
        f"scale-out: {args.devices:,} devices × {args.packets} packets, {args.partitions} "
        f"partitions, workers {counts}; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results: list[StageResult] = []
    for n in counts:
        results += run_one(args, n, records, lambda line: print(line, flush=True))
    table = markdown(results)
    print(table)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
