"""``harstream demo`` and ``harstream simulate``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import tempfile
from pathlib import Path

import click
import numpy as np
from rich.console import Console

from services.demo.loadgen import DeviceCredentials, LoadStats, replay_devices
from services.demo.pipeline import (
    DEFAULT_MODEL_BASE,
    DEMO_OPERATOR,
    LOCAL_PARTITIONS,
    Pipeline,
    PipelineConfig,
)
from services.demo.replay import SimulatedDevice
from services.demo.run import (
    DemoResult,
    choose_rollout,
    demo_devices,
    replay_start_time,
    rollout_env,
    run_replay,
    shipped_labels,
    subjects_from,
    summary_table,
    versions_on_disk,
    write_demo_model_config,
)
from shared.data.cache import HaptCache, default_cache_dir

logger = logging.getLogger(__name__)

# Demo-only alert thresholds: at 10x speed a 30 s fall confirmation takes 3 s of wall time,
# but DEVICE_OFFLINE counts wall-clock time, so it is shortened to be seen within the demo.
DEMO_ALERTING_ENV = {"HARSTREAM_ALERTING_RULES__OFFLINE_AFTER_S": "20"}


def _cache(ctx: click.Context) -> HaptCache:
    obj = ctx.find_root().obj or {}
    cache = obj.get("cache") or HaptCache(default_cache_dir())
    cache.ensure()
    return cache


def register_devices(registry_url: str, device_ids: list[str]) -> dict[str, str]:
    """Register ``device_ids`` with fresh tokens; returns ``{device_id: token}``."""
    from services.ingest.registry import open_registry  # noqa: PLC0415 - keeps CLI start fast

    registry = open_registry(registry_url)
    try:
        tokens = {}
        for device_id in device_ids:
            _, tokens[device_id] = registry.add(device_id, label="simulated")
        return tokens
    finally:
        registry.close()


@click.command()
@click.option("--speed", default=10.0, show_default=True, help="Replay speed-up over real time.")
@click.option(
    "--subjects", default=None, help="Comma-separated HAPT subjects [default: the 9 test subjects]."
)
@click.option(
    "--packet-size", default=50, show_default=True, help="Samples per packet (50 = 1 s at 50 Hz)."
)
@click.option(
    "--partitions", default=LOCAL_PARTITIONS, show_default=True, help="Partitions per topic."
)
@click.option(
    "--scripted/--no-scripted",
    default=True,
    show_default=True,
    help="Add the fall and silent-device scenarios.",
)
@click.option(
    "--live/--no-live",
    default=None,
    help="Live terminal view [default: when stdout is a terminal].",
)
@click.option(
    "--linger",
    default=15.0,
    show_default=True,
    help="Seconds to keep watching after the last window (for DEVICE_OFFLINE alerts).",
)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=None,
    help="Logs, registry and state [default: a new temp dir].",
)
@click.option(
    "--model",
    "model_base",
    type=click.Path(path_type=Path, exists=True),
    default=DEFAULT_MODEL_BASE,
    show_default=True,
)
@click.option(
    "--stable",
    type=int,
    default=None,
    help="Version served as 'stable' [default: deploy/tfserving/models.config's, else newest].",
)
@click.option(
    "--candidate",
    type=int,
    default=None,
    help="Version labelled 'canary' [default: deploy/tfserving/models.config's, if not stable].",
)
@click.option(
    "--shadow/--no-shadow",
    default=None,
    help="Send every batch to the candidate too [default: when there is a candidate].",
)
@click.option(
    "--canary-share",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Fraction of devices whose live predictions come from the candidate.",
)
@click.option(
    "--transport",
    type=click.Choice(["http", "mqtt"]),
    default="http",
    show_default=True,
    help="Devices POST to ingest, or publish to a local Mosquitto that harstream mqtt-bridge "
    "forwards to Kafka.",
)
@click.pass_context
def demo(
    ctx: click.Context,
    speed: float,
    subjects: str | None,
    packet_size: int,
    partitions: int,
    scripted: bool,
    live: bool | None,
    linger: float,
    workdir: Path | None,
    model_base: Path,
    stable: int | None,
    candidate: int | None,
    shadow: bool | None,
    canary_share: float,
    transport: str,
) -> None:
    """Run everything locally (embedded Kafka, model server, all services) and replay the test
    subjects' recordings as live wearables; Ctrl-C stops cleanly and prints the summary.

    The model server serves the 'stable' version and, if there is one, a candidate labelled
    'canary' (by default the versions deploy/tfserving/models.config names), which shadows
    every batch: the summary shows each version's live accuracy and their agreement.
    """
    console = Console()
    try:
        rollout = choose_rollout(
            versions_on_disk(model_base), shipped_labels(), stable, candidate, shadow, canary_share
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    cache = _cache(ctx)
    devices = demo_devices(cache, subjects_from(subjects), scripted=scripted)
    workdir = workdir or Path(tempfile.mkdtemp(prefix="harstream-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model_config = write_demo_model_config(workdir, model_base, rollout)
    config = PipelineConfig(
        workdir=workdir,
        model_base=model_base,
        partitions=partitions,
        service_env={"alerting": DEMO_ALERTING_ENV, **rollout_env(model_config, rollout)},
    )
    show_live = console.is_terminal if live is None else live
    console.print(
        f"[bold]harstream demo[/]: {len(devices)} devices, speed {speed:g}x, "
        f"packets of {packet_size} samples; models: {rollout.describe()}; "
        f"logs in {workdir / 'logs'}"
    )
    pipeline = Pipeline(config)
    stack = contextlib.ExitStack()  # the MQTT door (--transport mqtt), stopped first
    try:
        with console.status("starting broker, model server and services..."):
            pipeline.start()
        tokens = register_devices(pipeline.registry_url, [d.device_id for d in devices])
        console.print(
            f"pipeline up; ingest at {pipeline.ingest_url}, alerts API at {pipeline.alerting_url}"
        )
        _print_operator(console, pipeline)
        if rollout.candidate is not None:
            console.print(
                f"promote the candidate while it runs: harstream models promote "
                f"{rollout.candidate} --config {model_config} "
                f"--target {pipeline.model_server_target}",
                soft_wrap=True,
                highlight=False,
            )
        mqtt = None
        if transport == "mqtt":
            from services.mqtt_bridge.local import LocalMqtt  # noqa: PLC0415

            assert pipeline.settings is not None
            with console.status("starting Mosquitto and the MQTT bridge..."):
                door = LocalMqtt(workdir, pipeline.settings, tokens).start()
            stack.callback(door.stop)
            mqtt = (door.host, door.port)
            console.print(
                f"devices publish over MQTT to {door.host}:{door.port} "
                f"(bridge health {door.health_url}/readyz)"
            )
        result = asyncio.run(
            _replay_with_ctrl_c(
                pipeline,
                devices,
                tokens,
                speed,
                packet_size,
                console if show_live else None,
                linger,
                mqtt,
            )
        )
        console.print(summary_table(result))
    finally:
        with console.status("stopping services..."):
            stack.close()
            pipeline.stop()
    console.print(f"logs: {workdir / 'logs'}")


def _print_operator(console: Console, pipeline: Pipeline) -> None:
    """How to call the alert API as the demo's operator (the key works until the demo ends)."""
    header = pipeline.alert_api_headers()["Authorization"]
    console.print(
        f"operator [bold]{DEMO_OPERATOR}[/] (carer): "
        f"curl -H 'Authorization: {header}' {pipeline.alerting_url}/v1/alerts",
        soft_wrap=True,
        highlight=False,
    )
    console.print(
        f"activity history (same key): curl -H 'Authorization: {header}' "
        f"{pipeline.history_url}/v1/devices",
        soft_wrap=True,
        highlight=False,
    )
    password = pipeline.operator_password
    if password is not None:
        console.print(
            f"web console: [bold]{pipeline.console_url}[/] (log in as {DEMO_OPERATOR}, "
            f"password {password.get_secret_value()})",
            soft_wrap=True,
            highlight=False,
        )


async def _replay_with_ctrl_c(
    pipeline: Pipeline,
    devices: list[SimulatedDevice],
    tokens: dict[str, str],
    speed: float,
    packet_size: int,
    console: Console | None,
    linger_s: float,
    mqtt: tuple[str, int] | None = None,
) -> DemoResult:
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    loop.add_signal_handler(signal.SIGTERM, interrupted.set)
    loop.add_signal_handler(signal.SIGHUP, interrupted.set)  # the terminal closed
    return await run_replay(
        pipeline,
        devices,
        tokens,
        speed,
        packet_size,
        console,
        interrupted=interrupted,
        linger_s=linger_s,
        mqtt=mqtt,
    )


@click.command()
@click.option("--url", default=None, help="Ingest base URL, e.g. http://localhost:8080 (http).")
@click.option(
    "--transport",
    type=click.Choice(["http", "mqtt"]),
    default="http",
    show_default=True,
    help="POST to ingest, or publish to an MQTT broker (harstream mqtt-bridge forwards).",
)
@click.option("--mqtt-host", default="127.0.0.1", show_default=True, help="MQTT broker (mqtt).")
@click.option("--mqtt-port", default=1883, show_default=True, help="MQTT broker port (mqtt).")
@click.option(
    "--devices",
    "num_devices",
    default=10,
    show_default=True,
    help="Simulated devices (recordings are reused round-robin).",
)
@click.option("--speed", default=1.0, show_default=True, help="Replay speed-up over real time.")
@click.option("--packet-size", default=50, show_default=True)
@click.option("--subjects", default=None, help="HAPT subjects to replay [default: test subjects].")
@click.option("--prefix", default="sim", show_default=True, help="Device ids are <prefix>-0001...")
@click.option(
    "--tokens",
    "tokens_file",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="JSON {device_id: token} of already registered devices.",
)
@click.option(
    "--registry",
    default=None,
    help="Register the devices in this registry URL instead (sqlite:///... or postgresql://...).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def simulate(
    ctx: click.Context,
    url: str | None,
    transport: str,
    mqtt_host: str,
    mqtt_port: int,
    num_devices: int,
    speed: float,
    packet_size: int,
    subjects: str | None,
    prefix: str,
    tokens_file: Path | None,
    registry: str | None,
    as_json: bool,
) -> None:
    """Replay HAPT recordings as N live devices against any ingest deployment (load generator):
    over HTTP, or over MQTT (device id and token as MQTT username and password)."""
    recordings = _cache(ctx).load(subjects=subjects_from(subjects))
    devices = [
        SimulatedDevice(f"{prefix}-{i + 1:04d}", rec.samples, rec.labels)
        for i, rec in ((i, recordings[i % len(recordings)]) for i in range(num_devices))
    ]
    ids = [d.device_id for d in devices]
    if tokens_file is not None:
        tokens = json.loads(tokens_file.read_text())
    elif registry is not None:
        tokens = register_devices(registry, ids)
    else:
        raise click.UsageError(
            "give --tokens FILE or --registry URL so the devices can authenticate"
        )
    missing = [i for i in ids if i not in tokens]
    if missing:
        raise click.UsageError(f"no token for {len(missing)} devices, e.g. {missing[0]}")
    creds = [DeviceCredentials(d, tokens[d.device_id]) for d in devices]
    if transport == "mqtt":
        from services.mqtt_bridge.loadgen import replay_devices_mqtt  # noqa: PLC0415

        stats = asyncio.run(
            replay_devices_mqtt(
                mqtt_host, mqtt_port, creds, speed, packet_size, replay_start_time(devices)
            )
        )
        _print_load(stats, as_json)
        return
    if url is None:
        raise click.UsageError("give --url (the ingest base URL) for --transport http")
    stats = asyncio.run(
        replay_devices(url, creds, speed, packet_size, start_time=replay_start_time(devices))
    )
    _print_load(stats, as_json)


def _print_load(stats: LoadStats, as_json: bool) -> None:
    p50, p99 = (
        np.percentile(stats.request_seconds, [50, 99]) if stats.request_seconds else (0.0, 0.0)
    )
    figures = {
        "packets_sent": stats.packets_sent,
        "packets_accepted": stats.packets_accepted,
        "samples_accepted": stats.samples_accepted,
        "retries": stats.retries,
        "rejected": {str(k): v for k, v in stats.rejected.items()},
        "seconds": round(stats.elapsed_s, 3),
        "packets_per_s": round(stats.packets_accepted / max(stats.elapsed_s, 1e-9), 1),
        "samples_per_s": round(stats.samples_accepted / max(stats.elapsed_s, 1e-9), 1),
        "post_latency_p50_ms": round(float(p50) * 1000, 2),
        "post_latency_p99_ms": round(float(p99) * 1000, 2),
    }
    if as_json:
        click.echo(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            click.echo(f"{key:>22}: {value}")
    if stats.rejected:
        sys.exit(1)
