"""The alerting worker's CPU per packet and per prediction under a live fleet's traffic,
alone: the embedded broker, a real ``harstream alerting`` process, and a feeder process
writing what ingest and inference would write for N live devices at real time (one raw
50-sample packet per device per second, one prediction per device every 1.28 s, one
heartbeat per partition per second).

``python -m benchmarks.bench_alerting [--devices 250,500,2500] [--seconds 30]
[--repeats 3] [--compare TREE] [--profile DIR] [--json FILE]``

The full pipeline (``benchmarks.capacity``) cannot offer alerting more than preprocess and
inference produce; this one can, so alerting's own cost at 2,500 devices and beyond is
measured without the other services competing for the two cores. Every run starts a fresh
broker and a fresh alert store (Tansu keeps every record in memory).

Per run it prints alerting's CPU-seconds per second (utime + stime of the process from
``/proc/<pid>/stat``), µs of alerting CPU per prediction handled and per raw packet fed
(both are the same CPU: the figure per packet is what a live device costs), predictions
handled against those fed (alerting must keep up), the broker's and the feeder's CPU
apart, and the alerts opened; then the medians per (tree, N).

``--compare TREE`` runs ``harstream alerting`` from another source tree too (e.g.
``git archive <commit> | tar -x -C /tmp/base``), alternating the two per run so both see
the same machine load. ``--profile DIR`` records py-spy (``--format raw``,
``--nonblocking``) of alerting at each N once more, after the measured runs, and prints its
top frames (:mod:`benchmarks.capacity_profile`).

The feeder's predictions follow a day of activities per device (walking, standing, lying
still), and one device in 50 falls (an impact, then lying still) so that FALL_SUSPECTED
alerts open and the store writes transitions with their history and outbox rows.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

from benchmarks.capacity_profile import PLUMBING, top_frames
from benchmarks.capacity_stats import process_cpu_seconds
from services.common.broker import EmbeddedBroker, free_port, terminate
from shared.activities import ACTIVITIES
from shared.features import MotionFeatures
from shared.messages import Heartbeat, Prediction, RawPacket
from shared.topics import Topics

REPO_ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4
WINDOW_S = 2.56
STEP_S = 1.28
PACKET_SAMPLES = 50

_WALKING = MotionFeatures(1.8, 0.4, 0.08, 1.0, 0.2, 1.7, 2.0, 0.95, gyro_std_rad_s=0.6)
_STANDING = MotionFeatures(1.03, 0.97, 0.0002, 0.002, 0.004, 1.0, 0.05, 0.98, gyro_std_rad_s=0.005)
_LYING = MotionFeatures(1.02, 0.98, 0.0001, 0.001, 0.003, 1.0, 0.05, 0.1, gyro_std_rad_s=0.004)
_IMPACT = replace(_WALKING, peak_acc_g=3.1, movement_energy=0.3, max_abs_acc_g=3.0)
#: Windows per activity of the daily cycle: lying 20 windows (26 s) stays below every
#: lying/inactivity threshold, so only the falling devices open alerts.
_CYCLE = (("WALKING", _WALKING, 30), ("STANDING", _STANDING, 20), ("LAYING", _LYING, 20))


def _probabilities(label: str, i: int) -> tuple[float, ...]:
    # Varies per window, as a model's output does (the snapshots hold them).
    confidence = 0.8 + 0.15 * ((i * 7919) % 100) / 100
    rest = (1.0 - confidence) / (len(ACTIVITIES) - 1)
    return tuple(confidence if a == label else rest for a in ACTIVITIES)


def scripted(device: int, i: int) -> tuple[str, MotionFeatures]:
    """Activity and features of window ``i`` of device number ``device``."""
    if device % 50 == 7:
        # Falls at window 10 of every 200 (~4 min): impact, then lying still past the 30 s
        # confirmation (the alert stays open: nobody resolves it, so later falls of the
        # device are not opened again).
        phase = (i + device * 37) % 200  # devices fall at different times
        if phase == 10:
            return "WALKING", _IMPACT
        if 10 < phase <= 50:
            return "LAYING", _LYING
    phase = i % sum(n for _, _, n in _CYCLE)
    for label, features, n in _CYCLE:
        if phase < n:
            return label, features
        phase -= n
    raise AssertionError("unreachable")


def _write_counts(path: Path, sent: dict[str, int]) -> None:
    # A few bytes four times a second: not worth a thread.
    path.write_text(json.dumps(sent))


async def feed(bootstrap: str, prefix: str, devices: int, seconds: float, counts: Path) -> None:
    """Write N live devices' raw packets, predictions and heartbeats at real time for
    ``seconds``; the counts written go to ``counts`` (JSON) every 0.25 s."""
    topics = Topics(prefix)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5)
    await producer.start()
    samples = np.random.default_rng(1).normal(0, 0.1, (PACKET_SAMPLES, 6))
    start = time.time()
    # (due, kind, device): kind 0 raw packet (every 1 s), 1 prediction (every 1.28 s);
    # spread over the period as independent devices would be.
    due: list[tuple[float, int, int]] = []
    for d in range(devices):
        due.append((start + d / devices, 0, d))
        due.append((start + STEP_S * d / devices, 1, d))
    heapq.heapify(due)
    seq = [0] * devices
    window = [0] * devices
    sent = {"raw": 0, "predictions": 0, "heartbeats": 0}
    next_beat = start
    next_report = start + 0.25
    pending: list[asyncio.Future[Any]] = []
    try:
        while True:
            now = time.time()
            if now - start >= seconds:
                break
            while due and due[0][0] <= now:
                at, kind, d = heapq.heappop(due)
                device_id = f"bench-{d:05d}"
                key = device_id.encode()
                if kind == 0:
                    packet = RawPacket(
                        device_id, seq[d], at, 50.0, samples, received_at=now
                    ).to_bytes()
                    pending.append(await producer.send(topics.raw, packet, key=key))
                    seq[d] += 1
                    sent["raw"] += 1
                    heapq.heappush(due, (at + 1.0, 0, d))
                else:
                    i = window[d]
                    label, features = scripted(d, i)
                    end = start + WINDOW_S + i * STEP_S
                    prediction = Prediction(
                        window_id=f"{device_id}:{i * 64}",
                        device_id=device_id,
                        start_index=i * 64,
                        start_time=end - WINDOW_S,
                        end_time=end,
                        label=label,
                        probabilities=_probabilities(label, i + d),
                        model_name="har",
                        model_version=1,
                        features=features,
                        ingested_at=now - 0.3,
                        window_emitted_at=now - 0.2,
                        produced_at=now,
                        queue_wait_s=0.01,
                        inference_s=0.005,
                    )
                    pending.append(
                        await producer.send(topics.predictions, prediction.to_bytes(), key=key)
                    )
                    window[d] += 1
                    sent["predictions"] += 1
                    heapq.heappush(due, (at + STEP_S, 1, d))
            if now >= next_beat:
                beat = Heartbeat("ingest@bench", now).to_bytes()
                for p in range(PARTITIONS):
                    pending.append(await producer.send(topics.heartbeats, beat, partition=p))
                sent["heartbeats"] += PARTITIONS
                next_beat += 1.0
            if len(pending) > 2000:
                await asyncio.gather(*pending)
                pending.clear()
            if now >= next_report:
                _write_counts(counts, sent)
                next_report += 0.25
            await asyncio.sleep(0.01)
        await asyncio.gather(*pending)
    finally:
        _write_counts(counts, sent)
        await producer.stop()


@dataclass(frozen=True)
class RunResult:
    tree: str
    devices: int
    seconds: float
    raw_per_s: float
    predictions_fed_per_s: float
    predictions_handled_per_s: float
    alerting_cpu_s_per_s: float
    us_per_prediction: float
    us_per_packet: float
    broker_cpu_s_per_s: float
    feeder_cpu_s_per_s: float
    alerts_opened: int


def _metrics(url: str) -> dict[str, float]:
    """Sample values of alerting's /metrics, by name with labels."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def _alerts_opened(values: dict[str, float]) -> int:
    return int(
        sum(v for k, v in values.items() if k.startswith("harstream_alerts_total{") and "open" in k)
    )


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def alerting_process(
    tree: Path, bootstrap: str, prefix: str, workdir: Path, label: str
) -> Iterator[tuple[int, str]]:
    """``harstream alerting`` from source tree ``tree``; yields its pid and URL once its
    consumer holds the partitions."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "HARSTREAM_ALERTING_HOST": "127.0.0.1",
        "HARSTREAM_ALERTING_PORT": str(port),
        "HARSTREAM_ALERTING_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "HARSTREAM_ALERTING_KAFKA_PROFILE": "tansu",
        "HARSTREAM_ALERTING_TOPIC_PREFIX": prefix,
        # The worker creates the topics (its default --create-topics) before it joins.
        "HARSTREAM_ALERTING_TOPIC_PARTITIONS": str(PARTITIONS),
        "HARSTREAM_ALERTING_STORE_URL": f"sqlite:///{workdir / f'alerts-{prefix}.db'}",
        "HARSTREAM_ALERTING_AUTO_OFFSET_RESET": "earliest",
    }
    with (workdir / f"alerting-{label}.log").open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "alerting"],
            cwd=tree,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while not _ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"alerting from {tree} did not become ready; see {workdir}")
            time.sleep(0.2)
        yield process.pid, url
    finally:
        terminate(process, 30.0)


def measure(
    tree: Path,
    label: str,
    devices: int,
    workdir: Path,
    args: argparse.Namespace,
    run: int,
    profile_to: Path | None = None,
) -> RunResult:
    prefix = f"bench{run}"
    counts = workdir / f"counts-{run}.json"
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        broker_pid = broker.pid
        assert broker_pid is not None
        with alerting_process(tree, broker.bootstrap_servers, prefix, workdir, label) as (
            pid,
            url,
        ):
            total_s = args.warmup_s + args.seconds + 2
            feeder = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.bench_alerting",
                    "--feed",
                    broker.bootstrap_servers,
                    prefix,
                    str(devices),
                    str(total_s),
                    str(counts),
                ],
                cwd=REPO_ROOT,
            )
            try:
                time.sleep(args.warmup_s)
                profiler = None
                if profile_to is not None:
                    profiler = subprocess.Popen(
                        [
                            str(Path(sys.executable).with_name("py-spy")),
                            "record",
                            "--pid",
                            str(pid),
                            "--duration",
                            str(int(args.seconds)),
                            "--rate",
                            "100",
                            "--format",
                            "raw",
                            "--nonblocking",
                            "--threads",
                            "-o",
                            str(profile_to),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                m0, fed0 = _metrics(url), json.loads(counts.read_text())
                t0 = time.monotonic()
                cpu0, broker0, feeder0 = (
                    process_cpu_seconds(pid),
                    process_cpu_seconds(broker_pid),
                    process_cpu_seconds(feeder.pid),
                )
                time.sleep(args.seconds)
                cpu1, broker1, feeder1 = (
                    process_cpu_seconds(pid),
                    process_cpu_seconds(broker_pid),
                    process_cpu_seconds(feeder.pid),
                )
                dt = time.monotonic() - t0
                m1, fed1 = _metrics(url), json.loads(counts.read_text())
                if profiler is not None:
                    profiler.wait(60)
            finally:
                # It stops by itself just after the measurement (cleanly: no SIGTERM noise).
                try:
                    feeder.wait(30)
                except subprocess.TimeoutExpired:
                    terminate(feeder, 10.0)
    predictions = (
        m1["harstream_alerting_predictions_total"] - m0["harstream_alerting_predictions_total"]
    )
    # The feeder reports every 0.25 s: its rates are off by at most that over the run.
    raw = fed1["raw"] - fed0["raw"]
    cpu = cpu1 - cpu0
    return RunResult(
        tree=label,
        devices=devices,
        seconds=round(dt, 1),
        raw_per_s=round(raw / dt, 1),
        predictions_fed_per_s=round((fed1["predictions"] - fed0["predictions"]) / dt, 1),
        predictions_handled_per_s=round(predictions / dt, 1),
        alerting_cpu_s_per_s=round(cpu / dt, 3),
        us_per_prediction=round(cpu / max(predictions, 1) * 1e6, 1),
        us_per_packet=round(cpu / max(raw, 1) * 1e6, 1),
        broker_cpu_s_per_s=round((broker1 - broker0) / dt, 3),
        feeder_cpu_s_per_s=round((feeder1 - feeder0) / dt, 3),
        alerts_opened=_alerts_opened(m1),
    )


_COLUMNS = (
    ("tree", "tree", 6),
    ("devices", "N", 6),
    ("raw_per_s", "raw/s", 8),
    ("predictions_fed_per_s", "pred fed/s", 11),
    ("predictions_handled_per_s", "handled/s", 10),
    ("alerting_cpu_s_per_s", "alerting s/s", 13),
    ("us_per_prediction", "µs/pred", 9),
    ("us_per_packet", "µs/packet", 10),
    ("broker_cpu_s_per_s", "broker s/s", 11),
    ("feeder_cpu_s_per_s", "feeder s/s", 11),
    ("alerts_opened", "opened", 7),
)


def _row(values: dict[str, Any]) -> str:
    return " ".join(f"{values[key]!s:>{width}}" for key, _, width in _COLUMNS)


def _header() -> str:
    return " ".join(f"{title:>{width}}" for _, title, width in _COLUMNS)


def medians(results: list[RunResult]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int], list[RunResult]] = {}
    for result in results:
        groups.setdefault((result.tree, result.devices), []).append(result)
    rows = []
    for (tree, n), runs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        row: dict[str, Any] = {"tree": tree, "devices": n, "runs": len(runs)}
        for key, _, _ in _COLUMNS[2:]:
            row[key] = round(statistics.median(getattr(r, key) for r in runs), 3)
        rows.append(row)
    return rows


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _print_profile(path: Path, title: str, top: int = 15) -> None:
    if not path.exists():
        print(f"(no profile at {path}: py-spy did not attach)")
        return
    busy, idle, own, inclusive = top_frames(path.read_text().splitlines())
    print(f"\npy-spy, alerting, {title}: {busy} busy samples ({idle} idle dropped)")
    print("self:")
    for name, n in own.most_common(top):
        print(f"  {100 * n / max(busy, 1):5.1f}%  {name}")
    print("inclusive:")
    shown = [(name, n) for name, n in inclusive.most_common() if not PLUMBING.search(name)]
    for name, n in shown[:top]:
        print(f"  {100 * n / max(busy, 1):5.1f}%  {name}")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--feed":
        bootstrap, prefix, devices, seconds, counts = argv[1:6]
        asyncio.run(feed(bootstrap, prefix, int(devices), float(seconds), Path(counts)))
        return []
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_alerting")
    parser.add_argument("--devices", default="250,500,2500", help="comma-separated N")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured per run")
    parser.add_argument("--warmup-s", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare", type=Path, help="another source tree to run side by side")
    parser.add_argument("--profile", type=Path, help="py-spy profiles into this directory")
    parser.add_argument("--json", type=Path, help="write every run and the medians here")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.devices.split(",")]
    trees: list[tuple[str, Path]] = [("new", REPO_ROOT)]
    if args.compare is not None:
        trees.insert(0, ("base", args.compare.resolve()))
    print(f"load average at start: {_loadavg()}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-alerting-"))
    results: list[RunResult] = []
    run = 0
    try:
        print(_header(), flush=True)
        for repeat in range(args.repeats):
            for n in sizes:
                order = trees if repeat % 2 == 0 else trees[::-1]
                for label, tree in order:
                    run += 1
                    result = measure(tree, label, n, workdir, args, run)
                    results.append(result)
                    print(_row(asdict(result)), f" load {_loadavg()}", flush=True)
        rows = medians(results)
        print(f"\nmedians of {args.repeats} run(s):")
        print(_header())
        for row in rows:
            print(_row(row))
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            for n in sizes:
                for label, tree in trees:
                    run += 1
                    out = args.profile / f"alerting-{label}-{n}.txt"
                    measure(tree, label, n, workdir, args, run, profile_to=out)
                    _print_profile(out, f"{label}, {n} devices")
    finally:
        print(f"load average at end: {_loadavg()}")
        if args.json is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs in {workdir}")
    if args.json is not None:
        args.json.write_text(
            json.dumps({"runs": [asdict(r) for r in results], "medians": rows}, indent=1)
        )
    return rows


if __name__ == "__main__":
    main()
