"""Sizing on paper (benchmarks.sizing.plan): the arithmetic from per-packet costs to pods,
partitions and brokers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.sizing import STAGES, Assumptions, Sizes, fleet_overlays, plan

SIZES = Sizes(raw=2500, window=5000, prediction=700, state=3400)


def _cpu(per_packet_s: float) -> dict[str, float]:
    return dict.fromkeys(STAGES, per_packet_s)


def test_cores_follow_devices_times_cost_over_the_planned_utilisation() -> None:
    p = plan(100_000, _cpu(100e-6), SIZES, Assumptions(utilisation=0.5))
    # 100,000 packets/s × 100 µs = 10 cores busy, planned at 50 %: 20 cores.
    assert p.cores["preprocess"] == pytest.approx(20.0)
    assert p.pods["preprocess"] == 20
    assert p.pods["modelserver"] == 5  # 4 cores per TF Serving replica
    assert p.total_cores == pytest.approx(100.0)


def test_partitions_leave_room_for_the_largest_group_to_double() -> None:
    p = plan(100_000, _cpu(100e-6), SIZES, Assumptions(utilisation=0.5))
    # 20 workers × 2 headroom = 40 → the next power of two.
    assert p.partitions == 64
    assert all(p.pods[s] <= p.partitions for s in ("preprocess", "inference", "alerting"))


def test_a_small_fleet_keeps_the_minimums() -> None:
    p = plan(100, _cpu(100e-6), SIZES, Assumptions())
    assert p.partitions == 8
    assert p.brokers == 3
    assert min(p.pods.values()) == 2  # two of everything: a node loss keeps every stage


def test_brokers_follow_the_replicated_write_rate() -> None:
    a = Assumptions(broker_write_mb_s=100.0, replication=3)
    p = plan(100_000, _cpu(1e-6), SIZES, a)
    per_packet = 2500 + 50 / 64 * (5000 + 700) + 3400
    assert p.write_mb_s == pytest.approx(100_000 * per_packet * 3 / 1e6)
    assert p.brokers == math.ceil(p.write_mb_s / 100)


def test_the_committed_fleet_overlays_are_the_plan_of_the_committed_capacity_run() -> None:
    """k8s/overlays/fleet-* hold what ``python -m benchmarks.sizing --write-overlays
    k8s/overlays`` writes from reports/capacity.json: regenerate them when either moves."""
    overlays = Path(__file__).resolve().parents[2] / "k8s" / "overlays"
    for name, files in fleet_overlays().items():
        for filename, text in files.items():
            assert (overlays / name / filename).read_text() == text, f"{name}/{filename}"
