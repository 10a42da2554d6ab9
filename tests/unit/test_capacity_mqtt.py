"""The capacity benchmark's arithmetic over MQTT (``--transport mqtt``): the bridge's records
count into the raw topic's lag, Mosquitto's backlog is a lag of its own, the step reports
what the bridge wrote and dead-lettered, and a dead letter fails the step."""

from __future__ import annotations

import pytest

from benchmarks.capacity import markdown_table
from benchmarks.capacity_stats import (
    BRIDGE,
    MQTT_EDGE,
    LagTrend,
    Snapshot,
    StepResult,
    Usage,
    judge,
    lags,
    mqtt_backlog,
    parse_metrics,
    step_result,
)
from services.demo.fleet import FleetCounters
from services.demo.fleetgen import FleetConfig

BRIDGE_METRICS = """
# TYPE harstream_mqtt_messages_total counter
harstream_mqtt_messages_total{{outcome="accepted"}} {accepted}
harstream_mqtt_messages_total{{outcome="dead_lettered"}} {dead}
# TYPE harstream_mqtt_samples_total counter
harstream_mqtt_samples_total {samples}
# TYPE harstream_mqtt_rejections_total counter
harstream_mqtt_rejections_total{{reason="malformed"}} {dead}
# TYPE harstream_mqtt_redeliveries_total counter
harstream_mqtt_redeliveries_total {dup}
"""


def _bridge(accepted: int, dead: int = 0, samples: int = 0, dup: int = 0) -> str:
    return BRIDGE_METRICS.format(accepted=accepted, dead=dead, samples=samples, dup=dup)


def test_bridge_records_count_into_the_raw_lag_and_mosquitto_backlog_is_its_own() -> None:
    metrics = {
        "ingest": parse_metrics("harstream_ingest_packets_total 0\n"),
        "preprocess": parse_metrics("harstream_preprocess_packets_total 960\n"),
        BRIDGE: parse_metrics(_bridge(accepted=990, dead=3)),
    }
    # Dead letters never reach the raw topic: only accepted messages are produced into it.
    assert lags(metrics)["preprocess (raw)"] == 30
    # 1000 PUBACKed to devices, 993 acknowledged by the bridge (either outcome): 7 wait.
    assert mqtt_backlog(metrics, published=1000) == 7
    # Over HTTP nothing changes: no bridge, no backlog term.
    assert mqtt_backlog({}, published=0) == 0


def _snapshot(t: float, fleet: FleetCounters, bridge: str, cpu: dict[str, float]) -> Snapshot:
    return Snapshot(
        t=t,
        fleet=fleet,
        metrics={
            "ingest": parse_metrics("harstream_ingest_samples_total 0\n"),
            "preprocess": parse_metrics("harstream_windows_emitted_total 0\n"),
            BRIDGE: parse_metrics(bridge),
        },
        usage={k: Usage(v, 10 * 2**20) for k, v in cpu.items()},
    )


def test_step_over_mqtt_reports_the_bridge_and_judges_its_backlog() -> None:
    before = _snapshot(
        100.0,
        FleetCounters(offered=1000, accepted=1000),
        _bridge(accepted=990, samples=49_500),
        {"ingest": 1.0, BRIDGE: 2.0, "mosquitto": 1.0, "loadgen": 0.0, "harness": 0.0},
    )
    after = _snapshot(
        110.0,
        FleetCounters(offered=2000, accepted=2000),
        _bridge(accepted=1990, dead=2, samples=99_500, dup=4),
        {"ingest": 1.1, BRIDGE: 5.0, "mosquitto": 2.5, "loadgen": 1.0, "harness": 0.1},
    )
    # Mosquitto's backlog climbs from 10 to 2,000 over the hold: the bridge fell behind.
    points = {MQTT_EDGE: [(100.0 + t, 10.0 + 199.0 * t) for t in range(11)]}
    step = step_result(100, before, after, points, [], previous=None)
    assert step.bridged_per_s == pytest.approx(100.0)
    assert step.bridge_rejections == 2
    assert step.bridge_redeliveries == 4
    assert step.cpu[BRIDGE] == pytest.approx(0.3)
    assert step.cpu["mosquitto"] == pytest.approx(0.15)
    # The door is part of the pipeline: its CPU counts, the load generator's does not.
    assert step.pipeline_cpu == pytest.approx(0.01 + 0.3 + 0.15)
    assert step.lag[MQTT_EDGE].rate_per_s == pytest.approx(100.2)
    assert step.lag[MQTT_EDGE].growing
    why = judge(step)
    assert any("dead-lettered 2 messages" in w for w in why), why
    assert any("lag growing: mqtt-bridge (mosquitto)" in w for w in why), why


def test_step_over_http_has_no_bridge_figures() -> None:
    before = Snapshot(0.0, FleetCounters(offered=10, accepted=10), {}, {})
    after = Snapshot(10.0, FleetCounters(offered=110, accepted=110), {}, {})
    step = step_result(100, before, after, {}, [], previous=None)
    assert step.bridged_per_s is None
    assert MQTT_EDGE not in step.lag
    assert step.bridge_rejections == 0


def test_markdown_table_adds_the_door_columns_over_mqtt_only() -> None:
    base = StepResult(
        devices=100,
        seconds=30.0,
        offered_per_s=100.0,
        accepted_per_s=100.0,
        failed=0,
        ingest_rejections=0.0,
        retries=0,
        timeouts=0,
        late=0,
        client_p50_s=0.001,
        client_p99_s=0.004,
        e2e_p50_s=0.2,
        e2e_p99_s=0.5,
        e2e_within_1s=1.0,
        pred_p50_s=0.2,
        pred_p99_s=0.5,
        predictions=2000,
        windows_per_s=78.0,
        windows_ratio=1.0,
        lag={"preprocess (raw)": LagTrend(0, 0, 0, 100)},
        cpu={BRIDGE: 0.12, "mosquitto": 0.03},
        rss_mib={},
        broker_in_per_s=300.0,
        broker_out_per_s=300.0,
        pipeline_rss_bytes=0,
        kib_per_device=None,
    )
    http = markdown_table([(base, [])])
    assert "mosquitto" not in http
    mqtt = markdown_table([(StepResult(**{**base.__dict__, "bridged_per_s": 99.6}), [])])
    header, rule, row = mqtt.splitlines()
    assert header.endswith("| bridged/s | mqtt-bridge | mosquitto |")
    assert header.count("|") == rule.count("|") == row.count("|")
    assert row.endswith("| 100 | 0.12 | 0.03 |")


def test_fleet_over_mqtt_has_no_gateways() -> None:
    assert FleetConfig("mqtt://127.0.0.1:1883").mqtt
    assert not FleetConfig("http://127.0.0.1:8080").mqtt
    with pytest.raises(ValueError, match="gateways"):
        FleetConfig("mqtt://127.0.0.1:1883", gateways=5)
