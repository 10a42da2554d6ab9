"""Crash consistency of the preprocess worker against the real broker (issue 8, item 5).

The invariant: **the committed offset of a raw partition never runs ahead of what the state a
restarted worker restores covers.** If it did, the packets between the restored state and
the committed offset would never be read again: their windows lost, the device's next packet
a gap.

* :func:`audit` checks it directly after a ``kill -9``, from what the broker and the disk
  hold: for every device, the seq of its last packet below the committed offset of its raw
  partition against the ``last_seq`` of the state a restart would restore, for both restart
  cases: *new disk* (each key's last changelog record) and *same disk* (the local RocksDB
  copy overlaid with the changelog records after its persisted offset, as faust's recovery
  replays them).
* The *probe* worker (``python -m tests.integration.test_preprocess_crash probe-worker``,
  the real worker with a hook on faust's offset commit) records, at every commit, the
  changelog records of offsets being committed that the broker has not acknowledged yet,
  and can kill itself right after such a commit: the worst moment.
* ``python -m tests.integration.test_preprocess_crash rounds --rounds 10`` runs kill rounds
  (a fleet streaming, the worker killed at a random moment, the audit, a restart that must
  produce every window bit-equal to the offline core) and prints the counts; ``throughput``
  measures what the fix costs (a backlog worked off with and without it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import rocksdict
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from services.common.broker import EmbeddedBroker, free_port, wait_for_port
from services.common.kafka.topics import create_topics
from services.preprocess.settings import PreprocessSettings
from services.preprocess.stream import DeviceStream
from shared.dsp import PreprocessingConfig, StreamingPreprocessor
from shared.errors import StateDecodeError
from shared.messages import RawPacket, WindowMessage
from tests.integration.test_preprocess_worker import Worker

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKET = 50  # samples per packet (1 s at 50 Hz)
T0 = 1_700_000_000.0
#: faust's key of the persisted changelog offset in each RocksDB partition database.
FAUST_OFFSET_KEY = b"__faust\0offset__"
TABLE = "device-streams"
Records = dict[int, list[tuple[int, bytes, bytes]]]


# --- a fleet of devices streaming to the raw topic -----------------------------------------


class Fleet:
    """``devices`` simulated wearables with deterministic samples (gravity on y plus noise)."""

    def __init__(self, devices: int, packets: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.ids = [f"dev-{i:03d}" for i in range(devices)]
        gravity = np.array([0, -1, 0, 0, 0, 0], dtype=np.float64)
        self.samples = {d: rng.normal(0, 0.3, (packets * PACKET, 6)) + gravity for d in self.ids}
        self.packets = packets

    def packet(self, device: str, seq: int) -> RawPacket:
        chunk = self.samples[device][seq * PACKET : (seq + 1) * PACKET]
        return RawPacket(device, seq, T0 + seq, 50.0, chunk, time.time())

    def expected(self, device: str) -> dict[int, np.ndarray]:
        """The offline core's windows of the device's whole recording, by start index."""
        pre = StreamingPreprocessor()
        found = pre.process(pre.new_state(), self.samples[device])[1]
        return dict(zip(found.start_indices.tolist(), found.data, strict=True))


def send(settings: PreprocessSettings, fleet: Fleet, seqs: range,
         skip: Callable[[str, int], bool] = lambda d, s: False) -> None:  # fmt: skip
    """Send packets ``seqs`` of every device, round-robin, and wait for the acks."""
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5)
    try:
        for seq in seqs:
            for device in fleet.ids:
                if not skip(device, seq):
                    value = fleet.packet(device, seq).to_bytes()
                    producer.send(settings.topics.raw, key=device.encode(), value=value)
        producer.flush()
    finally:
        producer.close()


class PacedProducer(threading.Thread):
    """Sends every device's packets round-robin, ``rate`` packets per second in all, until all
    are sent or :meth:`stop`."""

    def __init__(self, settings: PreprocessSettings, fleet: Fleet, rate: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.fleet, self.rate = settings, fleet, rate
        self._halt = threading.Event()
        #: Sends that failed (the raw topic then lacks those packets: not the worker's loss).
        self.failed = 0

    def run(self) -> None:
        # Not kafka-python's default idempotent producer: after the broker stalls it can stop
        # getting acknowledgements for minutes (shared/notes/tansu.md), and its packets then
        # land after those sent later by another producer, as out-of-order packets would.
        # One request in flight keeps the order through retries.
        producer = KafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers,
            linger_ms=5,
            enable_idempotence=False,
            max_in_flight_requests_per_connection=1,
        )
        started, futures = time.monotonic(), []
        try:
            for seq in range(self.fleet.packets):
                for device in self.fleet.ids:
                    if self._halt.is_set():
                        return
                    value = self.fleet.packet(device, seq).to_bytes()
                    futures.append(
                        producer.send(self.settings.topics.raw, key=device.encode(), value=value)
                    )
                    # Pacing the load (not waiting for a result): sleep while ahead of it.
                    ahead = started + len(futures) / self.rate - time.monotonic()
                    self._halt.wait(max(0.0, ahead))
        finally:
            producer.flush()
            producer.close()
            self.failed = sum(1 for f in futures if f.failed())

    def stop(self) -> None:
        """Stop sending; every packet sent so far is on the topic (or failed) on return."""
        self._halt.set()
        self.join(60)
        assert not self.is_alive(), "the test's producer is still flushing after 60 s"


class BrokerStalls(threading.Thread):
    """Stalls the broker (SIGSTOP, SIGCONT ``stall_s`` later) once every ``period_s``, as a
    broker starved of CPU or paused would be. :attr:`resumed` is set at each SIGCONT."""

    def __init__(self, pid: int, stall_s: float, period_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.stall_s, self.period_s = pid, stall_s, period_s
        self._halt = threading.Event()
        self.resumed = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.period_s - self.stall_s):
            os.kill(self.pid, signal.SIGSTOP)
            try:
                self._halt.wait(self.stall_s)
            finally:
                os.kill(self.pid, signal.SIGCONT)
            self.resumed.set()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        os.kill(self.pid, signal.SIGCONT)


# --- what the broker and the disk hold after a crash ---------------------------------------


def read_all(settings: PreprocessSettings, topic: str, idle_s: float = 1.5) -> Records:
    """Every record of ``topic`` as ``(offset, key, value)`` per partition. Reads until nothing
    arrived for ``idle_s`` (Tansu's end offsets are wrong after multi-record batches)."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False, group_id=None
    )
    tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    found: Records = {p: [] for p in range(settings.topic_partitions)}
    idle_since = time.monotonic()
    try:
        while time.monotonic() - idle_since < idle_s:
            polled = consumer.poll(timeout_ms=200)
            for tp, records in polled.items():
                found[tp.partition].extend((r.offset, r.key, r.value) for r in records)
            if polled:
                idle_since = time.monotonic()
        return found
    finally:
        consumer.close()


def committed_offsets(settings: PreprocessSettings) -> dict[int, int | None]:
    """The worker group's committed offset of each raw partition (OffsetFetch, no join)."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.app_id,
        enable_auto_commit=False,
    )
    try:
        return {
            p: consumer.committed(TopicPartition(settings.topics.raw, p))
            for p in range(settings.topic_partitions)
        }
    finally:
        consumer.close()


def new_disk_view(changelog: Records) -> dict[bytes, bytes]:
    """The table a worker on a new disk restores: each key's last changelog record."""
    return {key: value for records in changelog.values() for _, key, value in records}


def same_disk_view(data_dir: Path, changelog: Records) -> dict[bytes, bytes]:
    """The table a worker restarted on ``data_dir`` restores: the local RocksDB partitions,
    then the changelog records after each partition's persisted offset replayed over them."""
    table: dict[bytes, bytes] = {}
    for partition, records in changelog.items():
        persisted = -1
        for path in data_dir.rglob(f"{TABLE}-{partition}.db"):
            db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
            try:
                for key, value in db.items():  # raw mode: bytes keys and values
                    if key == FAUST_OFFSET_KEY:
                        persisted = int(value)
                    else:
                        table[cast(bytes, key)] = cast(bytes, value)
            finally:
                db.close()
        table.update({key: value for offset, key, value in records if offset > persisted})
    return table


def raw_disorder(raw: Records) -> dict[str, list[int]]:
    """Devices whose packets are not on the raw topic as seq 0, 1, 2, ... in offset order
    (a send that failed, or was reordered by a retry): their seqs as found."""
    seqs: dict[str, list[int]] = {}
    for records in raw.values():
        for _, key, value in sorted(records):
            seqs.setdefault(key.decode(), []).append(RawPacket.from_bytes(value).seq)
    return {d: found for d, found in seqs.items() if found != list(range(len(found)))}


@dataclass
class Audit:
    """Devices whose restored state is behind the committed raw offsets."""

    committed: dict[int, int | None]
    #: device -> (restored last_seq, seq of its last packet below the committed offset)
    behind: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def lost_packets(self) -> int:
        return sum(required - restored for restored, required in self.behind.values())


def audit(table: dict[bytes, bytes], raw: Records, committed: dict[int, int | None]) -> Audit:
    """Compare each device's restored state with the packets the committed offsets skip."""
    config = PreprocessingConfig()
    required: dict[str, int] = {}
    for partition, records in raw.items():
        limit = committed.get(partition)
        for offset, key, value in records:
            if limit is not None and offset < limit:
                device = key.decode()
                required[device] = max(required.get(device, -1), RawPacket.from_bytes(value).seq)
    result = Audit(committed)
    for device, seq in required.items():
        data = table.get(device.encode())
        restored, pending = -1, set[int]()
        if data is not None:
            try:
                stream = DeviceStream.from_bytes(data, config)
            except StateDecodeError:
                stream = DeviceStream.continue_timeline(data, config)
            restored, pending = stream.last_seq, {p.seq for p in stream.pending}
        if seq > restored and seq not in pending:
            result.behind[device] = (restored, seq)
    return result


# --- windows -------------------------------------------------------------------------------


@dataclass
class WindowCheck:
    expected: int = 0
    found: int = 0
    wrong: int = 0
    duplicates: int = 0

    @property
    def lost(self) -> int:
        return self.expected - self.found


def check_windows(settings: PreprocessSettings, fleet: Fleet, timeout_s: float) -> WindowCheck:
    """Read the windows topic until every window of the fleet's whole recordings arrived (or
    the timeout), then 2 s more for late duplicates; compare with the offline core."""
    expected = {d: fleet.expected(d) for d in fleet.ids}
    result = WindowCheck(expected=sum(len(e) for e in expected.values()))
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False, group_id=None
    )
    tps = [TopicPartition(settings.topics.windows, p) for p in range(settings.topic_partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    seen: dict[str, WindowMessage] = {}
    deadline, settle = time.monotonic() + timeout_s, None
    try:
        while time.monotonic() < deadline and (settle is None or time.monotonic() < settle):
            for records in consumer.poll(timeout_ms=200).values():
                for r in records:
                    window = WindowMessage.from_bytes(r.value)
                    first = seen.setdefault(window.window_id, window)
                    if first is not window:
                        result.duplicates += 1
                        result.wrong += not np.array_equal(first.data, window.data)
            if settle is None and len(seen) >= result.expected:
                settle = time.monotonic() + 2.0
    finally:
        consumer.close()
    for window in seen.values():
        block = expected[window.device_id].get(window.start_index)
        if block is None or not np.array_equal(window.data, block):
            result.wrong += 1  # off the device's grid, or other data
        else:
            result.found += 1
    return result


# --- the probe worker ----------------------------------------------------------------------


def run_probe_worker() -> None:
    """The real worker (``harstream preprocess``, configured from the environment) with a
    probe on faust's offset commit. Every commit appends a JSON line to
    ``$HARSTREAM_PROBE_LOG``: the raw offsets committed and how many changelog records of
    offsets below them the broker has not acknowledged yet (``ahead``). With
    ``HARSTREAM_PROBE_KILL=1`` the process kills itself (SIGKILL) right after the first
    commit that ran ahead. With ``HARSTREAM_PROBE_COMMIT_AHEAD=n``, the first commit that
    covers ``HARSTREAM_PROBE_AHEAD_FROM`` messages in all puts each raw offset ``n`` messages
    further than faust asked (what a commit running ahead of the state does,
    deterministically) and the process kills itself right after it.
    ``HARSTREAM_PROBE_KILL_BEFORE_COMMIT=1`` kills it at its first commit, before the commit:
    a crash with nothing committed. ``HARSTREAM_PROBE_WITHOUT_FIX=1`` takes item 5's fix out
    (no wait for the changelog acknowledgements, no positions committed after recovery, faust's
    fetch of its live partition set), to measure what it prevents."""
    from faust.streams import current_event
    from faust.tables.base import Collection
    from faust.transport.drivers import aiokafka as driver

    from services.preprocess.cli import preprocess

    log_path, kill = os.environ["HARSTREAM_PROBE_LOG"], os.environ.get("HARSTREAM_PROBE_KILL")
    skip = int(os.environ.get("HARSTREAM_PROBE_COMMIT_AHEAD", "0"))
    kill_first = os.environ.get("HARSTREAM_PROBE_KILL_BEFORE_COMMIT")
    skip_from = int(os.environ.get("HARSTREAM_PROBE_AHEAD_FROM", "0"))
    sent: list[tuple[Any, int, int]] = []  # (future, raw partition, raw offset)
    send_changelog, faust_commit = Collection.send_changelog, driver.Consumer._commit

    def probed_send(self: Any, *args: Any, **kwargs: Any) -> Any:
        future = send_changelog(self, *args, **kwargs)
        event = current_event()
        assert event is not None
        sent.append((future, event.message.partition, event.message.offset))
        return future

    async def probed_commit(self: Any, offsets: Any) -> bool:
        raw = {tp.partition: o for tp, o in offsets.items() if tp.topic.endswith(".raw.v1")}
        sent[:] = [s for s in sent if not s[0].done()]
        ahead = sum(1 for _, p, o in sent if p in raw and o < raw[p])
        if kill_first and raw:
            os.kill(os.getpid(), signal.SIGKILL)
        skipping = skip and sum(raw.values()) >= skip_from
        if skipping:
            offsets = {tp: o + skip if tp.partition in raw else o for tp, o in offsets.items()}
            raw = {p: o + skip for p, o in raw.items()}
        done = bool(await faust_commit(self, offsets))
        with open(log_path, "a") as out:  # noqa: ASYNC230 - a line per commit, test probe
            out.write(json.dumps({"raw": raw, "ahead": ahead, "done": done}) + "\n")
        if done and (skipping or (kill and ahead)):
            os.kill(os.getpid(), signal.SIGKILL)
        return done

    if os.environ.get("HARSTREAM_PROBE_WITHOUT_FIX"):
        from services.preprocess import app, faust_internals

        async def no_wait(self: Any, timeout_s: float) -> None:
            self._pending.clear()

        async def no_rewind(*args: Any) -> list[Any]:
            return []

        faust_internals.ChangelogAcks.wait = no_wait  # type: ignore[method-assign]
        app.rewind_to_restored_state = no_rewind  # type: ignore[assignment]
        app.fetch_only_active_partitions = lambda: None  # type: ignore[assignment]
    if os.environ.get("HARSTREAM_PROBE_TRACE_OFFSETS"):  # where each partition starts
        import logging

        class Positions(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                text = record.getMessage()
                return "offset" in text.lower() or "seek" in text.lower()

        aiokafka_log = logging.getLogger("aiokafka")
        aiokafka_log.setLevel(logging.DEBUG)
        handler = logging.StreamHandler()
        handler.addFilter(Positions())
        aiokafka_log.addHandler(handler)
    Collection.send_changelog = probed_send  # type: ignore[method-assign]
    driver.Consumer._commit = probed_commit  # type: ignore[method-assign]
    sys.argv = ["harstream preprocess"]
    preprocess()


class ProbeWorker(Worker):
    """:class:`Worker` running :func:`run_probe_worker`."""

    def __init__(self, settings: PreprocessSettings, log: Path, probe_log: Path,
                 kill_on_race: bool = False, commit_ahead: tuple[int, int] = (0, 0),
                 without_fix: bool = False, trace_offsets: bool = False,
                 kill_before_commit: bool = False) -> None:  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("HARSTREAM_")}
        values = settings.model_dump(mode="json")
        # Unset fields stay unset (str(None) would be the path or user "None").
        env.update(
            {
                f"HARSTREAM_PREPROCESS_{k.upper()}": str(v)
                for k, v in values.items()
                if v is not None
            }
        )
        env["HARSTREAM_PROBE_LOG"] = str(probe_log)
        if kill_on_race:
            env["HARSTREAM_PROBE_KILL"] = "1"
        if without_fix:
            env["HARSTREAM_PROBE_WITHOUT_FIX"] = "1"
        if kill_before_commit:
            env["HARSTREAM_PROBE_KILL_BEFORE_COMMIT"] = "1"
        if trace_offsets:
            env["HARSTREAM_PROBE_TRACE_OFFSETS"] = "1"
            env["DEVLOG"] = "1"  # mode's developer log: faust's seeks and dropped messages
        if commit_ahead[0]:
            env["HARSTREAM_PROBE_COMMIT_AHEAD"] = str(commit_ahead[0])
            env["HARSTREAM_PROBE_AHEAD_FROM"] = str(commit_ahead[1])
        self.settings, self.log = settings, log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.test_preprocess_crash", "probe-worker"],
                env=env,
                cwd=REPO_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        assert wait_for_port("127.0.0.1", settings.metrics_port, 30), self.tail()


def probe_commits(probe_log: Path) -> list[dict[str, Any]]:
    if not probe_log.exists():
        return []
    return [json.loads(line) for line in probe_log.read_text().splitlines() if line]


# --- kill rounds ---------------------------------------------------------------------------


@dataclass
class Round:
    new_disk: Audit
    same_disk: Audit
    killed_after_s: float
    commits: int
    racing_commits: int
    killed_by_probe: bool
    #: Devices whose packets the test's producer did not get onto the raw topic in order.
    raw_disorder: dict[str, list[int]] = field(default_factory=dict)
    windows: WindowCheck | None = None


def kill_round(broker: EmbeddedBroker, workdir: Path, rng: random.Random, *,
               devices: int = 24, packets: int = 60, rate: float = 240.0,
               max_delay_s: float | None = None, stall_ms: float = 0,
               probe_kill: bool = True, restart: str | None = "same",
               without_fix: bool = False,
               log: Callable[[str], None] = print) -> Round:  # fmt: skip
    """One round on fresh topics and group: a fleet streams; the probe worker is killed at a
    random moment (or by itself right after a commit that ran ahead of its changelog); the
    audit; then, with ``restart`` ("same" or "new" disk), a restart that must produce every
    window of the fleet bit-equal to the offline core."""
    unique = uuid.uuid4().hex[:10]
    (workdir / unique).mkdir(parents=True)
    settings = PreprocessSettings(
        kafka_bootstrap_servers=broker.bootstrap_servers,
        kafka_profile="tansu",
        topic_prefix=f"crash-{unique}",
        topic_partitions=4,
        app_id=f"pp-{unique}",
        data_dir=workdir / unique / "disk-1",
        metrics_host="127.0.0.1",
        metrics_port=free_port(),
        checkpoint_interval_s=0,  # the audit checks every commit (see crash_settings)
    )
    create_topics(settings)
    fleet = Fleet(devices, packets, seed=rng.randrange(1 << 30))
    probe_log = workdir / unique / "probe.jsonl"
    worker: Worker = ProbeWorker(
        settings, workdir / unique / "worker.log", probe_log, probe_kill, without_fix=without_fix
    )
    producing = PacedProducer(settings, fleet, rate)
    producing.start()
    deadline = time.monotonic() + 60
    while worker.metric("harstream_preprocess_packets_total") == 0:
        assert time.monotonic() < deadline, worker.tail()
        time.sleep(0.05)
    stalls = None
    if stall_ms:
        assert broker.pid is not None
        stalls = BrokerStalls(broker.pid, stall_ms / 1000)
        stalls.start()
    # A random moment before the fleet's end (it streams for devices * packets / rate s).
    delay = rng.uniform(0.5, max_delay_s or max(1.0, devices * packets / rate - 4))
    _exits_within(worker, delay)  # unless the probe kills it first
    if stalls is not None and worker.process.poll() is None:
        stalls.resumed.clear()  # ... just after the broker came back from a stall
        stalls.resumed.wait(10)
        time.sleep(rng.uniform(0, 0.3))
    killed_by_probe = worker.process.poll() is not None
    assert worker.stop(signal.SIGKILL) == -signal.SIGKILL, worker.tail()
    if stalls is not None:
        stalls.stop()
    producing.stop()
    changelog = read_all(settings, f"{settings.app_id}-{TABLE}-changelog", idle_s=1.0)
    raw = read_all(settings, settings.topics.raw)
    committed = committed_offsets(settings)
    commits = probe_commits(probe_log)
    result = Round(
        new_disk=audit(new_disk_view(changelog), raw, committed),
        same_disk=audit(same_disk_view(settings.data_dir, changelog), raw, committed),
        killed_after_s=delay,
        commits=len(commits),
        racing_commits=sum(1 for c in commits if c["ahead"]),
        killed_by_probe=killed_by_probe,
        raw_disorder=raw_disorder(raw),
    )
    if result.raw_disorder or producing.failed:
        log(
            f"the test's producer: {producing.failed} sends failed, packets out of order or "
            f"missing on the raw topic for {sorted(result.raw_disorder)}"
        )
    log(
        f"killed {'by the probe after a racing commit' if killed_by_probe else 'at random'} "
        f"({delay:.1f} s): {result.commits} commits, {result.racing_commits} ahead of the "
        f"changelog; state behind the committed offsets: new disk "
        f"{len(result.new_disk.behind)} devices ({result.new_disk.lost_packets} packets), "
        f"same disk {len(result.same_disk.behind)} devices "
        f"({result.same_disk.lost_packets} packets)"
    )
    if restart is None:
        return result
    data_dir = settings.data_dir if restart == "same" else workdir / unique / "disk-2"
    again = settings.model_copy(update={"data_dir": data_dir, "metrics_port": free_port()})
    # Without the fix, the restarted worker too (its rewind would repair the damage).
    probe_log = workdir / unique / "probe-2.jsonl"
    worker = ProbeWorker(
        again,
        workdir / unique / "worker-2.log",
        probe_log,
        without_fix=without_fix,
        trace_offsets=True,
    )
    try:
        sent = {
            key.decode(): RawPacket.from_bytes(value).seq
            for records in raw.values()
            for _, key, value in records
        }  # the last seq of each device on the topic: send the rest
        send(settings, fleet, range(fleet.packets), skip=lambda d, s: s <= sent.get(d, -1))
        result.windows = check_windows(settings, fleet, timeout_s=180)
        rewound = worker.metric("harstream_preprocess_rewound_messages_total")
    finally:
        worker.stop()
    w = result.windows
    log(
        f"  restart on the {restart} disk: {w.found}/{w.expected} windows, {w.lost} lost, "
        f"{w.wrong} wrong or off-grid, {w.duplicates} duplicates, {rewound:.0f} messages "
        "rewound"
    )
    return result


def _exits_within(worker: Worker, seconds: float) -> bool:
    """Whether the worker process ends by itself (the probe's kill) within ``seconds``."""
    try:
        worker.process.wait(seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def run_rounds(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    rounds: list[Round] = []
    kept = contextlib.nullcontext(tempfile.mkdtemp(dir=args.keep)) if args.keep else None
    with (
        kept or tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker,
    ):
        for i in range(args.rounds):
            print(f"round {i + 1}/{args.rounds}: ", end="", flush=True)
            rounds.append(
                kill_round(
                    broker,
                    Path(tmp),
                    rng,
                    devices=args.devices,
                    packets=args.packets,
                    rate=args.rate,
                    max_delay_s=args.max_delay,
                    stall_ms=args.stall_ms,
                    probe_kill=not args.no_probe_kill,
                    restart=None if args.restart == "none" else args.restart,
                    without_fix=args.without_fix,
                )
            )
    print(
        f"{len(rounds)} kills ({sum(r.killed_by_probe for r in rounds)} right after a racing "
        f"commit): {sum(r.racing_commits for r in rounds)} of {sum(r.commits for r in rounds)} "
        f"commits ran ahead of the changelog; committed offsets ahead of the restored state "
        f"in {sum(1 for r in rounds if r.new_disk.behind)} rounds (new disk, "
        f"{sum(r.new_disk.lost_packets for r in rounds)} packets) and "
        f"{sum(1 for r in rounds if r.same_disk.behind)} (same disk, "
        f"{sum(r.same_disk.lost_packets for r in rounds)} packets)"
    )
    checks = [r.windows for r in rounds if r.windows is not None]
    if checks:
        print(
            f"after the restarts ({args.restart} disk): {sum(c.lost for c in checks)} windows "
            f"lost, {sum(c.wrong for c in checks)} wrong, {sum(c.duplicates for c in checks)} "
            f"duplicates, of {sum(c.expected for c in checks)}"
        )


def run_throughput(args: argparse.Namespace) -> None:
    """What waiting for the changelog acknowledgements costs: the worker works off a backlog
    of ``devices * packets`` packets, with and without item 5's fix (alternating runs); the
    windows per second from the first packet processed to the last window produced, and the
    mean batch time (``harstream_preprocess_batch_seconds``)."""
    fleet = Fleet(args.devices, args.packets, seed=1)
    windows = sum(len(fleet.expected(d)) for d in fleet.ids)
    figures: dict[str, list[tuple[float, float, float]]] = {"with the fix": [],
                                                            "without": []}  # fmt: skip
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker,
    ):
        for run in range(args.repeats * 2):
            without_fix = run % 2 == 1
            unique = uuid.uuid4().hex[:10]
            settings = PreprocessSettings(
                kafka_bootstrap_servers=broker.bootstrap_servers,
                kafka_profile=args.profile,
                topic_prefix=f"tp-{unique}",
                topic_partitions=4,
                app_id=f"pp-{unique}",
                data_dir=Path(tmp) / unique,
                metrics_host="127.0.0.1",
                metrics_port=free_port(),
            )
            create_topics(settings)
            send(settings, fleet, range(fleet.packets))
            worker = ProbeWorker(
                settings, Path(tmp) / f"{unique}.log", Path(tmp) / f"{unique}.jsonl",
                without_fix=without_fix,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 600
                while worker.metric("harstream_preprocess_packets_total") == 0:
                    assert time.monotonic() < deadline, worker.tail()
                    time.sleep(0.01)
                started = time.monotonic()
                while worker.metric("harstream_windows_emitted_total") < windows:
                    assert time.monotonic() < deadline, worker.tail()
                    time.sleep(0.01)  # polling the worker's progress
                seconds = time.monotonic() - started
                batches = worker.metric("harstream_preprocess_batch_seconds_count")
                batch_s = worker.metric("harstream_preprocess_batch_seconds_sum") / batches
            finally:
                worker.stop()
            name = "without" if without_fix else "with the fix"
            figures[name].append((windows / seconds, batch_s, fleet.packets * args.devices
                                  / batches))  # fmt: skip
            print(
                f"{name:>12}: {windows} windows in {seconds:.2f} s = {windows / seconds:,.0f} "
                f"windows/s; {batches:.0f} batches, mean {batch_s * 1000:.1f} ms",
                flush=True,
            )
    for name, runs in figures.items():
        rates = sorted(r for r, _, _ in runs)
        times = sorted(b * 1000 for _, b, _ in runs)
        print(
            f"{name:>12}: {rates[0]:,.0f}-{rates[-1]:,.0f} windows/s, mean batch "
            f"{times[0]:.1f}-{times[-1]:.1f} ms ({len(runs)} runs, {args.profile} profile)"
        )


# --- tests ---------------------------------------------------------------------------------


@pytest.fixture
def crash_settings(stream_settings: Callable[..., PreprocessSettings], unique_id: str,
                   tmp_path: Path) -> Iterator[PreprocessSettings]:  # fmt: skip
    # A checkpoint after every batch: these tests check the invariant at every commit (a
    # committed offset never ahead of the changelog, exact rewinds). With the default
    # interval, commits run ahead between checkpoints on purpose and a restart reads again
    # from the last one (tests/integration/test_preprocess_worker.py kills it mid-stream).
    yield stream_settings(
        PreprocessSettings,
        app_id=f"pp-{unique_id}",
        data_dir=tmp_path / "disk-1",
        metrics_host="127.0.0.1",
        metrics_port=free_port(),
        checkpoint_interval_s=0,
    )


@pytest.mark.parametrize("new_disk", [True, False], ids=["new-disk", "same-disk"])
def test_a_committed_offset_ahead_of_the_restored_state_is_moved_back(
    crash_settings: PreprocessSettings, tmp_path: Path, new_disk: bool
) -> None:
    """Deterministic: once the worker has processed the first 20 packets of each device, its
    offset commit goes 10 messages per raw partition past them (what a commit running ahead
    of the changelog does) and the worker dies right after it. The restarted worker must
    read those packets anyway: every window bit-equal to the offline core, no gap, the
    rewind counted."""
    settings = crash_settings
    fleet = Fleet(devices=6, packets=40, seed=8)
    send(settings, fleet, range(20))
    probe_log = tmp_path / "probe.jsonl"
    worker: Worker = ProbeWorker(settings, tmp_path / "w.log", probe_log, commit_ahead=(10, 6 * 20))
    assert worker.process.wait(60) == -signal.SIGKILL, worker.tail()
    last = probe_commits(probe_log)[-1]
    assert last["done"] and sum(last["raw"].values()) == 6 * 20 + 10 * len(last["raw"]), last
    committed = committed_offsets(settings)
    assert {str(p): o for p, o in committed.items() if o is not None} == last["raw"]
    send(settings, fleet, range(20, 40))  # the skipped offsets exist now
    data_dir = tmp_path / "disk-2" if new_disk else settings.data_dir
    worker = Worker(
        settings.model_copy(update={"data_dir": data_dir, "metrics_port": free_port()}),
        tmp_path / "w.log",
    )
    check = check_windows(settings, fleet, timeout_s=90)
    assert (check.lost, check.wrong) == (0, 0), (check, worker.tail())
    assert check.expected == 6 * len(fleet.expected(fleet.ids[0]))
    assert worker.metric("harstream_preprocess_gaps_total") == 0
    assert worker.metric("harstream_preprocess_rewound_messages_total") == 10 * len(last["raw"])
    assert "is ahead of the restored device states" in worker.tail()
    assert worker.stop() == 0


@pytest.mark.parametrize("new_disk", [True, False], ids=["new-disk", "same-disk"])
def test_a_restart_with_nothing_committed_reads_every_packet_the_state_does_not_cover(
    crash_settings: PreprocessSettings, tmp_path: Path, new_disk: bool
) -> None:
    """The worker dies at its first commit, before it: device states in the changelog,
    nothing committed. Then a backlog arrives and the worker restarts. faust (0.15) drops the
    records it prefetched while the table recovery ends and repairs that only by seeking back
    to the committed offset: with none, the backlog was skipped (4 of 8 such restarts on a new
    disk lost it). Every window must arrive, bit-equal to the offline core."""
    settings = crash_settings
    fleet = Fleet(devices=40, packets=60, seed=9)
    send(settings, fleet, range(20))
    probe_log = tmp_path / "probe.jsonl"
    worker: Worker = ProbeWorker(settings, tmp_path / "w.log", probe_log, kill_before_commit=True)
    assert worker.process.wait(60) == -signal.SIGKILL, worker.tail()
    assert set(committed_offsets(settings).values()) == {None}
    send(settings, fleet, range(20, 60))  # a backlog the restored states do not cover
    data_dir = tmp_path / "disk-2" if new_disk else settings.data_dir
    worker = Worker(
        settings.model_copy(update={"data_dir": data_dir, "metrics_port": free_port()}),
        tmp_path / "w.log",
    )
    check = check_windows(settings, fleet, timeout_s=120)
    assert (check.lost, check.wrong) == (0, 0), (check, worker.tail())
    assert worker.metric("harstream_preprocess_gaps_total") == 0
    assert worker.stop() == 0


@pytest.mark.parametrize("restart", ["same", "new"], ids=["same-disk", "new-disk"])
def test_kill_right_after_a_commit_loses_no_window(
    broker: EmbeddedBroker, tmp_path: Path, restart: str
) -> None:
    """The probe worker streams with the broker stalling (300 ms every second) and kills
    itself right after any commit that ran ahead of its changelog, or is killed at a random
    moment; the restart (same or new disk) must still produce every window. Without the
    changelog wait, about half of such rounds found a racing commit (up to 138 records)."""
    result = kill_round(
        broker,
        tmp_path,
        random.Random(restart),
        devices=100,
        packets=40,
        rate=500,
        max_delay_s=6,
        stall_ms=300,
        restart=restart,
    )
    assert result.racing_commits == 0
    assert not result.new_disk.behind and not result.same_disk.behind
    assert result.windows is not None
    assert (result.windows.lost, result.windows.wrong) == (0, 0), result.windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("probe-worker", help="run the probe worker (used by the rounds)")
    rounds = commands.add_parser("rounds", help="kill rounds, then print the counts")
    rounds.add_argument("--rounds", type=int, default=10)
    rounds.add_argument("--devices", type=int, default=24)
    rounds.add_argument("--packets", type=int, default=60, help="per device")
    rounds.add_argument("--rate", type=float, default=240.0, help="packets/s, all devices")
    rounds.add_argument("--restart", choices=["same", "new", "none"], default="same")
    rounds.add_argument("--seed", type=int, default=None)
    rounds.add_argument("--max-delay", type=float, default=None, help="latest kill (s)")
    rounds.add_argument(
        "--stall-ms", type=float, default=0, help="stall the broker this long every second"
    )
    rounds.add_argument(
        "--no-probe-kill", action="store_true", help="only random kills, none after a race"
    )
    rounds.add_argument(
        "--without-fix", action="store_true", help="the killed worker runs without item 5's fix"
    )
    rounds.add_argument("--keep", default=None, help="keep the logs and disks under this path")
    throughput = commands.add_parser("throughput", help="cost of the changelog wait")
    throughput.add_argument("--devices", type=int, default=100)
    throughput.add_argument("--packets", type=int, default=60, help="per device")
    throughput.add_argument("--repeats", type=int, default=3)
    throughput.add_argument("--profile", choices=["tansu", "apache"], default="tansu")
    args = parser.parse_args()
    if args.command == "probe-worker":
        run_probe_worker()
    elif args.command == "rounds":
        run_rounds(args)
    else:
        run_throughput(args)


if __name__ == "__main__":
    main()
