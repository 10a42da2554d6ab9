"""Exact table recovery with batched producing on the local broker (Tansu), and what batching
buys (issue 10, hot spot 1).

Tansu answers ListOffsets with the first offset of a partition's last record batch + 1, and
faust's table recovery trusts that end offset: with changelog batches of several records a
memory table lost updates and a RocksDB table restarted on its own disk crashed
(``ConsistencyError: persisted offset > highwater``). The worker used to produce one record
per batch to avoid it; now it produces in batches and
:func:`~services.preprocess.faust_internals.correct_highwaters` takes the end offsets from a
Fetch instead. These tests run the real worker (``harstream preprocess`` with a probe that
writes the table faust restored, before the rewind) on changelogs whose last batches hold
many records, and check that it restored exactly what the changelog holds.

``python -m tests.integration.test_preprocess_recovery recovery --reported-highwaters`` runs
the same scenarios without the correction (what it prevents);
``python -m tests.integration.test_preprocess_recovery backlog`` measures the worker working
off a backlog with one record per produce batch (the old local profile) and batched.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from faust.types import TP
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from services.common.broker import EmbeddedBroker, free_port, wait_for_port
from services.common.kafka.topics import create_topics
from services.preprocess.faust_internals import fetched_highwaters
from services.preprocess.settings import PreprocessSettings
from services.preprocess.stream import DeviceStream
from shared.dsp import PreprocessingConfig
from shared.messages import RawPacket, WindowMessage
from tests.integration.test_preprocess_crash import PACKET, T0, TABLE, Fleet, read_all, send
from tests.integration.test_preprocess_worker import Worker

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


# --- the probe worker ----------------------------------------------------------------------


def run_probe_worker() -> None:
    """The real worker (``harstream preprocess``, configured from the environment). After
    every table recovery it appends the restored table to ``$HARSTREAM_PROBE_DUMP`` as one
    JSON line (key hex -> sha256 of the value, and each device's ``last_seq``), before the
    rewind runs. ``HARSTREAM_PROBE_REPORTED_HIGHWATERS=1`` leaves faust's end offsets as the
    broker reports them (no correction); ``HARSTREAM_PROBE_ONE_RECORD_BATCHES=1`` produces
    one record per batch, the local profile's setting before the correction."""
    from services.cli import main
    from services.preprocess import app

    dump = Path(os.environ["HARSTREAM_PROBE_DUMP"])
    rewind = app.rewind_to_restored_state
    config = PreprocessingConfig()

    async def dumping(consumer: Any, table: Any, raw_topic: str, metrics: Any) -> Any:
        restored: dict[str, str] = {}
        last_seq: dict[str, int] = {}
        for key, value in table.items():
            restored[key.hex()] = hashlib.sha256(value).hexdigest()
            if not key.startswith(b"\xff"):  # not a position
                last_seq[key.decode()] = DeviceStream.from_bytes(value, config).last_seq
        with dump.open("a") as out:  # noqa: ASYNC230 - a line per recovery, test probe
            out.write(json.dumps({"table": restored, "last_seq": last_seq}) + "\n")
        return await rewind(consumer, table, raw_topic, metrics)

    app.rewind_to_restored_state = dumping
    if os.environ.get("HARSTREAM_PROBE_REPORTED_HIGHWATERS"):
        app.correct_highwaters = lambda: None  # type: ignore[attr-defined]
    if os.environ.get("HARSTREAM_PROBE_ONE_RECORD_BATCHES"):
        options = app.faust_options

        def one_record(settings: PreprocessSettings) -> dict[str, Any]:
            return {**options(settings), "producer_max_batch_size": 1}

        app.faust_options = one_record
    sys.argv = ["harstream", "preprocess"]  # through the CLI group: its logging set-up
    main()


class ProbeWorker(Worker):
    """:class:`Worker` running :func:`run_probe_worker`."""

    def __init__(self, settings: PreprocessSettings, log: Path, dump: Path,
                 reported_highwaters: bool = False,
                 one_record_batches: bool = False) -> None:  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("HARSTREAM_")}
        values = settings.model_dump(mode="json")
        env.update(
            {
                f"HARSTREAM_PREPROCESS_{k.upper()}": str(v)
                for k, v in values.items()
                if v is not None
            }
        )
        env["HARSTREAM_PROBE_DUMP"] = str(dump)
        if reported_highwaters:
            env["HARSTREAM_PROBE_REPORTED_HIGHWATERS"] = "1"
        if one_record_batches:
            env["HARSTREAM_PROBE_ONE_RECORD_BATCHES"] = "1"
        self.settings, self.log, self.dump = settings, log, dump
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.test_preprocess_recovery",
                 "probe-worker"],
                env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        assert wait_for_port("127.0.0.1", settings.metrics_port, 30), self.tail()

    def recoveries(self) -> list[dict[str, Any]]:
        if not self.dump.exists():
            return []
        return [json.loads(line) for line in self.dump.read_text().splitlines() if line]

    def wait_for(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        """Poll the worker (its metrics, its dump file) until ``condition`` or it exits."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if condition():
                    return True
            except OSError:  # its metrics listener, closing as it exits (or not yet up)
                pass
            time.sleep(0.05)
        return False


# --- what the broker holds -----------------------------------------------------------------


def changelog_of(settings: PreprocessSettings) -> str:
    return f"{settings.app_id}-{TABLE}-changelog"


def reported_ends(settings: PreprocessSettings, topic: str) -> dict[int, int]:
    """End offsets as the broker's ListOffsets answers them."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        return {tp.partition: end for tp, end in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def tail_view(changelog: dict[int, list[tuple[int, bytes, bytes]]]) -> dict[str, str]:
    """What an exact recovery restores: each key's last changelog record (hashed as the
    probe dumps it)."""
    return {
        key.hex(): hashlib.sha256(value).hexdigest()
        for records in changelog.values()
        for _, key, value in records
    }


@dataclass
class Recovery:
    """One stop-and-restart of the worker over a changelog of many-record batches."""

    #: Changelog partitions whose reported end offset was short of their records.
    short_ends: dict[int, tuple[int, int]] = field(default_factory=dict)
    changelog_records: int = 0
    #: The restarted worker restored this (None: it did not get there, see ``log``).
    restored: dict[str, Any] | None = None
    #: Keys whose restored value is not the changelog's last (or missing, or extra).
    wrong_keys: int = 0
    #: Devices restored behind their last packet.
    devices_behind: int = 0
    rewound: float = 0.0
    #: Packets the restarted worker processed that were not replays, and its gaps.
    processed_after: float = 0.0
    gaps: float = 0.0
    exit_code: int | None = None
    log: str = ""
    #: The asyncio errors of clients left open, in both workers' whole log.
    unclosed_clients: int = 0

    @property
    def exact(self) -> bool:
        return self.restored is not None and self.wrong_keys == 0 and self.devices_behind == 0


def recovery_round(broker: EmbeddedBroker, workdir: Path, *, store: str, stop: signal.Signals,
                   devices: int = 60, packets: int = 50, reported_highwaters: bool = False,
                   timeout_s: float = 120) -> Recovery:  # fmt: skip
    """``devices * packets`` packets go through the worker in batches of ``devices / 3``
    (about one packet per device each, so ~``devices * packets`` state records, produced in
    changelog batches of many records); it is stopped with ``stop`` and restarted on the same
    disk. The restored table must be the changelog's last record of every key, every device
    at its last packet; the restarted worker then processes one more packet per device
    without a gap or a rewind."""
    unique = uuid.uuid4().hex[:10]
    (workdir / unique).mkdir(parents=True)
    settings = PreprocessSettings(
        kafka_bootstrap_servers=broker.bootstrap_servers,
        kafka_profile="tansu",
        topic_prefix=f"rec-{unique}",
        topic_partitions=4,
        app_id=f"pp-{unique}",
        data_dir=workdir / unique / "disk",
        store=store,
        batch_max_size=max(1, devices // 3),
        metrics_host="127.0.0.1",
        metrics_port=free_port(),
        # A state record per device per batch: changelogs of many multi-record batches.
        checkpoint_interval_s=0,
    )
    create_topics(settings)
    fleet = Fleet(devices, packets + 1, seed=5)
    send(settings, fleet, range(packets))
    total = devices * packets
    log = workdir / unique / "worker.log"
    worker = ProbeWorker(
        settings, log, workdir / unique / "restored-1.jsonl",
        reported_highwaters=reported_highwaters,
    )  # fmt: skip
    result = Recovery()
    try:
        # Counted once a batch's changelog records are acknowledged (the packets counter
        # is counted when a batch starts).
        done = worker.wait_for(
            lambda: worker.metric("harstream_preprocess_samples_total") >= total * PACKET,
            timeout_s,
        )
        assert done, worker.tail()
        result.exit_code = worker.stop(stop)
        changelog = read_all(settings, changelog_of(settings), idle_s=1.0)
        result.changelog_records = sum(len(r) for r in changelog.values())
        ends = reported_ends(settings, changelog_of(settings))
        result.short_ends = {
            p: (ends[p], records[-1][0] + 1)
            for p, records in changelog.items()
            if records and ends[p] != records[-1][0] + 1
        }
        expected = tail_view(changelog)
        worker = ProbeWorker(
            settings.model_copy(update={"metrics_port": free_port()}), log,
            workdir / unique / "restored-2.jsonl", reported_highwaters=reported_highwaters,
        )  # fmt: skip
        if worker.wait_for(lambda: bool(worker.recoveries()), timeout_s):
            result.restored = worker.recoveries()[-1]
            table = result.restored["table"]
            result.wrong_keys = len(set(table.items()) ^ set(expected.items()))
            result.devices_behind = sum(
                1 for d in fleet.ids if result.restored["last_seq"].get(d, -1) < packets - 1
            )
            send(settings, fleet, range(packets, packets + 1))

            # Replayed packets the restored states cover are dropped as duplicates, without
            # samples: only the new packet of each device counts.
            worker.wait_for(
                lambda: worker.metric("harstream_preprocess_samples_total") >= devices * PACKET,
                60,
            )
            result.processed_after = worker.metric("harstream_preprocess_samples_total") / PACKET
            result.gaps = worker.metric("harstream_preprocess_gaps_total")
            result.rewound = worker.metric("harstream_preprocess_rewound_messages_total")
            result.exit_code = worker.stop()
        else:
            result.exit_code = worker.process.poll()
    finally:
        result.log = worker.tail()
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()
    result.unclosed_clients = log.read_text(errors="replace").count("Unclosed AIOKafka")
    return result


# --- tests ---------------------------------------------------------------------------------


def test_tansu_reports_short_end_offsets_and_the_fetch_corrects_them(
    broker: EmbeddedBroker, unique_id: str
) -> None:
    """Batches of 5, 1 and 7 records on partition 0, 1 and 1 on partition 1, 4 on partition
    2, nothing on 3: ListOffsets answers the last batch's first offset + 1 (the broker bug;
    if this part fails, Tansu was fixed and the correction is no longer needed), the fetched
    high-water marks are the true ends."""
    topic = f"hw-{unique_id}"

    async def run() -> tuple[dict[int, int], dict[int, int]]:
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
        admin.create_topics([NewTopic(topic, 4, 1)])
        admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=20)
        await producer.start()
        try:
            for partition, batches in {0: (5, 1, 7), 1: (1, 1), 2: (4,)}.items():
                for n in batches:
                    sent = [await producer.send(topic, b"v", partition=partition)
                            for _ in range(n)]  # fmt: skip
                    await asyncio.gather(*sent)  # one batch: acknowledged before the next
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers)
        await consumer.start()
        try:
            reported = await consumer.end_offsets([TP(topic, p) for p in range(4)])
        finally:
            await consumer.stop()
        fetched = await fetched_highwaters(
            lambda: AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers), reported, 30
        )
        return (
            {tp.partition: end for tp, end in reported.items()},
            {tp.partition: end for tp, end in fetched.items()},
        )

    reported, fetched = asyncio.run(run())
    assert reported == {0: 7, 1: 2, 2: 1, 3: 0}
    assert fetched == {0: 13, 1: 2, 2: 4, 3: 0}


@pytest.mark.parametrize(
    ("store", "stop"),
    [
        ("memory://", signal.SIGKILL),
        ("rocksdb://", signal.SIGKILL),
        ("rocksdb://", signal.SIGTERM),
    ],
    ids=["memory-kill", "rocksdb-same-disk-kill", "rocksdb-same-disk-sigterm"],
)
def test_recovery_is_exact_with_multi_record_changelog_batches(
    broker: EmbeddedBroker, tmp_path: Path, store: str, stop: signal.Signals
) -> None:
    """3,000 state updates (60 devices x 50 packets) in changelog batches of many records:
    the restart restores every key's last changelog record and every device at its last
    packet (before the correction: a memory table lost updates, RocksDB restarted on its own
    disk after a kill -9 crashed), rewinds nothing and carries on without a gap."""
    result = recovery_round(broker, tmp_path, store=store, stop=stop)
    assert result.short_ends, "no multi-record last batch: the test would prove nothing"
    assert result.changelog_records >= 3000
    assert result.exact, (result.wrong_keys, result.devices_behind, result.log)
    assert result.restored is not None and len(result.restored["last_seq"]) == 60
    assert (result.processed_after, result.gaps, result.rewound) == (60, 0, 0), result.log
    assert "ConsistencyError" not in result.log
    assert result.unclosed_clients == 0
    assert result.exit_code == 0, result.log


# --- what batching buys --------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backlog_run(broker: EmbeddedBroker, workdir: Path, fleet: Fleet,
                one_record_batches: bool) -> dict[str, float]:  # fmt: skip
    """The worker works off a backlog of the fleet's packets: windows per second from its
    first packet processed to its last window, its CPU and the broker's per packet."""
    unique = uuid.uuid4().hex[:10]
    settings = PreprocessSettings(
        kafka_bootstrap_servers=broker.bootstrap_servers,
        kafka_profile="tansu",
        topic_prefix=f"bl-{unique}",
        topic_partitions=4,
        app_id=f"pp-{unique}",
        data_dir=workdir / unique,
        metrics_host="127.0.0.1",
        metrics_port=free_port(),
    )
    create_topics(settings)
    send(settings, fleet, range(fleet.packets))
    packets = fleet.packets * len(fleet.ids)
    windows = sum(len(fleet.expected(d)) for d in fleet.ids)
    worker = ProbeWorker(settings, workdir / f"{unique}.log", workdir / f"{unique}.jsonl",
                         one_record_batches=one_record_batches)  # fmt: skip
    assert broker.pid is not None
    try:
        assert worker.wait_for(
            lambda: worker.metric("harstream_preprocess_packets_total") > 0, 120
        ), worker.tail()
        started = time.monotonic()
        cpu0, broker0 = cpu_seconds(worker.process.pid), cpu_seconds(broker.pid)
        assert worker.wait_for(
            lambda: worker.metric("harstream_windows_emitted_total") >= windows, 900
        ), worker.tail()
        seconds = time.monotonic() - started
        cpu = cpu_seconds(worker.process.pid) - cpu0
        broker_cpu = cpu_seconds(broker.pid) - broker0
        batches = worker.metric("harstream_preprocess_batch_seconds_count")
        batch_s = worker.metric("harstream_preprocess_batch_seconds_sum") / batches
    finally:
        worker.stop()
    return {
        "windows_per_s": windows / seconds,
        "packets_per_s": packets / seconds,
        "worker_us_per_packet": cpu / packets * 1e6,
        "broker_us_per_packet": broker_cpu / packets * 1e6,
        "worker_cpu_s_per_s": cpu / seconds,
        "mean_batch_ms": batch_s * 1000,
        "mean_batch_packets": packets / batches,
    }


def run_backlog(args: argparse.Namespace) -> None:
    fleet = Fleet(args.devices, args.packets, seed=1)
    modes = {"one record per batch": True, "batched": False}
    figures: dict[str, list[dict[str, float]]] = {name: [] for name in modes}
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker,
    ):
        for run in range(args.repeats):
            for name, one in modes.items():
                f = backlog_run(broker, Path(tmp), fleet, one_record_batches=one)
                figures[name].append(f)
                print(
                    f"run {run + 1} {name:>21}: {f['windows_per_s']:,.0f} windows/s "
                    f"({f['packets_per_s']:,.0f} packets/s), worker "
                    f"{f['worker_us_per_packet']:,.0f} us/packet "
                    f"({f['worker_cpu_s_per_s']:.2f} CPU), broker "
                    f"{f['broker_us_per_packet']:,.0f} us/packet, mean batch "
                    f"{f['mean_batch_ms']:.1f} ms / {f['mean_batch_packets']:.0f} packets; "
                    f"load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    for name, runs in figures.items():
        median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(
            f"median {name:>21}: {median['windows_per_s']:,.0f} windows/s, worker "
            f"{median['worker_us_per_packet']:,.0f} us/packet, broker "
            f"{median['broker_us_per_packet']:,.0f} us/packet, mean batch "
            f"{median['mean_batch_ms']:.1f} ms ({len(runs)} runs, {args.devices} devices x "
            f"{args.packets} packets)"
        )


class LiveFleet(threading.Thread):
    """``devices`` live devices, each sending one 50-sample packet per second (round-robin,
    paced), for ``seconds``; the samples are a few random packets per device, reused (the
    worker's cost does not depend on them)."""

    def __init__(self, settings: PreprocessSettings, devices: int, seconds: int) -> None:
        super().__init__(daemon=True)
        self.settings, self.devices, self.seconds = settings, devices, seconds
        rng = np.random.default_rng(3)
        gravity = np.array([0, -1, 0, 0, 0, 0], dtype=np.float64)
        self.chunks = [rng.normal(0, 0.3, (PACKET, 6)) + gravity for _ in range(16)]
        self.sent = 0
        #: Seconds the sender fell behind its schedule at worst (the test client's limit).
        self.behind_s = 0.0

    def run(self) -> None:
        producer = KafkaProducer(bootstrap_servers=self.settings.bootstrap_servers, linger_ms=5)
        started = time.monotonic()
        try:
            for seq in range(self.seconds):
                for i in range(self.devices):
                    device = f"live-{i:05d}"
                    samples = self.chunks[(i + seq) % len(self.chunks)]
                    packet = RawPacket(device, seq, T0 + seq, 50.0, samples, time.time())
                    producer.send(
                        self.settings.topics.raw, key=device.encode(), value=packet.to_bytes()
                    )
                    self.sent += 1
                    ahead = started + self.sent / self.devices - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)  # pacing the load, not waiting for a result
                    else:
                        self.behind_s = max(self.behind_s, -ahead)
        finally:
            producer.flush()
            producer.close()


def live_run(broker: EmbeddedBroker, workdir: Path, devices: int, seconds: int,
             one_record_batches: bool, check: bool = False,
             checkpoint_interval_s: float | None = None) -> dict[str, float]:  # fmt: skip
    """The worker under ``devices`` live devices for ``seconds`` (the first 5 s a warm-up):
    packets processed per second against offered, the lag left at the end, its CPU and the
    broker's per packet, batch sizes and times. With ``check``, once every packet is
    processed, the windows missing from the windows topic (0 expected)."""
    unique = uuid.uuid4().hex[:10]
    settings = PreprocessSettings(
        kafka_bootstrap_servers=broker.bootstrap_servers,
        kafka_profile="tansu",
        topic_prefix=f"live-{unique}",
        topic_partitions=4,
        app_id=f"pp-{unique}",
        data_dir=workdir / unique,
        metrics_host="127.0.0.1",
        metrics_port=free_port(),
        **(
            {}
            if checkpoint_interval_s is None
            else {"checkpoint_interval_s": checkpoint_interval_s}
        ),
    )
    create_topics(settings)
    worker = ProbeWorker(settings, workdir / f"{unique}.log", workdir / f"{unique}.jsonl",
                         one_record_batches=one_record_batches)  # fmt: skip
    assert broker.pid is not None
    try:
        assert worker.wait_for(lambda: bool(worker.recoveries()), 60), worker.tail()
        fleet = LiveFleet(settings, devices, seconds)
        fleet.start()
        time.sleep(5.0)  # warm-up: the first packets of every device, the first windows
        names = (
            "packets_total",
            "batch_seconds_count",
            "batch_seconds_sum",
            "states_written_total",
        )
        before = {n: worker.metric(f"harstream_preprocess_{n}") for n in names}
        windows0 = worker.metric("harstream_windows_emitted_total")
        cpu0, broker0, t0, sent0 = (cpu_seconds(worker.process.pid), cpu_seconds(broker.pid),
                                    time.monotonic(), fleet.sent)  # fmt: skip
        fleet.join()
        t1, sent1 = time.monotonic(), fleet.sent
        after = {n: worker.metric(f"harstream_preprocess_{n}") for n in names}
        windows1 = worker.metric("harstream_windows_emitted_total")
        cpu1, broker1 = cpu_seconds(worker.process.pid), cpu_seconds(broker.pid)
        lag = fleet.sent - after["packets_total"]
        missing = -1
        if check:
            # Every packet processed (samples are counted once a batch is acknowledged).
            done = worker.wait_for(
                lambda: worker.metric("harstream_preprocess_samples_total") >= fleet.sent * PACKET,
                600,
            )
            assert done, worker.tail()
            missing = missing_windows(settings, devices, seconds)
    finally:
        worker.stop()
    dt = t1 - t0
    processed = after["packets_total"] - before["packets_total"]
    batches = after["batch_seconds_count"] - before["batch_seconds_count"]
    return {
        "offered_per_s": (sent1 - sent0) / dt,
        "processed_per_s": processed / dt,
        "windows_per_s": (windows1 - windows0) / dt,
        "lag_at_end": lag,
        "worker_cpu_s_per_s": (cpu1 - cpu0) / dt,
        "worker_us_per_packet": (cpu1 - cpu0) / processed * 1e6,
        "broker_us_per_packet": (broker1 - broker0) / processed * 1e6,
        "mean_batch_packets": processed / batches,
        "states_per_packet": (after["states_written_total"] - before["states_written_total"])
        / processed,
        "mean_batch_ms": (after["batch_seconds_sum"] - before["batch_seconds_sum"])
        / batches
        * 1000,
        "sender_behind_s": fleet.behind_s,
        "missing_windows": missing,
    }


def missing_windows(settings: PreprocessSettings, devices: int, seconds: int) -> int:
    """Windows a live fleet's packets make (every device the same number of samples, no
    gap) that are not on the windows topic (distinct ids: duplicates do not count)."""
    config = PreprocessingConfig()
    samples = seconds * PACKET
    per_device = (samples - config.window_size) // config.window_step + 1
    found: dict[str, set[int]] = {}
    for records in read_all(settings, settings.topics.windows, idle_s=3.0).values():
        for _, key, value in records:
            window = WindowMessage.from_bytes(value)
            found.setdefault(key.decode(), set()).add(window.start_index)
    return devices * per_device - sum(len(starts) for starts in found.values())


def run_live(args: argparse.Namespace) -> None:
    modes: dict[str, tuple[bool, float | None]] = {
        "one record per batch": (True, None),
        "batched": (False, None),
    }
    if args.mode != "both":
        modes = {k: v for k, v in modes.items() if v[0] == (args.mode == "one")}
    if args.checkpoint_intervals:
        # Side by side: the device states written every batch vs every few seconds.
        modes = {
            f"checkpoint every {float(s):g} s": (False, float(s))
            for s in args.checkpoint_intervals.split(",")
        }
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker,
    ):
        for devices in (int(d) for d in args.devices.split(",")):
            for name, (one, interval) in [*modes.items()] * args.repeats:
                f = live_run(broker, Path(tmp), devices, args.seconds, one_record_batches=one,
                             check=args.check, checkpoint_interval_s=interval)  # fmt: skip
                print(
                    f"{devices:>5} devices {name:>21}: offered {f['offered_per_s']:,.0f}/s, "
                    f"processed {f['processed_per_s']:,.0f} packets/s "
                    f"({f['windows_per_s']:,.0f} windows/s), lag at the end "
                    f"{f['lag_at_end']:,.0f}; worker {f['worker_cpu_s_per_s']:.2f} CPU, "
                    f"{f['worker_us_per_packet']:,.0f} us/packet, "
                    f"{f['states_per_packet']:.2f} states written/packet; broker "
                    f"{f['broker_us_per_packet']:,.0f} us/packet; batches "
                    f"{f['mean_batch_packets']:.0f} packets in {f['mean_batch_ms']:.1f} ms; "
                    f"sender behind {f['sender_behind_s']:.1f} s; load "
                    f"{os.getloadavg()[0]:.1f}"
                    + (f"; {f['missing_windows']:.0f} windows missing" if args.check else ""),
                    flush=True,
                )


def run_recovery(args: argparse.Namespace) -> None:
    cases = [("memory://", signal.SIGKILL), ("rocksdb://", signal.SIGKILL),
             ("rocksdb://", signal.SIGTERM)]  # fmt: skip
    kept = contextlib.nullcontext(tempfile.mkdtemp(dir=args.keep)) if args.keep else None
    with (
        kept or tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker,
    ):
        for store, stop in cases:
            r = recovery_round(broker, Path(tmp), store=store, stop=stop, timeout_s=args.timeout,
                               reported_highwaters=args.reported_highwaters)  # fmt: skip
            crash = "ConsistencyError" in r.log
            print(
                f"{store} after {stop.name}: {r.changelog_records} changelog records, "
                f"{len(r.short_ends)} partitions with a short reported end "
                f"{sorted(r.short_ends.values())}; "
                + (
                    f"restored {len(r.restored['table'])} keys, {r.wrong_keys} wrong or "
                    f"missing, {r.devices_behind} devices behind their last packet, "
                    f"{r.rewound:.0f} messages rewound"
                    if r.restored is not None
                    else "no recovery finished"
                )
                + (", ConsistencyError in the log" if crash else "")
                + f"; exit {r.exit_code}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("probe-worker", help="run the probe worker (used by the tests)")
    backlog = commands.add_parser("backlog", help="one record per batch against batched")
    backlog.add_argument("--devices", type=int, default=200)
    backlog.add_argument("--packets", type=int, default=60, help="per device")
    backlog.add_argument("--repeats", type=int, default=3)
    live = commands.add_parser("live", help="the worker alone under a live fleet")
    live.add_argument("--devices", default="250,500,1000,2500", help="comma-separated")
    live.add_argument("--seconds", type=int, default=30)
    live.add_argument("--mode", choices=["one", "batched", "both"], default="both")
    live.add_argument(
        "--check", action="store_true", help="then count the windows missing from the topic"
    )
    live.add_argument(
        "--checkpoint-intervals",
        default="",
        help="comma-separated checkpoint_interval_s values to compare (batched), e.g. 0,5",
    )
    live.add_argument("--repeats", type=int, default=1, help="alternated rounds")
    recovery = commands.add_parser("recovery", help="the recovery scenarios, printed")
    recovery.add_argument(
        "--reported-highwaters", action="store_true", help="without the correction"
    )
    recovery.add_argument("--timeout", type=float, default=120.0)
    recovery.add_argument("--keep", default=None, help="keep the logs and disks under this path")
    args = parser.parse_args()
    if args.command == "probe-worker":
        run_probe_worker()
    elif args.command == "backlog":
        run_backlog(args)
    elif args.command == "live":
        run_live(args)
    else:
        run_recovery(args)


if __name__ == "__main__":
    main()
