"""Capacity: how many live devices the local pipeline holds on this machine (issue 10).

``python -m benchmarks.capacity [--steps 100,250,500,...] [--hold-s 60] [--warmup-s 20]
[--body json|msgpack] [--gateways G [--gateway-credentials]] [--gateway-interval-s 1]
[--transport http|mqtt]``

Starts the local pipeline (embedded broker, model server, every service as its own process, 2
partitions unless ``--partitions``), registers the devices in one batch, and ramps a fleet of
simulated live devices (:mod:`services.demo.fleetgen`: one keep-alive connection and one
50-sample packet per device per second, real HAPT signals, phases spread over the second, in
worker processes of their own). ``--gateways G`` has G gateways forward the devices' packets
instead (``POST /v1/packets:batch`` every ``--gateway-interval-s``, one connection and one
address per gateway; each batch carries its devices' tokens, or with
``--gateway-credentials`` each gateway authenticates with its own registered credential,
bound to its devices); ``--body msgpack`` sends MessagePack (packed float32 samples) instead
of JSON. ``--transport mqtt`` has every device publish its packets over MQTT instead (an MQTT
5 client per device, QoS 1, the next packet after the PUBACK) to a private Mosquitto with the
devices' credentials and ACLs, from which ``harstream mqtt-bridge`` writes them to the raw
topic (:class:`services.mqtt_bridge.local.LocalMqtt`); "accepted" is then Mosquitto's PUBACK,
and each step also prints what the bridge wrote to Kafka per second, its and Mosquitto's CPU,
and the backlog between them (judged like a consumer lag).
Each step adds devices, waits ``--warmup-s``, then holds
``--hold-s`` and prints: offered and accepted packets/s, client latency, end-to-end p50/p99
(from the inference histogram's bucket deltas and from the predictions' own timings read
off the predictions topic), consumer lag per group at the start and end of the hold
(growing or not), CPU-seconds per second and RSS of every process (load generator and this
harness apart), memory per device, and broker records/s in and out. A step passes when p99
≤ 1 s, nothing is rejected or given up, everything offered is accepted and no lag grows;
the ramp stops at the first failing step (``--keep-going`` to go on). At the end the fleet
stops, the pipeline drains and every device's accepted samples are checked against the
windows predicted for it (lost windows). Prints the largest passing N and devices per core
of pipeline CPU; ``--json`` and ``--plot`` write the figures and a PNG.

``--profile-at N`` runs py-spy (if installed) on every service during the hold of step N
and writes collapsed stacks to ``--profile-dir``; summarise them with
``python -m benchmarks.capacity_profile DIR``. The sampler costs CPU: profile in a run of its
own, not in the one whose figures you quote.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.capacity_stats import (
    BRIDGE,
    LAG_EDGES,
    MQTT_EDGE,
    NOT_PIPELINE,
    LagTrend,
    ProcStat,
    Snapshot,
    StepResult,
    devices_per_core,
    judge,
    lags,
    largest_passing,
    mqtt_backlog,
    parse_metrics,
    parse_proc_stat,
    step_result,
    tracking_rss,
    usage_of,
)
from services.demo.fleet import DeviceSpec
from services.demo.fleetgen import Fleet, FleetConfig, register_fleet, register_gateways
from services.demo.pipeline import LOCAL_PARTITIONS, Pipeline, PipelineConfig
from services.mqtt_bridge.local import LocalMqtt

logger = logging.getLogger(__name__)

DEFAULT_STEPS = (100, 250, 500, 1000, 1500, 2500, 3500, 5000)
SERVICES = ("broker", "modelserver", "ingest", "preprocess", "inference", "alerting")
#: ``--transport mqtt``: the door in front of the pipeline (process group names).
MQTT_SERVICES = (BRIDGE, "mosquitto")
WINDOW_SIZE, WINDOW_STEP = 128, 64


# -- reading the world ------------------------------------------------------------------------


def read_proc() -> dict[int, ProcStat]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stats[int(entry)] = parse_proc_stat(f.read())
            except (OSError, ValueError):
                continue  # gone meanwhile
    return stats


def scrape(urls: dict[str, str]) -> dict[str, Any]:
    out = {}
    for name, url in urls.items():
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                out[name] = parse_metrics(response.read().decode())
        except OSError as exc:
            logger.warning("metrics of %s (%s): %s", name, url, exc)
            out[name] = {}
    return out


class PredictionWatch(threading.Thread):
    """Reads the predictions topic (no consumer group) and keeps each prediction's own
    end-to-end timing and which windows each device got."""

    def __init__(self, pipeline: Pipeline) -> None:
        super().__init__(name="prediction-watch", daemon=True)
        from kafka import KafkaConsumer, TopicPartition  # type: ignore[import-untyped]

        from services.common.kafka.clients import kafka_python_kwargs

        assert pipeline.settings is not None
        topic = pipeline.settings.topics.predictions
        self._consumer = KafkaConsumer(
            **kafka_python_kwargs(pipeline.settings, enable_auto_commit=False, group_id=None)
        )
        partitions = [
            TopicPartition(topic, p)
            for p in sorted(self._consumer.partitions_for_topic(topic) or [])
        ]
        self._consumer.assign(partitions)
        self._consumer.seek_to_beginning(*partitions)
        self._lock = threading.Lock()
        self._done = threading.Event()
        #: (produced_at, end-to-end seconds) in arrival order.
        self.timings: list[tuple[float, float]] = []
        self.windows: dict[str, set[int]] = defaultdict(set)
        self.received = 0
        self.undecodable = 0

    def run(self) -> None:
        from shared.errors import SchemaError
        from shared.messages import Prediction

        try:
            while not self._done.is_set():
                for records in self._consumer.poll(timeout_ms=200).values():
                    for record in records:
                        try:
                            p = Prediction.from_bytes(record.value)
                        except SchemaError:
                            self.undecodable += 1
                            continue
                        with self._lock:
                            self.received += 1
                            self.timings.append((p.produced_at, p.end_to_end_s))
                            self.windows[p.device_id].add(p.start_index)
        finally:
            self._consumer.close()

    def latencies_between(self, t0: float, t1: float) -> list[float]:
        with self._lock:
            return [e2e for produced, e2e in self.timings if t0 <= produced < t1]

    def stop(self) -> None:
        self._done.set()
        self.join(10)


class EndOffsets:
    """Sum of end offsets per topic. On the local broker these undercount when a batch held
    several records (shared/notes/tansu.md): read them as a lower bound."""

    def __init__(self, pipeline: Pipeline) -> None:
        from kafka import KafkaConsumer, TopicPartition

        from services.common.kafka.clients import kafka_python_kwargs

        assert pipeline.settings is not None
        topics = pipeline.settings.topics
        self._consumer = KafkaConsumer(**kafka_python_kwargs(pipeline.settings, group_id=None))
        self._partitions = {
            topic: [
                TopicPartition(topic, p)
                for p in sorted(self._consumer.partitions_for_topic(topic) or [])
            ]
            for topic in (topics.raw, topics.windows, topics.predictions, topics.alerts)
        }

    def read(self) -> dict[str, int]:
        return {
            topic: sum(self._consumer.end_offsets(tps).values()) if tps else 0
            for topic, tps in self._partitions.items()
        }

    def close(self) -> None:
        self._consumer.close()


@dataclass
class Harness:
    pipeline: Pipeline
    fleet: Fleet
    offsets: EndOffsets
    #: ``--transport mqtt``: Mosquitto and the bridge (None over HTTP).
    mqtt: LocalMqtt | None = None
    ticks_per_s: float = float(os.sysconf("SC_CLK_TCK"))
    page_size: int = os.sysconf("SC_PAGE_SIZE")

    def groups(self) -> dict[str, list[int]]:
        pids = self.pipeline.pids()
        groups = {name: [pid] for name, pid in pids.items()}
        if self.mqtt is not None:
            groups |= {name: [self.mqtt.services[name].pid] for name in MQTT_SERVICES}
        groups["loadgen"] = self.fleet.pids
        groups["harness"] = [os.getpid()]
        return groups

    def metrics_urls(self) -> dict[str, str]:
        urls = self.pipeline.metrics_urls()
        if self.mqtt is not None:
            urls[BRIDGE] = f"{self.mqtt.health_url}/metrics"
        return urls

    def lags(self, metrics: dict[str, Any], published: int) -> dict[str, float]:
        """Every group's lag; over MQTT also Mosquitto's backlog (``published``: the fleet's
        PUBACKed packets, read just before ``metrics``)."""
        out = lags(metrics)
        if self.mqtt is not None:
            out[MQTT_EDGE] = mqtt_backlog(metrics, published)
        return out

    def snapshot(self) -> Snapshot:
        fleet = self.fleet.snapshot()
        t = time.time()
        metrics = scrape(self.metrics_urls())
        # Services with their helper processes; the harness without its children (the
        # services are its children), the load generator's workers one by one.
        usage = usage_of(
            self.groups(),
            read_proc(),
            self.ticks_per_s,
            self.page_size,
            with_children=[n for n in self.groups() if n not in NOT_PIPELINE],
        )
        return Snapshot(t, fleet, metrics, usage, self.offsets.read())


# -- the ramp -----------------------------------------------------------------------------------


def run_step(
    harness: Harness,
    watch: PredictionWatch,
    devices: int,
    hold_s: float,
    lag_every_s: float,
    previous: tuple[int, int] | None,
) -> StepResult:
    before = harness.snapshot()
    points: dict[str, list[tuple[float, float]]] = {g: [] for g in LAG_EDGES}
    for group, lag in harness.lags(before.metrics, before.fleet.accepted).items():
        points.setdefault(group, []).append((before.t, lag))
    end = before.t + hold_s
    while (remaining := end - time.time()) > 0:
        time.sleep(min(lag_every_s, remaining))
        if time.time() < end - 1.0:
            t = time.time()
            published = harness.fleet.snapshot().accepted if harness.mqtt else 0
            for group, lag in harness.lags(scrape(harness.metrics_urls()), published).items():
                points[group].append((t, lag))
    after = harness.snapshot()
    for group, lag in harness.lags(after.metrics, after.fleet.accepted).items():
        points[group].append((after.t, lag))
    return step_result(
        devices,
        before,
        after,
        points,
        watch.latencies_between(before.t, after.t),
        previous,
    )


def start_profilers(harness: Harness, seconds: float, out: Path) -> list[subprocess.Popen[bytes]]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        logger.warning("py-spy is not installed (pip install py-spy): no profile")
        return []
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    targets = {
        name: pids[0]
        for name, pids in harness.groups().items()
        if name not in ("broker", "harness") and pids
    }
    for name, pid in targets.items():
        # --nonblocking: the process is never paused (the figures stay those of a running
        # service); --subprocesses: the model server's and faust's helpers too.
        command = [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "50",
            "--nonblocking",
            "--subprocesses",
            "--format",
            "raw",
            "--output",
            str(out / f"{name}.txt"),
        ]
        log = (out / f"{name}.log").open("wb")
        procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
    return procs


def windows_made(samples: int) -> int:
    """Windows ``samples`` consecutive samples of a device make."""
    return 0 if samples < WINDOW_SIZE else (samples - WINDOW_SIZE) // WINDOW_STEP + 1


def loss_after_drain(
    fleet_accepted: dict[str, tuple[int, int]], watch: PredictionWatch
) -> dict[str, int]:
    """Windows the accepted samples make vs windows predicted, over devices that gave up
    no packet (a gap changes how many windows a device makes)."""
    expected = predicted = lost = devices = 0
    for device_id, (samples, gave_up) in fleet_accepted.items():
        if gave_up:
            continue
        devices += 1
        want = windows_made(samples)
        got = len(watch.windows.get(device_id, ()))
        expected += want
        predicted += got
        lost += max(0, want - got)
    return {"devices": devices, "expected": expected, "predicted": predicted, "lost": lost}


def wait_drained(watch: PredictionWatch, wanted: dict[str, int], timeout_s: float) -> bool:
    """Until every device of ``wanted`` has its number of windows predicted (True), or none
    came for 10 s or ``timeout_s`` passed (False: a backlog was left, so missing windows are
    not proven lost). Counted per device, each up to what it wants: a device with more
    (its last packets were accepted after the fleet stopped reading answers) must not make
    up for another one still waiting."""
    deadline = time.monotonic() + timeout_s
    expected = sum(wanted.values())
    last, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = sum(min(len(watch.windows.get(d, ())), n) for d, n in wanted.items())
        if count >= expected:
            return True
        if count != last:
            last, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > 10.0:
            return False
        time.sleep(0.5)
    return False


# -- printing -----------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


#: The services' end-to-end histogram ends at 30 s (then +Inf): a quantile there reads "≥".
_HIST_TOP_S = 30.0


def _hist_ms(seconds: float | None) -> str:
    if seconds is not None and seconds >= _HIST_TOP_S:
        return f"≥{_HIST_TOP_S * 1000:.0f}"
    return _ms(seconds)


def format_step(step: StepResult, why: list[str]) -> str:
    lag = ", ".join(
        f"{g.split()[0]} {t.start:.0f}→{t.end:.0f}{' GROWING' if t.growing else ''}"
        for g, t in step.lag.items()
    )
    cpu = ", ".join(f"{k} {v:.2f}" for k, v in step.cpu.items())
    rss = ", ".join(f"{k} {v:.0f}" for k, v in step.rss_mib.items())
    within = "-" if step.e2e_within_1s is None else f"{step.e2e_within_1s:.1%}"
    return "\n".join(
        [
            f"N={step.devices}: {'PASS' if not why else 'FAIL (' + '; '.join(why) + ')'}",
            f"  packets/s offered {step.offered_per_s:.0f}, accepted {step.accepted_per_s:.0f}; "
            f"failed {step.failed}, retries {step.retries}, timeouts {step.timeouts}, "
            f"late {step.late}, behind at start {step.behind_at_start}; "
            f"client p50/p99 {_ms(step.client_p50_s)}/{_ms(step.client_p99_s)} ms; "
            f"answers {step.statuses}"
            + (
                f"; ingest rejections {step.rejections_by_reason}" if step.ingest_rejections else ""
            ),
            f"  end-to-end p50/p99 ms: histogram "
            f"{_hist_ms(step.e2e_p50_s)}/{_hist_ms(step.e2e_p99_s)} "
            f"(≤1 s: {within}), predictions {_ms(step.pred_p50_s)}/{_ms(step.pred_p99_s)} "
            f"({step.predictions} predictions, {step.windows_per_s:.0f} windows/s, "
            f"windows/expected {step.windows_ratio or 0:.3f})",
            f"  lag (records, start→end of hold): {lag}",
            f"  CPU s/s: {cpu}; pipeline {step.pipeline_cpu:.2f}",
            f"  RSS MiB: {rss}; marginal pipeline memory per device "
            f"{'-' if step.kib_per_device is None else f'{step.kib_per_device:.1f} KiB'}",
            f"  broker records/s in {step.broker_in_per_s:.0f} (end offsets), "
            f"out {step.broker_out_per_s:.0f} (consumed)",
            *(
                [
                    f"  MQTT: bridged {step.bridged_per_s:.0f}/s onto the raw topic "
                    f"(Kafka-acknowledged), dead-lettered {step.bridge_rejections:.0f}, "
                    f"redelivered {step.bridge_redeliveries:.0f}; CPU s/s mqtt-bridge "
                    f"{step.cpu.get(BRIDGE, 0.0):.2f}, "
                    f"mosquitto {step.cpu.get('mosquitto', 0.0):.2f}"
                ]
                if step.bridged_per_s is not None
                else []
            ),
        ]
    )


def markdown_table(steps: list[tuple[StepResult, list[str]]]) -> str:
    """One row per step; over MQTT with three more columns: what the bridge wrote to Kafka
    per second, the bridge's and Mosquitto's CPU-seconds per second."""
    mqtt = any(s.bridged_per_s is not None for s, _ in steps)
    rows = [
        "| devices | offered/s | accepted/s | e2e p50 / p99 (hist.) ms | ≤ 1 s | e2e p50 / p99 "
        "(pred.) ms | client p99 ms | lag growing | pipeline CPU s/s | ingest | broker | "
        "preprocess | inference | modelserver | alerting | loadgen | KiB/device | verdict |"
        + (" bridged/s | mqtt-bridge | mosquitto |" if mqtt else ""),
        "|---:|---:|---:|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        + ("---:|---:|---:|" if mqtt else ""),
    ]
    for s, why in steps:
        growing = ", ".join(g.split()[0] for g, t in s.lag.items() if t.growing) or "no"
        within = "-" if s.e2e_within_1s is None else f"{s.e2e_within_1s:.1%}"
        cpu = [f"{s.cpu.get(k, 0.0):.2f}" for k in ("ingest", "broker", "preprocess")]
        cpu += [f"{s.cpu.get(k, 0.0):.2f}" for k in ("inference", "modelserver", "alerting")]
        kib = "-" if s.kib_per_device is None else f"{s.kib_per_device:.0f}"
        verdict = "pass" if not why else "fail: " + "; ".join(why)
        rows.append(
            f"| {s.devices} | {s.offered_per_s:.0f} | {s.accepted_per_s:.0f} | "
            f"{_hist_ms(s.e2e_p50_s)} / {_hist_ms(s.e2e_p99_s)} | {within} | "
            f"{_ms(s.pred_p50_s)} / {_ms(s.pred_p99_s)} | {_ms(s.client_p99_s)} | {growing} | "
            f"{s.pipeline_cpu:.2f} | {' | '.join(cpu)} | {s.cpu.get('loadgen', 0.0):.2f} | "
            f"{kib} | {verdict} |"
            + (
                f" {s.bridged_per_s or 0.0:.0f} | {s.cpu.get(BRIDGE, 0.0):.2f} | "
                f"{s.cpu.get('mosquitto', 0.0):.2f} |"
                if mqtt
                else ""
            )
        )
    return "\n".join(rows)


def plot(steps: list[tuple[StepResult, list[str]]], path: Path, partitions: int | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [s.devices for s, _ in steps]
    # Steps are not evenly spaced: both panels put them at even positions, labelled with N.
    xs = list(range(len(ns)))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 8), sharex=True)
    for attr, label, style in (
        ("pred_p50_s", "p50 (predictions)", "o-"),
        ("pred_p99_s", "p99 (predictions)", "s-"),
        ("e2e_p99_s", "p99 (histogram, interpolated)", "x--"),
    ):
        values = [getattr(s, attr) for s, _ in steps]
        top.plot(xs, [float("nan") if v is None else v for v in values], style, label=label)
    top.axhline(1.0, color="red", linewidth=0.8, linestyle=":", label="target p99 1 s")
    top.set_yscale("log")
    top.set_ylabel("end-to-end latency (s)")
    top.legend(fontsize=8)
    top.grid(True, which="both", alpha=0.3)
    names = [n for n in (*SERVICES, *MQTT_SERVICES, "loadgen") if any(n in s.cpu for s, _ in steps)]
    bottoms = [0.0] * len(ns)
    for name in names:
        values = [s.cpu.get(name, 0.0) for s, _ in steps]
        bottom.bar(
            xs,
            values,
            bottom=bottoms,
            label=name,
            hatch="//" if name == "loadgen" else None,
        )
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    bottom.axhline(os.cpu_count() or 2, color="red", linewidth=0.8, linestyle=":", label="cores")
    bottom.set_ylabel("CPU-seconds per second")
    bottom.set_xlabel("live devices (one 50-sample packet per second each)")
    bottom.legend(fontsize=8, ncol=4)
    bottom.set_xticks(xs, [str(n) for n in ns])
    on = "" if partitions is None else f", {partitions} partitions"
    fig.suptitle(f"harstream capacity on this machine (local pipeline{on})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.capacity", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--steps",
        default=",".join(map(str, DEFAULT_STEPS)),
        help="comma-separated device counts [%(default)s]",
    )
    parser.add_argument("--hold-s", type=float, default=60.0, help="steady hold per step [60]")
    parser.add_argument(
        "--target-hold-s",
        type=float,
        default=None,
        help="hold of steps ≥ --target-devices (issue 10: ≥ 180 s at the target)",
    )
    parser.add_argument("--target-devices", type=int, default=2500)
    parser.add_argument("--warmup-s", type=float, default=20.0, help="after adding devices [20]")
    parser.add_argument("--lag-every-s", type=float, default=5.0)
    parser.add_argument(
        "--processes",
        type=int,
        default=0,
        help="load generator processes [0: one per 2,500 devices of the last step, at least 1]",
    )
    parser.add_argument("--partitions", type=int, default=LOCAL_PARTITIONS)
    parser.add_argument(
        "--body", choices=("json", "msgpack"), default="json", help="request body format [json]"
    )
    parser.add_argument(
        "--gateways",
        type=int,
        default=0,
        help="G gateways forward the devices' packets in batches [0: every device posts]",
    )
    parser.add_argument(
        "--gateway-interval-s", type=float, default=1.0, help="a gateway's batch period [1]"
    )
    parser.add_argument(
        "--gateway-credentials",
        action="store_true",
        help="each gateway authenticates with a credential of its own bound to its devices "
        "(harstream gateways), not with its devices' tokens",
    )
    parser.add_argument(
        "--transport",
        choices=("http", "mqtt"),
        default="http",
        help="devices post to ingest, or publish to a private Mosquitto in front of "
        "harstream mqtt-bridge [http]",
    )
    parser.add_argument("--keep-going", action="store_true", help="go on after a failing step")
    parser.add_argument("--drain-s", type=float, default=120.0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write all figures here")
    parser.add_argument("--plot", type=Path, default=None, help="write the PNG here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here")
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="no run: judge, print and plot the steps of an earlier --json file again",
    )
    parser.add_argument("--profile-at", type=int, default=None, help="py-spy during step N")
    parser.add_argument("--profile-s", type=float, default=30.0)
    parser.add_argument("--profile-dir", type=Path, default=Path("profiles"))
    return parser.parse_args(argv)


def load_steps(summary: Mapping[str, Any]) -> list[tuple[StepResult, list[str]]]:
    """The steps of a ``--json`` file's summary, judged again (by this version's rules)."""
    steps = []
    for data in summary["steps"]:
        fields = {k: v for k, v in data.items() if k not in ("why", "pipeline_cpu")}
        fields["lag"] = {
            group: LagTrend(t["start"], t["end"], t["growth"], t["rate_per_s"])
            for group, t in data["lag"].items()
        }
        fields["statuses"] = {int(k): v for k, v in data.get("statuses", {}).items()}
        step = StepResult(**fields)
        steps.append((step, judge(step)))
    return steps


def replay(args: argparse.Namespace) -> None:
    summary = json.loads(args.from_json.read_text())
    results = load_steps(summary)
    for step, why in results:
        print(format_step(step, why))
    best = largest_passing(results)
    if best is None:
        print("no step met the targets")
    else:
        dpc = devices_per_core(best)
        print(
            f"largest N meeting the targets: {best.devices} devices (pipeline CPU "
            f"{best.pipeline_cpu:.2f} s/s: {'-' if dpc is None else f'{dpc:.0f}'} devices per core)"
        )
    if args.markdown:
        args.markdown.write_text(markdown_table(results) + "\n")
    if args.plot and results:
        # None for runs saved before the partitions were recorded (most used 4, some 2).
        plot(results, args.plot, summary.get("partitions"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    steps = sorted({int(s) for s in args.steps.split(",") if s.strip()})
    if not steps or steps[0] < 1:
        raise SystemExit("--steps: give positive device counts")
    if args.transport == "mqtt" and args.gateways:
        raise SystemExit("--gateways post batches over HTTP: not with --transport mqtt")
    if args.gateway_credentials and not args.gateways:
        raise SystemExit("--gateway-credentials: give --gateways G too")
    processes = args.processes or max(1, -(-steps[-1] // 2500))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="harstream-capacity-"))
    # One keep-alive connection per device: lift ingest's connection cap (1,000 by default,
    # sized for a replica behind a load balancer) above the fleet.
    config = PipelineConfig(
        workdir=workdir,
        partitions=args.partitions,
        service_env={"ingest": {"HARSTREAM_INGEST_MAX_CONNECTIONS": str(steps[-1] + 500)}},
    )
    results: list[tuple[StepResult, list[str]]] = []
    started = time.time()
    load_before = os.getloadavg()
    fleet_config = FleetConfig(
        "",  # the pipeline's URL, once it runs
        body=args.body,
        gateways=args.gateways,
        gateway_interval_s=args.gateway_interval_s,
    )
    mode = (
        f"{args.gateways} gateways (a batch each every {args.gateway_interval_s:g} s, "
        + ("gateway credentials)" if args.gateway_credentials else "device tokens)")
        if args.gateways
        else "every device publishes its own packets over MQTT (QoS 1)"
        if args.transport == "mqtt"
        else "every device posts its own packets"
    )
    print(
        f"capacity: steps {steps}, hold {args.hold_s:g} s, warm-up {args.warmup_s:g} s, "
        f"{processes} load generator process(es), {mode}, {args.body} bodies; logs in "
        f"{workdir / 'logs'}",
        flush=True,
    )
    with Pipeline(config) as pipeline, contextlib.ExitStack() as door:
        t0 = time.monotonic()
        specs: list[DeviceSpec] = register_fleet(pipeline.registry_url, steps[-1])
        print(f"registered {len(specs)} devices in {time.monotonic() - t0:.2f} s", flush=True)
        if args.gateway_credentials:
            fleet_config = dataclasses.replace(
                fleet_config,
                gateway_tokens=register_gateways(pipeline.registry_url, specs, args.gateways),
            )
        mqtt = None
        url = pipeline.ingest_url
        if args.transport == "mqtt":
            assert pipeline.settings is not None
            tokens = {s.device_id: s.token for s in specs}
            # Stopped (bridge first) before the pipeline: the ExitStack closes first.
            mqtt = door.enter_context(LocalMqtt(workdir, pipeline.settings, tokens))
            url = f"mqtt://{mqtt.host}:{mqtt.port}"
            print(f"Mosquitto on {mqtt.host}:{mqtt.port}, bridge ready", flush=True)
        watch = PredictionWatch(pipeline)
        watch.start()
        with Fleet(dataclasses.replace(fleet_config, url=url), processes=processes) as fleet:
            harness = Harness(pipeline, fleet, EndOffsets(pipeline), mqtt)
            idle = harness.snapshot()
            previous = (0, tracking_rss(idle.usage))
            running = 0
            for n in steps:
                fleet.add(specs[running:n])
                running = n
                time.sleep(args.warmup_s)
                hold = args.hold_s
                if args.target_hold_s is not None and n >= args.target_devices:
                    hold = args.target_hold_s
                profilers = []
                if args.profile_at == n:
                    profilers = start_profilers(
                        harness, min(args.profile_s, hold), args.profile_dir
                    )
                step = run_step(harness, watch, n, hold, args.lag_every_s, previous)
                previous = (n, step.pipeline_rss_bytes)
                for p in profilers:
                    p.wait(60)
                why = judge(step)
                results.append((step, why))
                print(format_step(step, why), flush=True)
                if why and not args.keep_going:
                    break
            accepted = fleet.accepted()
            final = fleet.stop()
            harness.offsets.close()
        wanted = {d: windows_made(s) for d, (s, gave_up) in accepted.items() if not gave_up}
        drained = wait_drained(watch, wanted, args.drain_s)
        loss = loss_after_drain(accepted, watch) | {"drained": drained}
        watch.stop()
    best = largest_passing(results)
    summary = {
        "steps": [s.to_dict() | {"why": why} for s, why in results],
        "largest_passing": best.devices if best else None,
        "devices_per_core": devices_per_core(best) if best else None,
        "loss_after_drain": loss,
        "fleet_final": final.to_dict() if final else None,
        "undecodable_predictions": watch.undecodable,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "wall_s": time.time() - started,
        "processes": processes,
        "cores": os.cpu_count(),
        "mode": mode,
        "body": args.body,
        "gateways": args.gateways,
        "gateway_interval_s": args.gateway_interval_s,
        "gateway_credentials": args.gateway_credentials,
        "transport": args.transport,
        "partitions": args.partitions,
    }
    if drained:
        print(
            f"after drain: {loss['predicted']} of {loss['expected']} windows predicted for "
            f"{loss['devices']} devices ({loss['lost']} lost)"
        )
    else:
        print(
            f"drain incomplete after {args.drain_s:g} s (a backlog was left): "
            f"{loss['predicted']} of {loss['expected']} windows predicted so far for "
            f"{loss['devices']} devices; missing ones are not proven lost"
        )
    if best is not None:
        dpc = devices_per_core(best)
        print(
            f"largest N meeting the targets: {best.devices} devices "
            f"(pipeline CPU {best.pipeline_cpu:.2f} s/s: "
            f"{'-' if dpc is None else f'{dpc:.0f}'} devices per core)"
        )
    else:
        print("no step met the targets")
    print(f"load average before {load_before}, after {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    if args.markdown:
        args.markdown.write_text(markdown_table(results) + "\n")
    if args.plot and results:
        plot(results, args.plot, args.partitions)
    return summary


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("kafka").setLevel(logging.ERROR)  # "group_id is None" per consumer
    args = parse_args(argv)
    if args.from_json is not None:
        replay(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
