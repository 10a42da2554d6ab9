"""The capacity benchmark in a short form against the real local pipeline: two steps (20 and
50 devices, 10 s each) over HTTP, the 50-device step through gateways, and one step of 20
devices over MQTT (private Mosquitto and bridge). Checks that its figures are consistent
with each other, never how fast anything was (the machine is shared): accepted never
exceeds offered, every accepted packet became the windows it makes, every process is
accounted for."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.capacity import parse_args, run
from benchmarks.capacity_stats import BRIDGE, LAG_EDGES, MQTT_EDGE, NOT_PIPELINE


def test_short_capacity_ramp_is_consistent(tmp_path: Path) -> None:
    summary = run(
        parse_args(
            [
                "--steps",
                "20,50",
                "--hold-s",
                "10",
                "--warmup-s",
                "5",
                "--lag-every-s",
                "2",
                "--keep-going",
                "--workdir",
                str(tmp_path / "work"),
                "--json",
                str(tmp_path / "capacity.json"),
                "--plot",
                str(tmp_path / "capacity.png"),
                "--markdown",
                str(tmp_path / "capacity.md"),
            ]
        )
    )
    steps = summary["steps"]
    assert [s["devices"] for s in steps] == [20, 50]
    for step in steps:
        seconds = step["seconds"]
        # Counts come back as rates: rate × seconds is a count only up to float rounding.
        offered = round(step["offered_per_s"] * seconds)
        accepted = round(step["accepted_per_s"] * seconds)
        # Offered counts by schedule, accepted by answer: at most one packet per device
        # was in flight across the hold's start.
        assert 0 < accepted <= offered + step["behind_at_start"] + step["devices"]
        # (How many predictions fell within a 10 s hold depends on the machine's load: the
        # drain below checks that they all came.)
        assert step["predictions"] >= 0
        assert set(step["lag"]) == set(LAG_EDGES)
        assert step["statuses"].get(202, step["statuses"].get("202", 0)) >= accepted
        services = {"broker", "modelserver", "ingest", "preprocess", "inference", "alerting"}
        assert services | NOT_PIPELINE <= set(step["cpu"])
        assert all(v >= 0 for v in step["cpu"].values())
        assert step["pipeline_cpu"] == sum(
            v for k, v in step["cpu"].items() if k not in NOT_PIPELINE
        )
        assert all(step["rss_mib"][name] > 0 for name in services)
    # After the drain, every device's accepted samples became every window they make.
    loss = summary["loss_after_drain"]
    assert loss["devices"] == 50
    assert loss["expected"] > 0
    assert loss["drained"], loss
    assert loss["lost"] == 0, loss
    assert summary["undecodable_predictions"] == 0
    final = summary["fleet_final"]
    assert final is not None
    # Every request was answered (or failed) except those in flight when the fleet stopped.
    assert 0 <= final["requests"] - sum(final["statuses"].values()) <= 50
    assert final["accepted"] + final["gave_up"] <= final["offered"]
    assert json.loads((tmp_path / "capacity.json").read_text())["steps"][1]["devices"] == 50
    assert (tmp_path / "capacity.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "capacity.md").read_text().count("\n| 50 |") == 1


def test_short_capacity_step_through_gateways_loses_nothing(tmp_path: Path) -> None:
    """The ramp's larger step (one step: the ramp itself is checked above) with 5 gateways
    forwarding the devices' packets as MessagePack batches (packed float32 samples), each
    gateway authenticated by its own credential bound to its devices: everything offered is
    accepted, nothing is refused, and after the drain every accepted sample became its
    windows."""
    summary = run(
        parse_args(
            [
                "--steps",
                "50",
                "--hold-s",
                "10",
                "--warmup-s",
                "5",
                "--lag-every-s",
                "2",
                "--keep-going",
                "--gateways",
                "5",
                "--gateway-credentials",
                "--body",
                "msgpack",
                "--workdir",
                str(tmp_path / "work"),
            ]
        )
    )
    assert summary["gateways"] == 5 and summary["body"] == "msgpack"
    assert summary["gateway_credentials"]
    [step] = summary["steps"]
    assert step["devices"] == 50
    offered = round(step["offered_per_s"] * step["seconds"])
    accepted = round(step["accepted_per_s"] * step["seconds"])
    # A gateway forwards a second's packets at a time: up to one per device may be
    # accepted after the hold's end, or before its start.
    assert 0 < accepted <= offered + step["behind_at_start"] + step["devices"]
    assert step["failed"] == 0 and step["ingest_rejections"] == 0
    loss = summary["loss_after_drain"]
    assert loss["devices"] == 50 and loss["expected"] > 0
    assert loss["drained"], loss
    assert loss["lost"] == 0, loss
    final = summary["fleet_final"]
    assert final is not None
    assert sum(final["failed"].values()) == 0 and final["gave_up"] == 0
    assert final["accepted"] <= final["offered"]
    # per-packet answers: every packet sent was answered 202
    assert set(final["statuses"]) <= {202, "202"}


def test_short_capacity_step_over_mqtt_loses_nothing(tmp_path: Path) -> None:
    """One step of 20 devices publishing over MQTT (QoS 1) to a private Mosquitto, from which
    the bridge writes the raw topic: every packet offered was acknowledged by Mosquitto, the
    bridge wrote them all to Kafka (nothing dead-lettered, no backlog left behind in
    Mosquitto), and after the drain every acknowledged sample became its windows."""
    summary = run(
        parse_args(
            [
                "--transport",
                "mqtt",
                "--steps",
                "20",
                "--hold-s",
                "12",
                "--warmup-s",
                "5",
                "--lag-every-s",
                "2",
                "--keep-going",
                "--workdir",
                str(tmp_path / "work"),
                "--markdown",
                str(tmp_path / "capacity.md"),
            ]
        )
    )
    assert summary["transport"] == "mqtt"
    [step] = summary["steps"]
    offered = round(step["offered_per_s"] * step["seconds"])
    accepted = round(step["accepted_per_s"] * step["seconds"])
    # A device behind its schedule at the hold's start catches up within it.
    assert 0 < accepted <= offered + step["behind_at_start"] + 20
    assert step["failed"] == 0 and step["bridge_rejections"] == 0
    # What the bridge wrote to Kafka during the hold: Mosquitto's PUBACKs, up to the
    # messages between the two at the hold's ends.
    bridged = round(step["bridged_per_s"] * step["seconds"])
    assert abs(bridged - accepted) <= 20 + step["lag"][MQTT_EDGE]["end"]
    assert {BRIDGE, "mosquitto"} <= set(step["cpu"])
    assert step["cpu"][BRIDGE] > 0
    assert MQTT_EDGE in step["lag"] and not step["lag"][MQTT_EDGE]["growing"]
    final = summary["fleet_final"]
    assert final is not None
    # Every packet due was acknowledged but at most one per device in flight at the stop.
    assert sum(final["failed"].values()) == 0 and final["gave_up"] == 0
    assert 0 <= final["offered"] - final["accepted"] <= 20
    assert set(final["statuses"]) <= {202, "202"}
    loss = summary["loss_after_drain"]
    assert loss["devices"] == 20 and loss["expected"] > 0
    assert loss["drained"], loss
    assert loss["lost"] == 0, loss
    assert summary["undecodable_predictions"] == 0
    assert "| bridged/s | mqtt-bridge | mosquitto |" in (tmp_path / "capacity.md").read_text()
