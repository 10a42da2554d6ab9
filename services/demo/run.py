"""``harstream demo``: the whole pipeline on embedded defaults, fed by replayed wearables.

Replays the HAPT recordings of the test subjects (never seen in training) as live devices,
plus two scripted ones: a fall (walking → impact → lying) and a device that goes silent.
Shows a live view and ends with a summary: packets, windows, streaming accuracy against the
recordings' labels, latency per stage, throughput, alerts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from services.demo.loadgen import DeviceCredentials, LoadStats, replay_devices
from services.demo.pipeline import Pipeline
from services.demo.replay import SimulatedDevice, device_of
from services.demo.scenarios import fall_scenario
from services.demo.tally import WINDOW_SIZE, DemoTally
from services.demo.view import live_view
from services.demo.watch import follow
from shared.data.cache import HaptCache
from shared.data.splits import TEST_SUBJECTS

logger = logging.getLogger(__name__)

STEP = 64


def expected_windows(num_samples: int) -> int:
    return 0 if num_samples < WINDOW_SIZE else (num_samples - WINDOW_SIZE) // STEP + 1


def demo_devices(
    cache: HaptCache, subjects: list[int], scripted: bool = True
) -> list[SimulatedDevice]:
    """One device per test recording, plus (``scripted``) a fall and a device going silent."""
    recordings = cache.load(subjects=subjects)
    devices = [device_of(rec) for rec in recordings]
    if scripted:
        fall = fall_scenario(recordings, walk_s=20.0, lie_s=60.0)
        devices.append(SimulatedDevice("demo-fall", fall.samples, fall.labels))
        first = recordings[0]
        devices.append(
            SimulatedDevice(
                "demo-goes-silent", first.samples, first.labels, stop_after_samples=60 * 50
            )
        )
    return devices


def replay_start_time(devices: list[SimulatedDevice]) -> float:
    """Device-clock start of a replay: far enough in the past that a device replayed faster
    than real time never stamps samples in the future (ingest refuses those)."""
    return time.time() - max((d.duration_s for d in devices), default=0.0) - 1.0


@dataclass
class DemoResult:
    tally: DemoTally
    load: LoadStats
    expected_windows: int
    wall_s: float


async def run_replay(
    pipeline: Pipeline,
    devices: list[SimulatedDevice],
    tokens: dict[str, str],
    speed: float,
    packet_size: int,
    console: Console | None,
    drain_timeout_s: float = 60.0,
    interrupted: asyncio.Event | None = None,
    linger_s: float = 0.0,
) -> DemoResult:
    """Replay ``devices`` through the running pipeline and wait until every window is predicted
    (or ``drain_timeout_s`` passes without progress)."""
    assert pipeline.settings is not None
    truth = {d.device_id: d.labels[: d.stop_after_samples] for d in devices}
    tally = DemoTally(truth)
    load = LoadStats()
    expected = sum(
        expected_windows(min(len(d.samples), d.stop_after_samples or len(d.samples)))
        for d in devices
    )
    stop = asyncio.Event()
    watcher = asyncio.create_task(follow(pipeline.settings, tally, stop))
    creds = [DeviceCredentials(d, tokens[d.device_id]) for d in devices]
    t0 = time.time()
    replay = asyncio.create_task(
        replay_devices(
            pipeline.ingest_url,
            creds,
            speed,
            packet_size,
            start_time=replay_start_time(devices),
            stats=load,
        )
    )
    live = Live(live_view(tally, load), console=console, refresh_per_second=4) if console else None
    try:
        if live:
            live.start()
        last_progress, last_count = time.monotonic(), -1
        done_at: float | None = None
        last_log = time.monotonic()
        while True:
            await asyncio.sleep(0.25)
            if live:
                live.update(live_view(tally, load))
            elif time.monotonic() - last_log >= 5.0:
                last_log = time.monotonic()
                logger.info(
                    "%d packets accepted, %d/%d windows predicted, %d alert events",
                    load.packets_accepted,
                    tally.predictions,
                    expected,
                    sum(tally.alert_events.values()),
                )
            if interrupted is not None and interrupted.is_set():
                break
            if watcher.done():
                watcher.result()  # surfaces the watcher's exception
            if tally.predictions != last_count:
                last_count, last_progress = tally.predictions, time.monotonic()
            if replay.done():
                replay.result()
                if tally.predictions >= expected:
                    done_at = done_at or time.monotonic()
                    # Lingering shows what only wall-clock time raises (devices offline).
                    if time.monotonic() - done_at >= linger_s:
                        break
                    continue
                if time.monotonic() - last_progress > drain_timeout_s:
                    logger.warning("no new predictions for %.0f s; stopping", drain_timeout_s)
                    break
    finally:
        if live:
            live.stop()
        replay.cancel()
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await replay
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    return DemoResult(tally, load, expected, time.time() - t0)


def summary_table(result: DemoResult) -> Table:
    tally, load = result.tally, result.load
    table = Table(title="harstream demo summary", show_header=False, title_justify="left")
    table.add_column("what", style="dim")
    table.add_column("value")
    table.add_row("devices", str(len(tally.devices)))
    table.add_row(
        "packets accepted / sent",
        f"{load.packets_accepted:,} / {load.packets_sent:,} "
        f"(retries {load.retries}, rejected {sum(load.rejected.values())})",
    )
    table.add_row("samples accepted", f"{load.samples_accepted:,}")
    table.add_row(
        "windows predicted / expected",
        f"{tally.predictions:,} / {result.expected_windows:,} (duplicates {tally.duplicates})",
    )
    report = tally.report()
    if report is not None:
        table.add_row(
            "streaming accuracy",
            f"{report.accuracy:.2%} (macro-F1 {report.macro.f1:.2%}) "
            f"over {len(tally.y_true):,} labelled windows",
        )
    for stage, (p50, p99) in tally.latencies.percentiles().items():
        table.add_row(
            f"latency {stage.replace('_', ' ')}",
            f"p50 {p50 * 1000:.1f} ms · p99 {p99 * 1000:.1f} ms",
        )
    wall = max(result.wall_s, 1e-9)
    table.add_row(
        "throughput",
        f"{load.samples_accepted / wall:,.0f} samples/s · "
        f"{load.packets_accepted / wall:,.1f} packets/s · "
        f"{tally.predictions / wall:,.1f} windows/s over {wall:.1f} s",
    )
    if load.request_seconds:
        p50, p99 = np.percentile(load.request_seconds, [50, 99])
        table.add_row("ingest POST latency", f"p50 {p50 * 1000:.1f} ms · p99 {p99 * 1000:.1f} ms")
    events = (
        ", ".join(f"{t} {s}: {n}" for (t, s), n in sorted(tally.alert_events.items())) or "none"
    )
    table.add_row("alert events", events)
    table.add_row(
        "model versions", ", ".join(f"v{v}: {n}" for v, n in sorted(tally.model_versions.items()))
    )
    return table


def subjects_from(text: str | None) -> list[int]:
    return sorted(TEST_SUBJECTS) if not text else [int(s) for s in text.split(",")]
