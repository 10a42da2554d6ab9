"""Sizing on paper: workers, partitions, TF Serving replicas and Kafka brokers for a fleet of N
devices, from the per-packet costs the capacity benchmark measured (issue 10, item 5).

``python -m benchmarks.sizing [--devices 100000,1000000] [--capacity reports/capacity.json]``

Each stage's CPU per packet is taken from a capacity run's ``--json`` (the largest step the
pipeline kept up with: CPU-seconds per second of each service over packets accepted per
second) and the record sizes from the real encoders, so the plan moves when the code does.
The stated
assumptions (utilisation, cores per pod, what one Kafka broker writes) are options.
:func:`plan` is pure; the k8s overlays ``fleet-100k`` and ``fleet-1m`` hold its output for the
committed figures (a test keeps them equal).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Stages that are consumer groups: their workers cannot outnumber the partitions.
PARTITIONED = ("preprocess", "inference", "alerting")
STAGES = ("ingest", *PARTITIONED, "modelserver")
#: Windows per 50-sample packet: a window every 64 samples.
WINDOWS_PER_PACKET = 50 / 64
DEFAULT_CAPACITY = Path(__file__).resolve().parents[1] / "reports" / "capacity.json"


@dataclass(frozen=True)
class Sizes:
    """Bytes per record on the topics (values; keys and batch overhead are small)."""

    raw: int
    window: int
    prediction: int
    #: One preprocess device-state changelog record (written at most once per packet).
    state: int


@dataclass(frozen=True)
class Assumptions:
    #: Share of a core a worker is planned to use: headroom for bursts, rebalances, catch-up.
    utilisation: float = 0.6
    #: Cores per pod (requests). TF Serving replicas are larger: batching wants cores.
    cores_per_pod: Mapping[str, float] = field(
        default_factory=lambda: {
            "ingest": 1.0,
            "preprocess": 1.0,
            "inference": 1.0,
            "alerting": 1.0,
            "modelserver": 4.0,
        }
    )
    replication: int = 3
    #: Bytes per second one Kafka broker is planned to write, replicas' copies included
    #: (a conservative share of a 10 Gb/s NIC and an NVMe volume).
    broker_write_mb_s: float = 150.0
    min_brokers: int = 3
    #: Partitions per consumer group's planned workers: room to scale out without
    #: repartitioning (raising partitions moves devices between workers).
    partition_headroom: float = 2.0
    min_partitions: int = 8
    #: Consumer groups reading each topic: raw (preprocess, alerting's liveness), windows
    #: (inference), predictions (alerting, and a history or shadow reader).
    readers: Mapping[str, int] = field(
        default_factory=lambda: {"raw": 2, "windows": 1, "predictions": 2, "state": 0}
    )


@dataclass(frozen=True)
class Plan:
    devices: int
    cores: dict[str, float]
    pods: dict[str, int]
    partitions: int
    write_mb_s: float
    read_mb_s: float
    brokers: int

    @property
    def total_cores(self) -> float:
        return sum(self.cores.values())


def _next_power_of_two(n: float) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1.0, n))))


def plan(devices: int, cpu_per_packet: Mapping[str, float], sizes: Sizes, a: Assumptions) -> Plan:
    """Cores, pods, partitions and brokers for ``devices`` live devices at one packet/s."""
    cores = {s: devices * cpu_per_packet[s] / a.utilisation for s in STAGES}
    pods = {s: max(2, math.ceil(cores[s] / a.cores_per_pod[s])) for s in STAGES}
    partitions = max(
        a.min_partitions,
        _next_power_of_two(max(pods[s] for s in PARTITIONED) * a.partition_headroom),
    )
    per_packet = {
        "raw": sizes.raw,
        "windows": WINDOWS_PER_PACKET * sizes.window,
        "predictions": WINDOWS_PER_PACKET * sizes.prediction,
        "state": sizes.state,
    }
    ingress = devices * sum(per_packet.values()) / 1e6
    read = devices * sum(per_packet[t] * a.readers.get(t, 1) for t in per_packet) / 1e6
    write = ingress * a.replication
    brokers = max(a.min_brokers, math.ceil(write / a.broker_write_mb_s))
    return Plan(devices, cores, pods, partitions, write, read, brokers)


def cpu_per_packet_from(capacity: Path) -> tuple[int, dict[str, float]]:
    """(devices, CPU-seconds per packet by stage) of a ``benchmarks.capacity --json`` file:
    the largest step the pipeline kept up with (everything offered accepted, no group's lag
    growing), whether or not its latency met the target: sizing is about CPU, and latency on
    a 2-core machine shared by every process is not what a sized cluster would see."""
    data = json.loads(capacity.read_text())
    kept_up = [
        s
        for s in data["steps"]
        if s["accepted_per_s"] >= 0.99 * s["offered_per_s"]
        and not any(t["growing"] for t in s["lag"].values())
    ]
    if not kept_up:
        raise ValueError(f"{capacity}: the pipeline kept up with no step")
    step = max(kept_up, key=lambda s: s["devices"])
    rate = step["accepted_per_s"]
    return step["devices"], {s: step["cpu"][s] / rate for s in STAGES}


def measured_sizes() -> Sizes:
    """Record sizes from the real encoders: a 50-sample packet, a window and a prediction
    that the preprocessing core and message classes make of a recorded signal, and the
    device state after it."""
    import numpy as np

    from services.preprocess.stream import StreamConfig, StreamProcessor
    from shared.activities import ACTIVITIES
    from shared.dsp import PreprocessingConfig
    from shared.messages.predictions import Prediction
    from shared.messages.raw import RawPacket

    rng = np.random.default_rng(0)
    config = StreamConfig(preprocessing=PreprocessingConfig())
    processor = StreamProcessor(config)
    packets = [
        RawPacket(
            device_id="device-000123",
            seq=i,
            first_sample_time=1.7e9 + i,
            sample_rate_hz=50.0,
            samples=rng.normal(0, 0.3, (50, 6)) + np.array([0, 0, 1, 0, 0, 0]),
            received_at=1.7e9 + i + 1,
        )
        for i in range(8)
    ]
    result = processor.process_batch({}, packets, 1.7e9 + 9)
    window = result.windows[-1]
    stream = result.streams["device-000123"]
    probabilities = tuple(
        0.9 if i == 0 else 0.1 / (len(ACTIVITIES) - 1) for i in range(len(ACTIVITIES))
    )
    prediction = Prediction(
        window_id=window.window_id,
        device_id=window.device_id,
        start_index=window.start_index,
        start_time=window.start_time,
        end_time=window.end_time,
        label=ACTIVITIES[0],
        probabilities=probabilities,
        model_name="har",
        model_version=1,
        features=window.features,
        ingested_at=window.ingested_at,
        window_emitted_at=window.emitted_at,
        produced_at=window.emitted_at + 0.05,
        queue_wait_s=0.01,
        inference_s=0.02,
    )
    return Sizes(
        raw=len(packets[0].to_bytes()),
        window=len(window.to_bytes()),
        prediction=len(prediction.to_bytes()),
        state=len(stream.to_bytes(config.preprocessing)),
    )


def markdown(plans: Sequence[Plan], measured_at: int, sizes: Sizes) -> str:
    lines = [
        f"Per-packet CPU from the capacity step at {measured_at:,} devices; record sizes raw "
        f"{sizes.raw:,} B, window {sizes.window:,} B, prediction {sizes.prediction:,} B, "
        f"device state {sizes.state:,} B.",
        "",
        "| devices | ingest | preprocess | inference | alerting | TF Serving | partitions "
        "| Kafka writes MB/s (×RF) | reads MB/s | brokers | cores in all |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in plans:
        pods = " | ".join(f"{p.pods[s]} ({p.cores[s]:,.0f} cores)" for s in STAGES)
        lines.append(
            f"| {p.devices:,} | {pods} | {p.partitions} | {p.write_mb_s:,.0f} | "
            f"{p.read_mb_s:,.0f} | {p.brokers} | {p.total_cores:,.0f} |"
        )
    return "\n".join(lines)


#: The k8s overlays written from the plan, by fleet size.
FLEET_OVERLAYS = {"fleet-100k": 100_000, "fleet-1m": 1_000_000}
#: Strimzi topic resources: co-partitioned by device id, so every one gets the same count
#: (alerting reads predictions, raw and heartbeats partition by partition; the changelog
#: must match raw).
TOPIC_RESOURCES = (
    "harstream-raw-v1",
    "harstream-windows-v1",
    "harstream-predictions-v1",
    "harstream-shadow-predictions-v1",
    "harstream-alerts-v1",
    "harstream-dlq-v1",
    "harstream-heartbeats-v1",
    "harstream-preprocess-device-streams-changelog",
)
GENERATED = (
    "# Generated by `python -m benchmarks.sizing --write-overlays k8s/overlays`: do not edit.\n"
)


def overlay_files(name: str, p: Plan, measured_at: int) -> dict[str, str]:
    """The files of k8s overlay ``name`` (on top of prod) for plan ``p``."""
    header = (
        f"{GENERATED}# {p.devices:,} live devices at one 50-sample packet/s, from the "
        f"per-packet CPU measured\n# at {measured_at:,} devices "
        '(reports/performance.md, "Sizing").\n'
    )
    kustomization = (
        f"{header}"
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "bases:\n"
        "  - ../prod\n"
        "patchesStrategicMerge:\n"
        "  - kafka.yaml\n"
        "  - topics.yaml\n"
        "  - scaling.yaml\n"
        "# The services create a missing topic with TOPIC_PARTITIONS: the same count as above.\n"
        "configMapGenerator:\n"
        + "".join(
            f"  - name: {service}-env\n"
            "    behavior: merge\n"
            "    literals:\n"
            f"      - HARSTREAM_{service.upper()}_TOPIC_PARTITIONS={p.partitions}\n"
            for service in ("ingest", "preprocess", "inference", "alerting")
        )
    )
    kafka = (
        f"{header}"
        "apiVersion: kafka.strimzi.io/v1beta2\n"
        "kind: KafkaNodePool\n"
        "metadata:\n"
        "  name: dual-role\n"
        "spec:\n"
        f"  # {p.write_mb_s:,.0f} MB/s written with replication.\n"
        f"  replicas: {p.brokers}\n"
    )
    topics = header + "---\n".join(
        "apiVersion: kafka.strimzi.io/v1beta2\n"
        "kind: KafkaTopic\n"
        "metadata:\n"
        f"  name: {resource}\n"
        "spec:\n"
        f"  partitions: {p.partitions}\n"
        for resource in TOPIC_RESOURCES
    )
    scaled = "".join(
        "---\n"
        "apiVersion: keda.sh/v1alpha1\n"
        "kind: ScaledObject\n"
        "metadata:\n"
        f"  name: {stage}\n"
        "spec:\n"
        f"  # {p.cores[stage]:,.1f} cores planned: the steady state needs {p.pods[stage]}.\n"
        f"  minReplicaCount: {p.pods[stage]}\n"
        f"  maxReplicaCount: {p.partitions}\n"
        for stage in ("preprocess", "inference")
    )
    scaling = (
        f"{header}"
        "apiVersion: autoscaling/v2\n"
        "kind: HorizontalPodAutoscaler\n"
        "metadata:\n"
        "  name: ingest\n"
        "spec:\n"
        f"  # {p.cores['ingest']:,.1f} cores planned.\n"
        f"  minReplicas: {p.pods['ingest']}\n"
        f"  maxReplicas: {2 * p.pods['ingest']}\n"
        "---\n"
        "apiVersion: apps/v1\n"
        "kind: Deployment\n"
        "metadata:\n"
        "  name: ingest\n"
        "spec:\n"
        f"  replicas: {p.pods['ingest']}\n"
        "---\n"
        "apiVersion: apps/v1\n"
        "kind: Deployment\n"
        "metadata:\n"
        "  name: tfserving\n"
        "spec:\n"
        f"  # {p.cores['modelserver']:,.1f} cores planned (the dev model server's cost per "
        "window:\n"
        "  # TF Serving's C++ server costs less, so this is an upper bound).\n"
        f"  replicas: {p.pods['modelserver']}\n"
        f"{scaled}"
        "---\n"
        "apiVersion: keda.sh/v1alpha1\n"
        "kind: ScaledObject\n"
        "metadata:\n"
        "  name: alerting\n"
        "spec:\n"
        f"  # The plan needs {p.pods['alerting']} alerting workers "
        f"({p.cores['alerting']:,.1f} cores), but alerting\n"
        "  # stays pinned to ONE replica (k8s/base/alerting.yaml: acknowledgements are not yet\n"
        "  # routed to the replica owning the device): the fleet's known limit, see the report.\n"
        "  minReplicaCount: 1\n"
        "  maxReplicaCount: 1\n"
    )
    return {
        "kustomization.yaml": kustomization,
        "kafka.yaml": kafka,
        "topics.yaml": topics,
        "scaling.yaml": scaling,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sizing", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--devices", default="100000,1000000")
    parser.add_argument("--capacity", type=Path, default=DEFAULT_CAPACITY)
    parser.add_argument("--utilisation", type=float, default=Assumptions.utilisation)
    parser.add_argument("--broker-write-mb-s", type=float, default=Assumptions.broker_write_mb_s)
    parser.add_argument(
        "--write-overlays",
        type=Path,
        default=None,
        help=f"write the k8s overlays {', '.join(FLEET_OVERLAYS)} into this directory "
        "(k8s/overlays), with the default assumptions",
    )
    args = parser.parse_args(argv)
    measured_at, cpu = cpu_per_packet_from(args.capacity)
    sizes = measured_sizes()
    a = Assumptions(utilisation=args.utilisation, broker_write_mb_s=args.broker_write_mb_s)
    plans = [plan(int(n), cpu, sizes, a) for n in args.devices.split(",")]
    print(markdown(plans, measured_at, sizes))
    if args.write_overlays is not None:
        for name, files in fleet_overlays(args.capacity).items():
            directory = args.write_overlays / name
            directory.mkdir(parents=True, exist_ok=True)
            for filename, text in files.items():
                (directory / filename).write_text(text)
            print(f"wrote {directory}")


def fleet_overlays(capacity: Path = DEFAULT_CAPACITY) -> dict[str, dict[str, str]]:
    """Every fleet overlay's files from a capacity run, with the default assumptions."""
    measured_at, cpu = cpu_per_packet_from(capacity)
    sizes = measured_sizes()
    return {
        name: overlay_files(name, plan(devices, cpu, sizes, Assumptions()), measured_at)
        for name, devices in FLEET_OVERLAYS.items()
    }


if __name__ == "__main__":
    main()
