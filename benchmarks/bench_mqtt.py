"""MQTT ingest beside HTTP ingest: packets/s onto the raw topic and CPU per packet, for N
simulated wearables replaying HAPT recordings faster than real time.

``python -m benchmarks.bench_mqtt [--devices 10,50,100] [--speed 40] [--subjects 9]
[--modes http,mqtt]``

Per N and mode: the embedded broker (fresh per run), and either a ``harstream ingest``
process (``http``: ``harstream simulate --transport http``, each packet answered 202 after
Kafka's acknowledgement) or a private Mosquitto with the device credentials and ACLs
``harstream devices mqtt-config`` writes and a ``harstream mqtt-bridge`` process (``mqtt``:
``harstream simulate --transport mqtt``; the broker acknowledges on receipt, so the rate is
taken from the bridge's own count of messages acknowledged after Kafka's). Printed: packets,
seconds from the first to the last packet on the raw topic, packets/s, the service's CPU
(utime + stime from ``/proc``) per packet, Mosquitto's CPU per packet, and the load average
(the machine is shared: figures move with it).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.capacity_stats import process_cpu_seconds
from services.common.broker import EmbeddedBroker, free_port, wait_for_port
from services.common.kafka.topics import create_topics
from services.ingest.registry import SqliteRegistry
from services.mqtt_bridge.mosquitto import (
    DEFAULT_BRIDGE_USER,
    BrokerOptions,
    password_hash,
    render_acl,
    render_conf,
    render_password_file,
)
from shared.settings import StreamSettings

HARSTREAM = [sys.executable, "-m", "services.cli"]


def scrape(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(name))


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f} s")


@contextmanager
def spawn(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        process = subprocess.Popen(argv, env={**os.environ, **env}, stdout=out, stderr=out)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def stream_env(prefix: str, kafka: StreamSettings) -> dict[str, str]:
    return {
        f"{prefix}KAFKA_BOOTSTRAP_SERVERS": kafka.kafka_bootstrap_servers,
        f"{prefix}KAFKA_PROFILE": "tansu",
        f"{prefix}TOPIC_PREFIX": kafka.topic_prefix,
        f"{prefix}TOPIC_PARTITIONS": str(kafka.topic_partitions),
    }


def simulate(args: argparse.Namespace, n: int, tokens: Path, extra: list[str]) -> dict[str, Any]:
    argv = [*HARSTREAM, "simulate", "--devices", str(n), "--speed", str(args.speed)]
    argv += ["--subjects", args.subjects, "--tokens", str(tokens), "--json", *extra]
    result = subprocess.run(argv, capture_output=True, text=True, check=True)
    figures: dict[str, Any] = json.loads(result.stdout)
    return figures


def run_http(args: argparse.Namespace, n: int, root: Path, kafka: StreamSettings) -> dict[str, Any]:
    port, metrics = free_port(), free_port()
    env = {
        **stream_env("HARSTREAM_INGEST_", kafka),
        "HARSTREAM_INGEST_HOST": "127.0.0.1",
        "HARSTREAM_INGEST_PORT": str(port),
        "HARSTREAM_INGEST_METRICS_PORT": str(metrics),
        "HARSTREAM_INGEST_REGISTRY_URL": f"sqlite:///{root / 'devices.db'}",
        "HARSTREAM_INGEST_HEARTBEAT_INTERVAL_S": "0",
        # Replays run many times faster than real time: the per-device limit would throttle.
        "HARSTREAM_INGEST_RATE_LIMIT_SAMPLES_PER_S": "1000000",
        "HARSTREAM_INGEST_RATE_LIMIT_BURST_SAMPLES": "2000000",
    }
    with spawn([*HARSTREAM, "ingest"], env, root / "ingest.log") as ingest:
        wait_ready(f"http://127.0.0.1:{port}/readyz", ingest)
        cpu0 = process_cpu_seconds(ingest.pid)
        url = f"http://127.0.0.1:{port}"
        figures = simulate(args, n, root / "tokens.json", ["--url", url])
        cpu = process_cpu_seconds(ingest.pid) - cpu0
    packets = figures["packets_accepted"]
    return {
        "packets": packets,
        "seconds": figures["seconds"],
        "packets_per_s": figures["packets_per_s"],
        "service_cpu_ms_per_packet": 1000 * cpu / max(packets, 1),
        "broker_cpu_ms_per_packet": None,
    }


def mosquitto_config(root: Path, tokens: dict[str, str], bridge_password: str) -> tuple[Path, int]:
    port = free_port()
    entries = {d: password_hash(t) for d, t in tokens.items()}
    entries[DEFAULT_BRIDGE_USER] = password_hash(bridge_password)
    (root / "passwd").write_text(render_password_file(entries))
    (root / "passwd").chmod(0o600)
    (root / "acl").write_text(render_acl(DEFAULT_BRIDGE_USER))
    conf = render_conf(BrokerOptions(port, "127.0.0.1", str(root), None))
    conf += f"user {pwd.getpwuid(os.getuid()).pw_name}\n"  # root would switch to "mosquitto"
    (root / "mosquitto.conf").write_text(conf)
    return root / "mosquitto.conf", port


def run_mqtt(
    args: argparse.Namespace, n: int, root: Path, kafka: StreamSettings, tokens: dict[str, str]
) -> dict[str, Any]:
    password = os.urandom(16).hex()
    conf, port = mosquitto_config(root, tokens, password)
    health = free_port()
    env = {
        **stream_env("HARSTREAM_MQTT_BRIDGE_", kafka),
        "HARSTREAM_MQTT_BRIDGE_MQTT_PORT": str(port),
        "HARSTREAM_MQTT_BRIDGE_MQTT_PASSWORD": password,
        "HARSTREAM_MQTT_BRIDGE_HEALTH_PORT": str(health),
        "HARSTREAM_MQTT_BRIDGE_CLIENT_ID": f"bench-{port}",
    }
    with (
        spawn(["mosquitto", "-c", str(conf)], {}, root / "mosquitto.log") as broker,
        spawn([*HARSTREAM, "mqtt-bridge"], env, root / "bridge.log") as bridge,
    ):
        assert wait_for_port("127.0.0.1", port, 10.0), "mosquitto did not start"
        wait_ready(f"http://127.0.0.1:{health}/readyz", bridge)
        cpu0, broker0 = process_cpu_seconds(bridge.pid), process_cpu_seconds(broker.pid)
        accepted = 'harstream_mqtt_messages_total{outcome="accepted"}'
        argv = [*HARSTREAM, "simulate", "--transport", "mqtt", "--mqtt-port", str(port)]
        argv += ["--devices", str(n), "--speed", str(args.speed), "--subjects", args.subjects]
        argv += ["--tokens", str(root / "tokens.json"), "--json"]
        sim = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            text=True,
        )
        first: float | None = None
        last = (0.0, 0.0)
        total = float("inf")
        deadline = float("inf")
        while last[1] < total:
            if total == float("inf") and sim.poll() is not None:
                out, _ = sim.communicate()
                total = json.loads(out)["packets_accepted"]
                deadline = time.monotonic() + 60.0
            assert time.monotonic() < deadline, f"{last[1]} of {total} packets bridged"
            count = scrape(health, accepted)
            now = time.monotonic()
            if count and first is None:
                first = now
            if count > last[1]:
                last = (now, count)
            time.sleep(0.1)
        cpu = process_cpu_seconds(bridge.pid) - cpu0
        broker_cpu = process_cpu_seconds(broker.pid) - broker0
    assert first is not None
    packets = int(last[1])
    seconds = max(last[0] - first, 1e-9)
    return {
        "packets": packets,
        "seconds": round(seconds, 3),
        "packets_per_s": round(packets / seconds, 1),
        "service_cpu_ms_per_packet": 1000 * cpu / max(packets, 1),
        "broker_cpu_ms_per_packet": 1000 * broker_cpu / max(packets, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="10,50,100")
    parser.add_argument("--speed", type=float, default=40.0)
    parser.add_argument("--subjects", default="9")
    parser.add_argument("--modes", default="http,mqtt")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    header = f"{'N':>5} {'mode':<5} {'packets':>8} {'s':>7} {'packets/s':>10} "
    print(header + f"{'svc ms/pkt':>11} {'mosq ms/pkt':>12}")
    for n in (int(x) for x in args.devices.split(",")):
        for mode in args.modes.split(","):
            with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as scratch:
                root = Path(scratch)
                with EmbeddedBroker(log_path=root / "tansu.log") as broker:
                    kafka = StreamSettings(
                        kafka_bootstrap_servers=broker.bootstrap_servers,
                        kafka_profile="tansu",
                        topic_prefix="bench",
                        topic_partitions=4,
                    )
                    create_topics(kafka)
                    registry = SqliteRegistry(root / "devices.db")
                    tokens = {
                        f"sim-{i + 1:04d}": registry.add(f"sim-{i + 1:04d}")[1] for i in range(n)
                    }
                    registry.close()
                    (root / "tokens.json").write_text(json.dumps(tokens))
                    if mode == "http":
                        row = run_http(args, n, root, kafka)
                    else:
                        row = run_mqtt(args, n, root, kafka, tokens)
            mosq = row["broker_cpu_ms_per_packet"]
            print(
                f"{n:>5} {mode:<5} {row['packets']:>8} {row['seconds']:>7.1f} "
                f"{row['packets_per_s']:>10.1f} {row['service_cpu_ms_per_packet']:>11.3f} "
                + (f"{mosq:>12.3f}" if mosq is not None else f"{'-':>12}"),
                flush=True,
            )
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
