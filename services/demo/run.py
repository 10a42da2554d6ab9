"""``harstream demo``: the whole pipeline on embedded defaults, fed by replayed wearables.

Replays the HAPT recordings of the test subjects (never seen in training) as live devices,
plus two scripted ones: a fall (walking → impact → lying) and a device that goes silent.
Shows a live view and ends with a summary: packets, windows, streaming accuracy against the
recordings' labels, latency per stage, throughput, alerts.

The model server reads a TF Serving model config written for the run: the stable version
(label ``stable``) serves, and a candidate (label ``canary``, e.g. the paper's model) can
shadow every batch or serve a canary share of devices; the summary gives each version's
live accuracy and the shadow's agreement with stable. ``harstream models promote`` against
the printed config and target moves the labels while the demo runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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
from services.modelserver.config import ModelConfig, VersionPolicy, parse_config, render_config
from services.modelserver.versions import has_saved_model, scan_versions
from shared.data.cache import HaptCache
from shared.data.splits import TEST_SUBJECTS

logger = logging.getLogger(__name__)

STEP = 64
REPO_ROOT = Path(__file__).resolve().parents[2]
#: docker-compose's TF Serving config: the demo serves the versions its labels name.
SHIPPED_MODEL_CONFIG = REPO_ROOT / "deploy" / "tfserving" / "models.config"


@dataclass(frozen=True)
class DemoRollout:
    """Which versions the demo serves, and what the candidate does."""

    stable: int
    candidate: int | None = None
    shadow: bool = False
    canary_share: float = 0.0

    def describe(self) -> str:
        if self.candidate is None:
            return f"stable v{self.stable}"
        roles = []
        if self.shadow:
            roles.append("shadow")
        if self.canary_share > 0:
            roles.append(f"canary {self.canary_share:.0%} of devices")
        what = ", ".join(roles) or "loaded, no traffic"
        return f"stable v{self.stable}, candidate v{self.candidate} ({what})"


def versions_on_disk(model_base: Path) -> set[int]:
    return {v for v, path in scan_versions(model_base).items() if has_saved_model(path)}


def shipped_labels(path: Path = SHIPPED_MODEL_CONFIG) -> dict[str, int]:
    """The labels of the shipped TF Serving config ({} if it cannot be read)."""
    try:
        (config,) = parse_config(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return dict(config.labels)


def choose_rollout(
    on_disk: set[int],
    labels: Mapping[str, int],
    stable: int | None = None,
    candidate: int | None = None,
    shadow: bool | None = None,
    canary_share: float = 0.0,
) -> DemoRollout:
    """Versions for the demo: those asked for, else the shipped config's ``stable`` and
    ``canary`` labels where those versions exist, else the newest version alone. A
    candidate shadows by default (``shadow`` None).

    Raises:
        ValueError: a version that is not on disk, or a rollout without a candidate.
    """
    if not on_disk:
        raise ValueError("no model version with a SavedModel in the model directory")
    if stable is None:
        shipped = labels.get("stable")
        stable = shipped if shipped is not None and shipped in on_disk else max(on_disk)
    if candidate is None and labels.get("canary") in on_disk and labels.get("canary") != stable:
        candidate = labels.get("canary")
    for version in (stable, candidate):
        if version is not None and version not in on_disk:
            raise ValueError(f"version {version} is not in the model directory ({sorted(on_disk)})")
    if candidate == stable:
        candidate = None
    if candidate is None and (shadow or canary_share > 0):
        raise ValueError("a shadow or a canary share needs a candidate version other than stable")
    shadow = candidate is not None if shadow is None else shadow
    return DemoRollout(stable, candidate, shadow, canary_share)


def demo_model_config(model_base: Path, rollout: DemoRollout) -> ModelConfig:
    """The TF Serving config of the demo's model server: exactly the two versions, labelled
    (``canary`` names stable when there is no candidate, as in the shipped config)."""
    candidate = rollout.candidate or rollout.stable
    return ModelConfig(
        "har",
        str(model_base.resolve()),
        policy=VersionPolicy.specific({rollout.stable, candidate}),
        labels={"stable": rollout.stable, "canary": candidate},
    )


def rollout_env(config_path: Path, rollout: DemoRollout) -> dict[str, dict[str, str]]:
    """``PipelineConfig.service_env`` entries: the model server reads ``config_path`` (and
    re-reads it every 2 s, so ``harstream models`` can move labels during the demo); the
    inference worker serves ``stable`` and sends the candidate its share or shadow."""
    return {
        "modelserver": {
            "HARSTREAM_MODELSERVER_MODEL_CONFIG_FILE": str(config_path),
            "HARSTREAM_MODELSERVER_MODEL_CONFIG_FILE_POLL_WAIT_S": "2",
            "HARSTREAM_MODELSERVER_ALLOW_VERSION_LABELS_FOR_UNAVAILABLE_MODELS": "true",
        },
        "inference": {
            "HARSTREAM_INFERENCE_MODEL_VERSION_LABEL": "stable",
            "HARSTREAM_INFERENCE_CANDIDATE_VERSION_LABEL": "canary",
            "HARSTREAM_INFERENCE_SHADOW": "true" if rollout.shadow else "false",
            "HARSTREAM_INFERENCE_CANARY_SHARE": str(rollout.canary_share),
        },
    }


def write_demo_model_config(workdir: Path, model_base: Path, rollout: DemoRollout) -> Path:
    path = workdir / "models.config"
    header = "# harstream demo: TF Serving model config (harstream models promote|rollback).\n"
    path.write_text(render_config([demo_model_config(model_base, rollout)], header))
    return path


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
    mqtt: tuple[str, int] | None = None,
) -> DemoResult:
    """Replay ``devices`` through the running pipeline and wait until every window is predicted
    (or ``drain_timeout_s`` passes without progress). With ``mqtt`` (broker host, port) the
    devices publish there (``harstream mqtt-bridge`` forwards) instead of posting to ingest."""
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
    if mqtt is None:
        sending = replay_devices(
            pipeline.ingest_url,
            creds,
            speed,
            packet_size,
            start_time=replay_start_time(devices),
            stats=load,
        )
    else:
        from services.mqtt_bridge.loadgen import replay_devices_mqtt  # noqa: PLC0415

        host, port = mqtt
        sending = replay_devices_mqtt(
            host, port, creds, speed, packet_size, replay_start_time(devices), stats=load
        )
    replay = asyncio.create_task(sending)
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
    for kind, scores in (("live", tally.live_versions), ("shadow", tally.shadow_versions)):
        for version, score in sorted(scores.items()):
            accuracy = f"{score.accuracy:.2%}" if score.accuracy is not None else "-"
            table.add_row(
                f"{kind} accuracy v{version} ({score.label or 'unlabelled'})",
                f"{accuracy} over {score.scored:,} labelled windows "
                f"({score.predictions:,} predictions)",
            )
    for (live, shadow), agreement in sorted(tally.agreement.items()):
        rate = f"{agreement.rate:.2%}" if agreement.rate is not None else "-"
        table.add_row(
            f"agreement shadow v{shadow} / live v{live}",
            f"{rate} of {agreement.compared:,} windows both classified",
        )
    return table


def subjects_from(text: str | None) -> list[int]:
    return sorted(TEST_SUBJECTS) if not text else [int(s) for s in text.split(",")]
