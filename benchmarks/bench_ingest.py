"""Ingest's CPU per packet under a live fleet: the embedded broker, a real ``harstream
ingest`` process and N simulated wearables at real time (one 50-sample JSON packet per
device per second, each on its own keep-alive connection from its own loopback address).

``python -m benchmarks.bench_ingest [--devices 500,1000,2000] [--seconds 20]
[--repeats 3] [--modes device-json,gateway-msgpack,...] [--gateways 25] [--compare TREE]
[--profile DIR]``

``--modes`` runs each N in several ways, alternating them per run so all see the same
machine load: ``device-json`` (every device posts its own JSON packets, the default),
``device-msgpack`` (its own MessagePack packets, samples packed float32), ``gateway-json``
and ``gateway-msgpack`` (``--gateways`` gateways forward the devices' packets as
``POST /v1/packets:batch`` every ``--gateway-interval-s``, with each device's token in the
body), ``hub-json`` and ``hub-msgpack`` (the same, each gateway authenticated by a credential
of its own bound to its devices: ``harstream gateways``).

Per run it prints offered and accepted packets/s, ingest's CPU-seconds per second (utime +
stime of the ingest process from ``/proc/<pid>/stat``, all its threads), µs of ingest CPU
per accepted packet, the broker's CPU, and the client's p50/p99 latency; then the median of
the repeats per N. Every run starts a fresh ingest (same broker, same registry), so runs
are independent; the fleet is measured after ``--warmup-s`` (connections opening, token
cache filling).

``--compare TREE`` runs the same steps against ``harstream ingest`` from another source
tree too (e.g. ``git archive <commit> | tar -x -C /tmp/base``), alternating the two per run
so both see the same machine load; the table then shows them side by side.
``--profile DIR`` also records py-spy (``--format raw``, ``--nonblocking``) of ingest at
each N once, after the measured runs, and prints its top frames
(:mod:`benchmarks.capacity_profile`).

The machine is shared: the load generator's CPU is reported apart, and ``uptime``'s load
average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import logging
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.capacity_profile import top_frames
from benchmarks.capacity_stats import process_cpu_seconds
from services.common.broker import EmbeddedBroker, free_port, terminate
from services.common.kafka.topics import create_topics
from services.demo.fleet import DeviceSpec
from services.demo.fleetgen import Fleet, FleetConfig, register_fleet, register_gateways
from services.ingest.settings import IngestSettings

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


#: The ways the fleet can reach ingest (see the module docstring).
MODES = (
    "device-json",
    "device-msgpack",
    "gateway-json",
    "gateway-msgpack",
    "hub-json",
    "hub-msgpack",
)


@dataclass(frozen=True)
class RunResult:
    tree: str
    mode: str
    devices: int
    seconds: float
    offered_per_s: float
    accepted_per_s: float
    failed: int
    non_202: int
    ingest_cpu_s_per_s: float
    ingest_us_per_packet: float
    broker_cpu_s_per_s: float
    generator_cpu_s_per_s: float
    client_p50_ms: float
    client_p99_ms: float


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def hide_modules(names: list[str], where: Path) -> Path:
    """A directory of stubs that raise ImportError for ``names``: on PYTHONPATH it makes
    the process run as if those packages were not installed (the base tree as it ran before
    a dependency was added: kafka-python falls back to its pure-Python CRC-32C without
    ``crc32c``)."""
    where.mkdir(parents=True, exist_ok=True)
    for name in names:
        (where / f"{name}.py").write_text(f"raise ImportError('{name} hidden by bench_ingest')\n")
    return where


@contextmanager
def ingest_process(
    tree: Path,
    bootstrap: str,
    prefix: str,
    registry_url: str,
    log: Path,
    hidden: Path | None = None,
    max_connections: int = 1000,
) -> Iterator[tuple[int, str]]:
    """``harstream ingest`` run from source tree ``tree`` (its own code: ``-m`` puts the
    working directory first on sys.path), with the modules in ``hidden`` (a directory of
    stubs, see :func:`hide_modules`) shadowing installed ones; yields its pid and URL once
    /readyz answers."""
    port = free_port()
    env = {
        **os.environ,
        **({"PYTHONPATH": str(hidden)} if hidden is not None else {}),
        "PYTHONUNBUFFERED": "1",
        "HARSTREAM_INGEST_HOST": "127.0.0.1",
        "HARSTREAM_INGEST_PORT": str(port),
        "HARSTREAM_INGEST_METRICS_PORT": "0",
        "HARSTREAM_INGEST_REGISTRY_URL": registry_url,
        "HARSTREAM_INGEST_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "HARSTREAM_INGEST_KAFKA_PROFILE": "tansu",
        "HARSTREAM_INGEST_TOPIC_PREFIX": prefix,
        # One keep-alive connection per device: the default cap (1,000) would answer the
        # devices beyond it 503 at once.
        "HARSTREAM_INGEST_MAX_CONNECTIONS": str(max_connections),
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "ingest"],
            cwd=tree,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _ready(f"{url}/readyz"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ingest from {tree} did not become ready; see {log}")
            time.sleep(0.2)
        yield process.pid, url
    finally:
        terminate(process, 20.0)


def fleet_config(
    url: str, mode: str, args: argparse.Namespace, gateway_tokens: tuple[str, ...] = ()
) -> FleetConfig:
    """The load generator's configuration for ``mode`` (one of :data:`MODES`);
    ``gateway_tokens``: the gateways' own tokens, for the hub-* modes."""
    how, _, body = mode.partition("-")
    return FleetConfig(
        url,
        body="msgpack" if body == "msgpack" else "json",
        gateways=args.gateways if how in ("gateway", "hub") else 0,
        gateway_interval_s=args.gateway_interval_s,
        gateway_tokens=gateway_tokens if how == "hub" else (),
    )


def measure(
    tree: Path,
    label: str,
    devices: list[DeviceSpec],
    broker: EmbeddedBroker,
    prefix: str,
    registry_url: str,
    workdir: Path,
    args: argparse.Namespace,
    profile_to: Path | None = None,
    mode: str = "device-json",
    gateway_tokens: tuple[str, ...] = (),
) -> RunResult:
    broker_pid = broker.pid
    assert broker_pid is not None
    with (
        ingest_process(
            tree,
            broker.bootstrap_servers,
            prefix,
            registry_url,
            workdir / f"ingest-{label}.log",
            workdir / "hidden" if label == "base" and args.compare_hide else None,
            max_connections=len(devices) + 100,
        ) as (pid, url),
        Fleet(fleet_config(url, mode, args, gateway_tokens), processes=args.processes) as fleet,
    ):
        fleet.add(devices)
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
        gen = fleet.pids
        base = fleet.snapshot()
        t0 = time.monotonic()
        cpu0, broker0 = process_cpu_seconds(pid), process_cpu_seconds(broker_pid)
        gen0 = sum(process_cpu_seconds(p) for p in gen)
        time.sleep(args.seconds)
        cpu1, broker1 = process_cpu_seconds(pid), process_cpu_seconds(broker_pid)
        gen1 = sum(process_cpu_seconds(p) for p in gen)
        dt = time.monotonic() - t0
        counters = fleet.snapshot().minus(base)
        if profiler is not None:
            profiler.wait(60)
    accepted = counters.accepted
    return RunResult(
        tree=label,
        mode=mode,
        devices=len(devices),
        seconds=round(dt, 1),
        offered_per_s=round(counters.offered / dt, 1),
        accepted_per_s=round(accepted / dt, 1),
        failed=sum(counters.failed.values()),
        non_202=sum(n for status, n in counters.statuses.items() if status != 202),
        ingest_cpu_s_per_s=round((cpu1 - cpu0) / dt, 3),
        ingest_us_per_packet=round((cpu1 - cpu0) / max(accepted, 1) * 1e6, 1),
        broker_cpu_s_per_s=round((broker1 - broker0) / dt, 3),
        generator_cpu_s_per_s=round((gen1 - gen0) / dt, 3),
        client_p50_ms=round((counters.latency_quantile(0.5) or 0) * 1000, 2),
        client_p99_ms=round((counters.latency_quantile(0.99) or 0) * 1000, 2),
    )


_COLUMNS = (
    ("tree", "tree", 5),
    ("mode", "mode", 16),
    ("devices", "N", 6),
    ("offered_per_s", "offered/s", 10),
    ("accepted_per_s", "accepted/s", 11),
    ("non_202", "non-202", 8),
    ("ingest_cpu_s_per_s", "ingest CPU s/s", 15),
    ("ingest_us_per_packet", "µs/packet", 10),
    ("broker_cpu_s_per_s", "broker s/s", 11),
    ("generator_cpu_s_per_s", "loadgen s/s", 12),
    ("client_p50_ms", "p50 ms", 8),
    ("client_p99_ms", "p99 ms", 8),
)


def _row(values: dict[str, Any]) -> str:
    return " ".join(f"{values[key]!s:>{width}}" for key, _, width in _COLUMNS)


def _header() -> str:
    return " ".join(f"{title:>{width}}" for _, title, width in _COLUMNS)


def medians(results: list[RunResult]) -> list[dict[str, Any]]:
    """One row per (tree, mode, N): the median of every figure over the repeats."""
    groups: dict[tuple[str, str, int], list[RunResult]] = {}
    for result in results:
        groups.setdefault((result.tree, result.mode, result.devices), []).append(result)
    rows = []
    order = {mode: i for i, mode in enumerate(MODES)}
    for (tree, mode, n), runs in sorted(
        groups.items(), key=lambda kv: (kv[0][2], order.get(kv[0][1], 99), kv[0][0])
    ):
        row: dict[str, Any] = {"tree": tree, "mode": mode, "devices": n, "runs": len(runs)}
        for key, _, _ in _COLUMNS[3:]:
            row[key] = round(statistics.median(getattr(r, key) for r in runs), 3)
        rows.append(row)
    return rows


def _uptime() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_ingest")
    parser.add_argument("--devices", default="500,1000,2000", help="comma-separated N")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured per run")
    parser.add_argument("--warmup-s", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument(
        "--modes",
        default="device-json",
        help=f"comma-separated, of {', '.join(MODES)} [device-json]",
    )
    parser.add_argument(
        "--gateways", type=int, default=25, help="gateways in gateway-* and hub-* modes"
    )
    parser.add_argument("--gateway-interval-s", type=float, default=1.0)
    parser.add_argument("--compare", type=Path, help="another source tree to run side by side")
    parser.add_argument(
        "--compare-hide",
        default="",
        help="comma-separated modules the --compare tree runs without (e.g. crc32c: a "
        "dependency added since that tree)",
    )
    parser.add_argument("--profile", type=Path, help="py-spy profiles into this directory")
    parser.add_argument("--json", type=Path, help="write every run and the medians here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sizes = [int(n) for n in args.devices.split(",")]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := [m for m in modes if m not in MODES]:
        parser.error(f"unknown mode(s) {unknown}: choose from {', '.join(MODES)}")
    trees: list[tuple[str, Path]] = [("new", REPO_ROOT)]
    if args.compare is not None:
        trees.insert(0, ("base", args.compare.resolve()))

    print(f"load average at start: {_uptime()}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    if args.compare_hide:
        hide_modules(args.compare_hide.split(","), workdir / "hidden")
    results: list[RunResult] = []
    try:
        with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
            prefix = "bench"
            create_topics(
                IngestSettings(
                    kafka_bootstrap_servers=broker.bootstrap_servers,
                    kafka_profile="tansu",
                    topic_prefix=prefix,
                )
            )
            registry_url = f"sqlite:///{workdir / 'devices.db'}"
            specs = register_fleet(registry_url, max(sizes))
            gateway_tokens = (
                register_gateways(registry_url, specs, args.gateways)
                if any(mode.startswith("hub-") for mode in modes)
                else ()
            )
            print(_header(), flush=True)
            for repeat in range(args.repeats):
                for n in sizes:
                    # Alternate which tree and mode go first, so none always follows another.
                    order = trees if repeat % 2 == 0 else trees[::-1]
                    mode_order = modes if repeat % 2 == 0 else modes[::-1]
                    for mode in mode_order:
                        for label, tree in order:
                            result = measure(
                                tree,
                                label,
                                specs[:n],
                                broker,
                                prefix,
                                registry_url,
                                workdir,
                                args,
                                mode=mode,
                                gateway_tokens=gateway_tokens,
                            )
                            results.append(result)
                            print(_row(asdict(result)), flush=True)
            rows = medians(results)
            print(f"\nmedians of {args.repeats} run(s):")
            print(_header())
            for row in rows:
                print(_row(row))
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
                for n in sizes:
                    for mode in modes:
                        for label, tree in trees:
                            out = args.profile / f"ingest-{label}-{mode}-{n}.txt"
                            measure(
                                tree,
                                label,
                                specs[:n],
                                broker,
                                prefix,
                                registry_url,
                                workdir,
                                args,
                                profile_to=out,
                                mode=mode,
                                gateway_tokens=gateway_tokens,
                            )
                            _print_profile(out, f"{label}, {mode}, {n} devices")
    finally:
        print(f"load average at end: {_uptime()}")
        if args.json is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(
            json.dumps({"runs": [asdict(r) for r in results], "medians": rows}, indent=1)
        )
    return rows


def _print_profile(path: Path, title: str, top: int = 15) -> None:
    if not path.exists():
        print(f"(no profile at {path}: py-spy did not attach)")
        return
    busy, idle, own, inclusive = top_frames(path.read_text().splitlines())
    print(f"\npy-spy, ingest, {title}: {busy} busy samples ({idle} idle dropped)")
    print("  self:")
    for frame, count in own.most_common(top):
        print(f"  {100 * count / max(busy, 1):5.1f} %  {frame}")
    print("  inclusive:")
    for frame, count in inclusive.most_common(top):
        print(f"  {100 * count / max(busy, 1):5.1f} %  {frame}")


if __name__ == "__main__":
    main()
