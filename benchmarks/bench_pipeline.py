"""The whole pipeline (embedded broker, model server, four services as processes) fed as
fast as it takes: the 9 test subjects' recordings replayed at ``speed``× in 5 s packets.
Prints sustained throughput, end-to-end latency and streaming accuracy."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from services.demo.cli import register_devices
from services.demo.pipeline import Pipeline, PipelineConfig
from services.demo.run import demo_devices, run_replay, subjects_from
from shared.data.cache import HaptCache, default_cache_dir


def main(speed: float = 400.0, packet_size: int = 250) -> None:
    cache = HaptCache(default_cache_dir())
    cache.ensure()
    devices = demo_devices(cache, subjects_from(None), scripted=False)
    with tempfile.TemporaryDirectory() as tmp, Pipeline(PipelineConfig(Path(tmp))) as pipeline:
        tokens = register_devices(pipeline.registry_url, [d.device_id for d in devices])
        result = asyncio.run(
            run_replay(pipeline, devices, tokens, speed, packet_size, console=None)
        )
    wall = result.wall_s
    report = result.tally.report()
    e2e = result.tally.latencies.percentiles()["end_to_end"]
    print(f"pipeline, {len(devices)} devices at {speed:g}x, {packet_size}-sample packets:")
    print(
        f"  {result.load.samples_accepted / wall:,.0f} samples/s, "
        f"{result.tally.predictions / wall:,.0f} windows/s over {wall:.1f} s "
        f"({result.tally.predictions:,}/{result.expected_windows:,} windows)"
    )
    print(f"  end-to-end latency p50 {e2e[0] * 1000:.0f} ms, p99 {e2e[1] * 1000:.0f} ms")
    if report is not None:
        print(
            f"  streaming accuracy {report.accuracy:.4f} over {len(result.tally.y_true):,} windows"
        )


if __name__ == "__main__":
    main()
