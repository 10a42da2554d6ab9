"""Running one scenario end to end: a fresh pipeline (broker, model server, every service its
own process), the suite's webhook receiver, the devices replayed at real time, the faults
injected on schedule; then, once the pipeline is quiet, every topic read from the beginning
and counted (:func:`services.faults.counting.count`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.alerting.rules import AlertRules
from services.demo.cli import register_devices
from services.demo.loadgen import DeviceCredentials, LoadStats, PacketJournal, replay_devices
from services.demo.pipeline import LOCAL_PARTITIONS, Pipeline, PipelineConfig
from services.faults.collect import Watch, read_all, watch
from services.faults.control import FaultController
from services.faults.counting import ScenarioResult, count
from services.faults.devices import ScriptedDevice, scenario_devices
from services.faults.expect import expected_window_ids, packets_sent
from services.faults.receiver import WebhookReceiver
from services.faults.records import DeviceOutcome, Observations
from services.faults.schedule import FaultKind, ScenarioPlan
from shared.data.recording import Recording

logger = logging.getLogger(__name__)

PACKET_SIZE = 50  # one second at 50 Hz, like a real wearable
SPEED = 1.0  # real time


@dataclass(frozen=True)
class SuiteSettings:
    """Thresholds and waits of a fault-injection run."""

    #: DEVICE_OFFLINE after this much silence (s, wall clock); production's 300 s would make
    #: a run hours long. The fall confirmation keeps its product default (30 s).
    offline_after_s: float = 10.0
    #: PIPELINE_STALLED threshold, set only when the alerting service has that rule; below
    #: the 60 s model-server pause so the pause must raise it.
    pipeline_stall_s: float = 30.0
    partitions: int = LOCAL_PARTITIONS
    #: Devices still retrying this long after the scenario's end (an ingest that refuses
    #: everything) are stopped, and their unsent packets never counted as accepted.
    replay_grace_s: float = 60.0
    #: The pipeline is quiet when no prediction and no alert event arrived for this long.
    quiet_s: float = 8.0
    #: Longest wait for quiet after the replay, and for every alert event to be notified.
    drain_timeout_s: float = 240.0
    notify_timeout_s: float = 150.0

    def alerting_env(self, webhook_url: str) -> dict[str, str]:
        env = {
            "HARSTREAM_ALERTING_WEBHOOK_URLS": webhook_url,
            "HARSTREAM_ALERTING_RULES__OFFLINE_AFTER_S": f"{self.offline_after_s:g}",
        }
        if stall_rule_available():
            env["HARSTREAM_ALERTING_RULES__PIPELINE_STALL_S"] = f"{self.pipeline_stall_s:g}"
        return env


def stall_rule_available() -> bool:
    """Whether this alerting version has the PIPELINE_STALLED rule (its rules refuse unknown
    settings, so the variable must not be set before it exists)."""
    return "pipeline_stall_s" in AlertRules.model_fields


def run_scenario(
    plan: ScenarioPlan,
    seed: int,
    recordings: Sequence[Recording],
    workdir: Path,
    settings: SuiteSettings | None = None,
) -> tuple[ScenarioResult, Observations]:
    """Run ``plan`` on a fresh pipeline in ``workdir`` (logs in ``workdir/logs``)."""
    settings = settings or SuiteSettings()
    devices = scenario_devices(plan, recordings)
    receiver = WebhookReceiver()
    pipeline = Pipeline(
        PipelineConfig(
            workdir=workdir,
            topic_prefix=f"faults-{plan.name}",
            partitions=settings.partitions,
            service_env={"alerting": settings.alerting_env(receiver.url)},
        )
    )
    logger.info(
        "scenario %s: %d devices, %.0f s, faults: %s (logs in %s)",
        plan.name,
        len(devices),
        plan.duration_s,
        "; ".join(f"{f.at_s:.1f} s {f.label}" for f in plan.faults),
        pipeline.logs,
    )
    # Started from this (main) thread: children die with the thread that started them.
    pipeline.start()
    try:
        tokens = register_devices(pipeline.registry_url, [d.device_id for d in devices])
        obs = asyncio.run(_observe(pipeline, plan, seed, devices, tokens, receiver, settings))
    finally:
        codes = pipeline.stop()
    obs.notes += [f"{name} exited with {code} on SIGTERM" for name, code in codes.items() if code]
    return count(obs), obs


async def _observe(
    pipeline: Pipeline,
    plan: ScenarioPlan,
    seed: int,
    devices: list[ScriptedDevice],
    tokens: dict[str, str],
    receiver: WebhookReceiver,
    settings: SuiteSettings,
) -> Observations:
    assert pipeline.settings is not None
    await receiver.up()
    live = Watch()
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(pipeline.settings, live, stop))
    journal = PacketJournal()
    load = LoadStats()
    notes: list[str] = []
    started_at, t0 = time.time(), time.monotonic()
    # Device clocks 1 s behind: a packet is sent when its last sample was measured, never
    # stamped in the future.
    device_start = started_at - 1.0
    replay = asyncio.create_task(
        replay_devices(
            pipeline.ingest_url,
            [DeviceCredentials(d.device, tokens[d.device_id]) for d in devices],
            SPEED,
            PACKET_SIZE,
            start_time=device_start,
            stats=load,
            journal=journal,
        )
    )
    controller = FaultController(pipeline, receiver)
    faults = asyncio.create_task(controller.run(plan.faults, t0))
    progress = asyncio.create_task(_log_progress(load, live, receiver))
    try:
        done, _ = await asyncio.wait({replay}, timeout=plan.duration_s + settings.replay_grace_s)
        if not done:
            replay.cancel()
            unfinished = len(devices) - load.devices_done
            notes.append(
                f"replay stopped {settings.replay_grace_s:.0f} s after the scenario's end: "
                f"{unfinished} devices still had packets to send (retrying {load.retries} times)"
            )
            with contextlib.suppress(asyncio.CancelledError):
                await replay
        else:
            replay.result()
        records = await faults
        await _until_quiet(live, receiver, settings, replay_ended=time.monotonic())
    finally:
        for task in (replay, faults, progress):
            task.cancel()
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await receiver.down()
        receiver.close()
    contents = await asyncio.to_thread(read_all, pipeline.settings)
    deliveries = list(receiver.deliveries)
    for record in records:
        if record.fault.kind is FaultKind.DOWN:
            after = [d.received_at for d in deliveries if d.received_at >= record.ended_at]
            record.recovered_at = min(after, default=None)
    notes += [f"{r.fault.label}: {r.error}" for r in records if r.error]
    notes += [f"{n} undecodable records on {t}" for t, n in contents.undecodable.items()]
    notes += [f"malformed webhook POST {m}" for m in receiver.malformed[:5]]
    ours = {d.device_id for d in devices}
    seqs: dict[str, set[int]] = {}
    for device_id, seq in journal.accepted_at:
        seqs.setdefault(device_id, set()).add(seq)
    for raw in contents.raw:
        if raw.device_id in ours:
            seqs.setdefault(raw.device_id, set()).add(raw.seq)
    expected = expected_window_ids(packets_sent([d.device for d in devices], device_start, seqs))
    return Observations(
        scenario=plan.name,
        seed=seed,
        started_at=started_at,
        ended_at=time.time(),
        devices=[
            DeviceOutcome(d.device_id, d.role, d.at_s, journal.last_attempt_at.get(d.device_id))
            for d in devices
        ],
        accepted=dict(journal.accepted_at),
        raw=contents.raw,
        windows=contents.windows,
        predictions=contents.predictions,
        alerts=contents.alerts,
        deliveries=deliveries,
        dead_letters=contents.dead_letters,
        faults=records,
        expected_windows=expected,
        offline_after_s=settings.offline_after_s,
        pipeline_stall_s=settings.pipeline_stall_s if stall_rule_available() else None,
        notes=notes,
    )


async def _until_quiet(
    live: Watch, receiver: WebhookReceiver, settings: SuiteSettings, replay_ended: float
) -> None:
    """Until the pipeline has drained: the devices' end-of-run DEVICE_OFFLINE alerts had
    time to open, no new prediction or alert event for ``quiet_s``, and every alert event
    seen reached the webhook (or ``notify_timeout_s`` passed without that)."""
    earliest = replay_ended + settings.offline_after_s + 5.0
    deadline = replay_ended + settings.drain_timeout_s
    while time.monotonic() < deadline:
        quiet = time.monotonic() - live.last_change >= settings.quiet_s
        if quiet and time.monotonic() >= earliest:
            break
        await asyncio.sleep(0.5)
    else:
        logger.warning("still not quiet %.0f s after the replay", settings.drain_timeout_s)
    notify_deadline = time.monotonic() + settings.notify_timeout_s
    while time.monotonic() < notify_deadline:
        delivered = {d.idempotency_key for d in receiver.deliveries}
        if live.alert_events <= delivered:
            return
        await asyncio.sleep(0.5)
    logger.warning(
        "%d alert events not notified after %.0f s",
        len(live.alert_events - {d.idempotency_key for d in receiver.deliveries}),
        settings.notify_timeout_s,
    )


async def _log_progress(load: LoadStats, live: Watch, receiver: WebhookReceiver) -> None:
    while True:
        await asyncio.sleep(10.0)
        logger.info(
            "%d packets accepted (%d retries), %d predictions, %d alert events, %d webhook POSTs",
            load.packets_accepted,
            load.retries,
            live.predictions,
            len(live.alert_events),
            len(receiver.deliveries),
        )
