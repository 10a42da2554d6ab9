"""Alerting keeps what its rules wait on across kill -9, restarts and rebalances (issue 8),
judges liveness from device traffic, and reports a pipeline stall once.

Against the real local broker: predictions and raw packets are produced with kafka-python;
the worker runs as ``harstream alerting`` (a real process, killed with SIGKILL) or in process
(rebalance, stall).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaProducer  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry

from services.alerting.app import AlertingService
from services.alerting.auth import create_operator
from services.alerting.settings import AlertingSettings
from services.alerting.store import open_store
from services.common.broker import EmbeddedBroker
from services.common.kafka.errors import BrokerUnavailableError
from services.common.kafka.topics import create_topics
from services.common.operators import Role
from services.ingest.producer import KafkaPacketSink
from services.ingest.settings import IngestSettings
from shared.messages import PIPELINE_SCOPE, AlertType, RawPacket
from tests.integration.workers import WorkerProcess, all_committed, wait_for
from tests.unit.alerting_helpers import (
    IMPACT,
    LYING_STILL,
    STEP_S,
    T0,
    WALKING,
    WINDOW_S,
    prediction,
)

pytestmark = pytest.mark.integration

#: Windows of a fall: 3 walking, the impact (index 3), then lying from index 4 on. Lying
#: counts from window 5's start (window 4 overlaps the impact), so the 30 s confirmation is
#: reached at the first window ending >= 30 s after it.
IMPACT_INDEX = 3
#: ~15 s of lying: half-way through the confirmation (the issue's kill moment).
HALF_WAY = IMPACT_INDEX + 1 + round(15 / STEP_S)
FALL_END = IMPACT_INDEX + 1 + round(40 / STEP_S)


def _settings(
    stream_settings: Callable[..., AlertingSettings], store_url: str, **overrides: Any
) -> AlertingSettings:
    values: dict[str, Any] = {
        "group_id": f"alerting-{uuid.uuid4().hex[:8]}",
        "auto_offset_reset": "earliest",
        "host": "127.0.0.1",
        "port": 0,
        "store_url": store_url,
        "tick_interval_s": 0.2,
    }
    values.update(overrides)
    return stream_settings(AlertingSettings, **values)


def _fall_windows(device: str, start: int, stop: int) -> list[tuple[str, bytes, bytes]]:
    out = []
    for i in range(start, stop):
        if i < IMPACT_INDEX:
            p = prediction(i, "WALKING", WALKING, device=device)
        elif i == IMPACT_INDEX:
            p = prediction(i, "WALKING", IMPACT, device=device)
        else:
            p = prediction(i, "LAYING", LYING_STILL, device=device)
        out.append(("predictions", device.encode(), p.to_bytes()))
    return out


def _packet(device: str, seq: int, received_at: float) -> tuple[str, bytes, bytes]:
    packet = RawPacket(
        device_id=device,
        seq=seq,
        first_sample_time=1_700_000_000.0 + seq,
        sample_rate_hz=50.0,
        samples=np.zeros((50, 6)),
        received_at=received_at,
    )
    return ("raw", device.encode(), packet.to_bytes())


def _produce(settings: AlertingSettings, messages: list[tuple[str, bytes, bytes]]) -> None:
    topics = {"predictions": settings.topics.predictions, "raw": settings.topics.raw}
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    for topic, key, value in messages:
        producer.send(topics.get(topic, topic), key=key, value=value)
    producer.flush(10)
    producer.close()


def _all_committed(settings: AlertingSettings) -> bool:
    """Whether the group has committed every record of its topics (the batch was stored)."""
    topics = settings.topics
    return all_committed(
        settings.bootstrap_servers,
        settings.group_id,
        (topics.predictions, topics.raw, topics.heartbeats),
        settings.topic_partitions,
    )


@cache
def _viewer_headers(store_url: str) -> dict[str, str]:
    """A viewer in the store at ``store_url`` (once per store: every worker sharing it
    knows it), as the Authorization header the alert API wants."""
    store = open_store(store_url)
    try:
        _, key = create_operator(store, "durability-viewer", Role.VIEWER)
    finally:
        store.close()
    return {"Authorization": f"Bearer {key.get_secret_value()}"}


class AlertingProcess(WorkerProcess):
    """``harstream alerting`` as a child process on a free port."""

    command = "alerting"

    def __init__(self, settings: AlertingSettings, log: Path) -> None:
        super().__init__(log)
        self.settings = settings

    def env(self) -> dict[str, str]:
        s = self.settings
        return {
            "HARSTREAM_ALERTING_KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
            "HARSTREAM_ALERTING_KAFKA_PROFILE": s.kafka_profile,
            "HARSTREAM_ALERTING_TOPIC_PREFIX": s.topic_prefix,
            "HARSTREAM_ALERTING_TOPIC_PARTITIONS": str(s.topic_partitions),
            "HARSTREAM_ALERTING_GROUP_ID": s.group_id,
            "HARSTREAM_ALERTING_AUTO_OFFSET_RESET": "earliest",
            "HARSTREAM_ALERTING_HOST": "127.0.0.1",
            "HARSTREAM_ALERTING_PORT": str(self.port),
            "HARSTREAM_ALERTING_STORE_URL": s.store_url,
            "HARSTREAM_ALERTING_TICK_INTERVAL_S": "0.2",
            "HARSTREAM_ALERTING_COMMIT_INTERVAL_S": str(s.commit_interval_s),
            "HARSTREAM_ALERTING_RULES": s.rules.model_dump_json(),
        }

    def alerts(self, **query: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/v1/alerts?" + "&".join(
            f"{k}={v}" for k, v in query.items()
        )
        request = urllib.request.Request(url, headers=_viewer_headers(self.settings.store_url))
        with urllib.request.urlopen(request, timeout=5) as r:
            return list(json.load(r)["alerts"])


@pytest.fixture
def processes() -> Iterator[list[AlertingProcess]]:
    started: list[AlertingProcess] = []
    yield started
    for p in started:
        p.stop()


def test_a_fall_survives_kill_9_during_its_confirmation(
    stream_settings: Callable[..., AlertingSettings],
    tmp_path: Path,
    processes: list[AlertingProcess],
) -> None:
    """Issue 8 item 1: impact, ~15 s lying, kill -9, restart, lying goes on: one fall."""
    settings = _settings(stream_settings, f"sqlite:///{tmp_path / 'alerts.db'}")
    first = AlertingProcess(settings, tmp_path / "alerting-1.log").start()
    processes.append(first)
    _produce(settings, _fall_windows("dev-fall", 0, HALF_WAY))
    # The pending impact's prediction is committed: only the stored snapshot remembers it.
    wait_for(lambda: _all_committed(settings), 30, "half the fall committed")
    assert first.alerts(type="FALL_SUSPECTED") == []
    first.kill()

    second = AlertingProcess(settings, tmp_path / "alerting-2.log").start()
    processes.append(second)
    _produce(settings, _fall_windows("dev-fall", HALF_WAY, FALL_END))
    (fall,) = wait_for(lambda: second.alerts(type="FALL_SUSPECTED"), 30, "FALL_SUSPECTED")
    assert fall["device_id"] == "dev-fall"
    assert fall["details"]["impact_g"] == pytest.approx(3.1)
    wait_for(lambda: _all_committed(settings), 30, "the rest committed")
    assert len(second.alerts(type="FALL_SUSPECTED")) == 1


def test_kills_between_checkpoints_replay_without_losing_or_repeating_the_fall(
    stream_settings: Callable[..., AlertingSettings],
    tmp_path: Path,
    processes: list[AlertingProcess],
) -> None:
    """Checkpoints are rare here (one an hour): a kill -9 half-way through the confirmation
    loses the unstored state, and the replay rebuilds it; a kill -9 after the fall opened
    (stored at once, with its snapshot) replays predictions that snapshot already counts."""
    settings = _settings(
        stream_settings, f"sqlite:///{tmp_path / 'alerts.db'}", commit_interval_s=3600.0
    )
    predictions = "harstream_alerting_predictions_total"
    first = AlertingProcess(settings, tmp_path / "alerting-1.log").start()
    processes.append(first)
    _produce(settings, _fall_windows("dev-fall", 0, HALF_WAY))
    wait_for(lambda: first.metric(predictions) == HALF_WAY, 30, "half the fall read")
    first.kill()
    assert not _all_committed(settings)

    second = AlertingProcess(settings, tmp_path / "alerting-2.log").start()
    processes.append(second)
    _produce(settings, _fall_windows("dev-fall", HALF_WAY, FALL_END - 5))
    (fall,) = wait_for(lambda: second.alerts(type="FALL_SUSPECTED"), 30, "FALL_SUSPECTED")
    assert fall["details"]["impact_g"] == pytest.approx(3.1)
    # The window that confirmed it: the snapshot stored with the alert counts it.
    confirmed = round((fall["details"]["event_time"] - T0 - WINDOW_S) / STEP_S)
    assert confirmed < FALL_END - 5
    _produce(settings, _fall_windows("dev-fall", FALL_END - 5, FALL_END))
    wait_for(lambda: second.metric(predictions) == FALL_END, 30, "the whole fall read")
    second.kill()

    third = AlertingProcess(settings, tmp_path / "alerting-3.log").start()
    processes.append(third)
    wait_for(lambda: third.metric(predictions) == FALL_END, 30, "everything replayed")
    # The windows up to the confirmation (and any read with it in one batch) are duplicates
    # of the snapshot stored with the alert; those produced after it were never stored and
    # are judged again, still lying: nothing new opens.
    duplicates = third.metric("harstream_alerting_duplicate_predictions_total")
    assert confirmed + 1 <= duplicates <= FALL_END - 5
    (again,) = third.alerts(type="FALL_SUSPECTED")
    assert again["alert_id"] == fall["alert_id"]


def test_devices_silent_before_a_kill_go_offline_after_the_restart(
    stream_settings: Callable[..., AlertingSettings],
    tmp_path: Path,
    processes: list[AlertingProcess],
) -> None:
    """Issue 8 item 2: 5 devices fall silent, alerting is killed before the threshold."""
    settings = _settings(
        stream_settings,
        f"sqlite:///{tmp_path / 'alerts.db'}",
        rules={"offline_after_s": 15.0},
    )
    first = AlertingProcess(settings, tmp_path / "alerting-1.log").start()
    processes.append(first)
    devices = [f"dev-silent-{i}" for i in range(5)]
    now = time.time()
    _produce(settings, [_packet(d, seq, now) for d in devices for seq in range(3)])
    wait_for(lambda: _all_committed(settings), 30, "traffic committed")
    first.kill()
    assert time.time() - now < 15.0, "too slow to kill before the threshold: scenario not run"

    second = AlertingProcess(settings, tmp_path / "alerting-2.log").start()
    processes.append(second)

    def offline() -> list[dict[str, Any]]:
        found = second.alerts(type="DEVICE_OFFLINE")
        return found if len(found) >= len(devices) else []

    alerts = wait_for(offline, 45, "DEVICE_OFFLINE for every silent device")
    assert sorted(a["device_id"] for a in alerts) == devices
    assert all(a["details"]["last_seen_at"] == pytest.approx(now) for a in alerts)


def test_an_inference_stall_is_one_pipeline_alert_not_a_fleet_offline(
    stream_settings: Callable[..., AlertingSettings], tmp_path: Path
) -> None:
    """Issue 8 item 3: devices keep sending while predictions stop."""
    settings = _settings(
        stream_settings,
        f"sqlite:///{tmp_path / 'alerts.db'}",
        rules={"offline_after_s": 3.0, "pipeline_stall_s": 4.0, "cooldown_s": 0.0},
    )
    asyncio.run(_stall(settings))


async def _stall(settings: AlertingSettings) -> None:
    service = AlertingService(settings, CollectorRegistry())
    await service.start()
    store = service.store
    assert store is not None
    devices = [f"dev-{i}" for i in range(8)]
    seq = 0

    async def second(predict: bool) -> None:
        nonlocal seq
        now = time.time()
        messages = [_packet(d, seq, now) for d in devices]
        if predict:
            messages += [
                (
                    "predictions",
                    d.encode(),
                    prediction(seq, "SITTING", WALKING, device=d, ingested_at=now - 1.0).to_bytes(),
                )
                for d in devices
            ]
        seq += 1
        await asyncio.to_thread(_produce, settings, messages)
        await asyncio.sleep(0.5)

    def of(kind: AlertType) -> list[Any]:
        return store.list_alerts(kind=kind)

    try:
        for _ in range(6):  # healthy: ~3 s
            await second(predict=True)
        assert of(AlertType.PIPELINE_STALLED) == []
        while not of(AlertType.PIPELINE_STALLED):  # model server paused: no predictions
            await second(predict=False)
            assert seq < 60, "no PIPELINE_STALLED within ~30 s of stalled predictions"
        for _ in range(4):  # the stall goes on a little: still one alert
            await second(predict=False)
        (stall,) = of(AlertType.PIPELINE_STALLED)
        assert stall.device_id == PIPELINE_SCOPE
        assert stall.details["partitions"]
        while of(AlertType.PIPELINE_STALLED)[0].state.value != "resolved":
            await second(predict=True)
            assert seq < 120, "PIPELINE_STALLED never resolved"
        assert of(AlertType.DEVICE_OFFLINE) == []  # every device kept sending
        assert len(of(AlertType.PIPELINE_STALLED)) == 1
        # Then the devices really go silent: each its own DEVICE_OFFLINE, no pipeline alert.
        deadline = time.monotonic() + 30
        while len(of(AlertType.DEVICE_OFFLINE)) < len(devices):
            assert time.monotonic() < deadline, "silent devices never went offline"
            await asyncio.sleep(0.2)
        assert len(of(AlertType.PIPELINE_STALLED)) == 1
    finally:
        await service.stop()


def test_devices_move_to_a_joining_worker_with_their_state(
    stream_settings: Callable[..., AlertingSettings], tmp_path: Path
) -> None:
    """A second worker joins mid-confirmation and later leaves: every fall opens once, on
    whichever worker owns the device when the confirmation completes."""
    store = f"sqlite:///{tmp_path / 'alerts.db'}"
    settings = _settings(stream_settings, store)
    asyncio.run(_rebalance(settings))


async def _rebalance(settings: AlertingSettings) -> None:
    devices = [f"dev-{i}" for i in range(12)]  # spread over the 4 partitions
    a = AlertingService(settings, CollectorRegistry())
    b = AlertingService(settings, CollectorRegistry())
    await a.start()
    try:
        await asyncio.to_thread(
            _produce, settings, [m for d in devices for m in _fall_windows(d, 0, HALF_WAY)]
        )
        await _until(lambda: _all_committed(settings), "first half committed")
        await b.start()
        await _until(
            lambda: (
                len(a._partitions) + len(b._partitions) == settings.topic_partitions
                and bool(a._partitions)
                and bool(b._partitions)
            ),
            "partitions split between the two workers",
        )
        moved = {d for d, p in a._device_partition.items()} | set(b._device_partition)
        assert moved == set(devices), "every device restored by its new owner"
        await asyncio.to_thread(
            _produce,
            settings,
            [m for d in devices for m in _fall_windows(d, HALF_WAY, HALF_WAY + 6)],
        )
        await _until(lambda: _all_committed(settings), "more lying committed")
        await b.stop()  # leaves: worker a takes every partition back, with the states
        await _until(lambda: len(a._partitions) == settings.topic_partitions, "a owns everything")
        await asyncio.to_thread(
            _produce,
            settings,
            [m for d in devices for m in _fall_windows(d, HALF_WAY + 6, FALL_END)],
        )
        assert a.store is not None
        store = a.store

        def falls() -> list[Any]:
            found = store.list_alerts(kind=AlertType.FALL_SUSPECTED)
            return found if len(found) >= len(devices) else []

        await _until(falls, "a fall for every device")
        await _until(lambda: _all_committed(settings), "all committed")
        assert sorted(f.device_id for f in store.list_alerts(kind=AlertType.FALL_SUSPECTED)) == (
            sorted(devices)
        )
    finally:
        await b.stop()
        await a.stop()


async def _until(check: Callable[[], Any], what: str, timeout_s: float = 45.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.1)


def test_garbage_on_the_raw_topic_is_skipped_not_fatal(
    stream_settings: Callable[..., AlertingSettings], tmp_path: Path
) -> None:
    settings = _settings(stream_settings, f"sqlite:///{tmp_path / 'alerts.db'}")
    asyncio.run(_garbage(settings))


async def _garbage(settings: AlertingSettings) -> None:
    service = AlertingService(settings, CollectorRegistry())
    await service.start()
    try:
        good = _packet("dev-ok", 0, time.time())
        wrong_key = ("raw", b"someone-else", good[2])
        garbage = [
            ("raw", b"x", b"not a frame"),
            ("raw", b"\xff\xfe", b"HR\x01\x00\x00\x00\x05{bad"),
            ("raw", b"", b""),
            wrong_key,
            good,
        ]
        # Predictions keyed other than by their device sit in another device's partition:
        # dead letters, never judged.
        ok = prediction(0, "WALKING", WALKING, device="dev-ok").to_bytes()
        garbage += [
            ("predictions", b"dev-other", ok),
            ("predictions", b"\xff\xfedev-ok", ok),
            ("predictions", b"dev-ok", ok),
        ]
        # Junk on the heartbeats topic is skipped and counted: it proves nothing.
        heartbeats = settings.topics.heartbeats
        garbage += [(heartbeats, None, b"junk"), (heartbeats, b"k", b'{"schema":"x"}')]  # type: ignore[list-item]
        await asyncio.to_thread(_produce, settings, garbage)
        await _until(lambda: _all_committed(settings), "all committed")
        sample = service.registry.get_sample_value
        assert sample("harstream_alerting_heartbeats_skipped_total") == 2
        assert not any(c.running for c in service._clocks.values())
        assert sample("harstream_alerting_raw_records_skipped_total") == 4
        assert sample("harstream_dead_letters_total", {"error_type": "SchemaError"}) == 2
        assert sample("harstream_alerting_predictions_total") == 1
        assert set(service.fleet.devices) == {"dev-ok"}
        assert service.failure is None
    finally:
        await service.stop()


def test_a_broker_pause_does_not_take_devices_that_keep_sending_offline(
    tmp_path: Path, unique_id: str
) -> None:
    """The fault suite's finding: a 30 s broker pause opened DEVICE_OFFLINE for devices that
    kept sending. Here: a private broker paused for 3× the offline threshold, ingest's real
    producer (with its heartbeats) and devices that resend after every refusal, as they do
    after a 503."""
    broker = EmbeddedBroker(log_path=tmp_path / "broker.log").start()
    try:
        asyncio.run(_broker_pause(broker, tmp_path, unique_id))
    finally:
        broker.stop()


async def _broker_pause(broker: EmbeddedBroker, tmp_path: Path, unique_id: str) -> None:
    common: dict[str, Any] = {
        "kafka_bootstrap_servers": broker.bootstrap_servers,
        "kafka_profile": "tansu",
        "topic_prefix": f"pause-{unique_id}",
        "topic_partitions": 2,
    }
    settings = AlertingSettings(
        **common,
        group_id=f"alerting-{unique_id}",
        auto_offset_reset="earliest",
        host="127.0.0.1",
        port=0,
        store_url=f"sqlite:///{tmp_path / 'alerts.db'}",
        tick_interval_s=0.2,
        rules={"offline_after_s": 5.0},
    )
    create_topics(settings)
    sink = KafkaPacketSink(IngestSettings(**common, produce_timeout_s=1.0))
    service = AlertingService(settings, CollectorRegistry())
    devices = [f"dev-{i}" for i in range(6)]
    sending = set(devices)
    stop = asyncio.Event()

    async def device(name: str) -> None:
        seq = 0
        while not stop.is_set():
            if name in sending:
                packet = RawPacket(name, seq, 1.7e9 + seq, 50.0, np.zeros((50, 6)), time.time())
                with contextlib.suppress(BrokerUnavailableError):  # a 503: resend later
                    await sink.send(name.encode(), packet.to_bytes())
                    seq += 1
            await asyncio.sleep(0.5)

    await sink.start()
    await service.start()
    tasks = [asyncio.create_task(device(d)) for d in devices]
    store = service.store
    assert store is not None
    try:
        await _until(lambda: service.fleet.devices_tracked == len(devices), "devices tracked")
        await _until(lambda: sink.heartbeats_sent > 0, "heartbeats written")
        await asyncio.sleep(3.0)  # a few seconds of normal traffic and heartbeats
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(15.0)  # the outage itself: 3× the offline threshold
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        # Devices resend, the producer recovers (or is replaced): traffic flows again.
        sent = sink.heartbeats_sent
        await _until(lambda: sink.heartbeats_sent > sent, "heartbeats again", 60)
        await asyncio.sleep(8.0)  # longer than the threshold, with the pipeline back
        assert store.list_alerts(kind=AlertType.DEVICE_OFFLINE) == []
        # A device that really stops is still seen going offline.
        sending.discard("dev-0")
        (offline,) = await _until(
            lambda: store.list_alerts(kind=AlertType.DEVICE_OFFLINE), "dev-0 offline", 30
        )
        assert offline.device_id == "dev-0"
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await service.stop()
        await sink.close()


class _SlowRestore:
    """An alert store whose device restore takes a while (a busy database)."""

    def __init__(self, store: Any, delay_s: float) -> None:
        self._store, self._delay_s = store, delay_s

    def devices(self, partitions: Any) -> Any:
        time.sleep(self._delay_s)
        return self._store.devices(partitions)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_nothing_is_judged_before_its_devices_are_restored(
    stream_settings: Callable[..., AlertingSettings], tmp_path: Path
) -> None:
    """aiokafka sets a new assignment (and fetches for it) before it awaits the rebalance
    listener: with a slow restore, a replay used to be judged from scratch and the fall
    opened a second time (seen once under load in the full suite)."""
    asyncio.run(_slow_restore(stream_settings, tmp_path))


async def _slow_restore(stream_settings: Callable[..., AlertingSettings], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'alerts.db'}"
    first = _settings(stream_settings, url)
    await asyncio.to_thread(_produce, first, _fall_windows("dev-7", 0, FALL_END))
    service = AlertingService(first, CollectorRegistry())
    await service.start()
    try:
        store = service.store
        assert store is not None
        await _until(lambda: store.list_alerts(kind=AlertType.FALL_SUSPECTED), "the fall")
    finally:
        await service.stop()
    # A new group replays everything: a superset of what a crash before its commit replays.
    again = _settings(stream_settings, url)
    slow = _SlowRestore(open_store(url), delay_s=3.0)
    restarted = AlertingService(again, CollectorRegistry(), store=slow)  # type: ignore[arg-type]
    await restarted.start()
    try:
        predictions = "harstream_alerting_predictions_total"
        await _until(
            lambda: restarted.registry.get_sample_value(predictions) == FALL_END, "replayed"
        )
        assert len(slow.list_alerts(kind=AlertType.FALL_SUSPECTED)) == 1
        assert (
            restarted.registry.get_sample_value("harstream_alerting_duplicate_predictions_total")
            == FALL_END
        )
    finally:
        await restarted.stop()
