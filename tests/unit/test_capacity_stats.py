"""The capacity benchmark's arithmetic: /proc parsing and CPU accounting, histogram
quantiles from bucket deltas, lag trends, step figures and the pass/fail verdict."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from benchmarks.capacity_stats import (
    LagTrend,
    Snapshot,
    StepResult,
    Usage,
    bucket_deltas,
    devices_per_core,
    fraction_within,
    histogram_buckets,
    judge,
    lag_trend,
    lags,
    largest_passing,
    parse_metrics,
    parse_proc_stat,
    step_result,
    tree_of,
    usage_of,
)
from services.demo.fleet import FleetCounters, quantile_from_buckets

# A real line's shape; the command name holds a space and parentheses.
STAT = (
    "4242 (python3 (x) y) S 4000 4242 4242 0 -1 4194560 30000 0 12 0 "
    "1234 567 0 0 20 0 9 0 123456 987654321 25600 18446744073709551615 1 1 0 0 0 0 0 "
    "16781312 134234624 0 0 0 17 1 0 0 0 0 0"
)


def _stat(pid: int, ppid: int, utime: int, stime: int = 0, rss: int = 10) -> str:
    return f"{pid} (p) S {ppid} 1 1 0 -1 0 0 0 0 0 {utime} {stime} 0 0 20 0 1 0 1 1 {rss} 0"


def test_proc_stat_fields_counted_after_the_command_name() -> None:
    stat = parse_proc_stat(STAT)
    assert (stat.pid, stat.ppid, stat.utime, stat.stime, stat.rss_pages) == (
        4242,
        4000,
        1234,
        567,
        25600,
    )
    assert stat.cpu_seconds(100) == pytest.approx(18.01)


def test_proc_stat_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a /proc"):
        parse_proc_stat("hello")


def test_cpu_of_a_service_includes_its_children_but_not_the_parents() -> None:
    stats = {
        s.pid: s
        for s in map(
            parse_proc_stat,
            [
                _stat(1, 0, 1000),  # the harness
                _stat(10, 1, 200, 100, rss=5),  # a service
                _stat(11, 10, 50, 50, rss=7),  # its helper
                _stat(12, 11, 1, 0, rss=1),  # the helper's child
                _stat(20, 1, 300),  # another service
            ],
        )
    }
    assert tree_of(10, stats) == {10, 11, 12}
    usage = usage_of(
        {"svc": [10], "other": [20], "harness": [1], "gone": [99]},
        stats,
        ticks_per_s=100,
        page_size=4096,
        with_children=["svc", "other"],
    )
    assert usage["svc"] == Usage(cpu_s=4.01, rss_bytes=13 * 4096)
    assert usage["other"].cpu_s == 3.0
    # Without children: the harness's own time only (the services are its children).
    assert usage["harness"].cpu_s == 10.0
    assert usage["gone"] == Usage(0.0, 0)


METRICS_BEFORE = """
# TYPE harstream_end_to_end_latency_seconds histogram
harstream_end_to_end_latency_seconds_bucket{le="0.5"} 90.0
harstream_end_to_end_latency_seconds_bucket{le="1.0"} 100.0
harstream_end_to_end_latency_seconds_bucket{le="2.5"} 100.0
harstream_end_to_end_latency_seconds_bucket{le="+Inf"} 100.0
harstream_end_to_end_latency_seconds_count 100.0
harstream_end_to_end_latency_seconds_sum 30.0
# TYPE harstream_predictions_total counter
harstream_predictions_total{activity="WALKING"} 60.0
harstream_predictions_total{activity="SITTING"} 40.0
"""
METRICS_AFTER = """
# TYPE harstream_end_to_end_latency_seconds histogram
harstream_end_to_end_latency_seconds_bucket{le="0.5"} 590.0
harstream_end_to_end_latency_seconds_bucket{le="1.0"} 1090.0
harstream_end_to_end_latency_seconds_bucket{le="2.5"} 1100.0
harstream_end_to_end_latency_seconds_bucket{le="+Inf"} 1100.0
harstream_end_to_end_latency_seconds_count 1100.0
harstream_end_to_end_latency_seconds_sum 300.0
# TYPE harstream_predictions_total counter
harstream_predictions_total{activity="WALKING"} 600.0
harstream_predictions_total{activity="SITTING"} 500.0
"""


def test_histogram_quantiles_from_bucket_deltas() -> None:
    name = "harstream_end_to_end_latency_seconds"
    delta = bucket_deltas(
        histogram_buckets(parse_metrics(METRICS_BEFORE), name),
        histogram_buckets(parse_metrics(METRICS_AFTER), name),
    )
    assert delta == ([0.5, 1.0, 2.5, math.inf], [500.0, 990.0, 1000.0, 1000.0])
    # p50: rank 500 is the top of the first bucket; p99: rank 990 is the top of (0.5, 1].
    assert quantile_from_buckets(*delta, 0.5) == pytest.approx(0.5)
    assert quantile_from_buckets(*delta, 0.99) == pytest.approx(1.0)
    # Rank 995 lies halfway into the (1, 2.5] bucket (10 observations there).
    assert quantile_from_buckets(*delta, 0.995) == pytest.approx(1.75)
    assert fraction_within(delta, 1.0) == pytest.approx(0.99)
    # Without the step's delta the earlier observations would hide the new ones.
    before_only = histogram_buckets(parse_metrics(METRICS_BEFORE), name)
    assert quantile_from_buckets(*before_only, 0.5) == pytest.approx(0.5 * 50 / 90)


def test_quantile_edge_cases() -> None:
    bounds = [0.1, 1.0, math.inf]
    assert quantile_from_buckets(bounds, [0, 0, 0], 0.5) is None
    # Everything above the last finite bound: reported as that bound.
    assert quantile_from_buckets(bounds, [0, 0, 10], 0.99) == 1.0
    assert quantile_from_buckets(bounds, [10, 10, 10], 0.0) == 0.0
    with pytest.raises(ValueError, match="Inf"):
        quantile_from_buckets([0.1, 1.0], [1, 2], 0.5)
    with pytest.raises(ValueError, match="changed"):
        bucket_deltas(([1.0, math.inf], [1, 1]), ([2.0, math.inf], [1, 1]))


def test_lag_of_each_group_is_produced_minus_consumed() -> None:
    metrics = {
        "ingest": parse_metrics("harstream_ingest_packets_total 1000\n"),
        "preprocess": parse_metrics(
            "harstream_preprocess_packets_total 990\nharstream_windows_emitted_total 700\n"
        ),
        "inference": parse_metrics(
            "harstream_inference_windows_total 650\n"
            'harstream_predictions_total{activity="A"} 600\n'
            'harstream_predictions_total{activity="B"} 40\n'
        ),
        "alerting": parse_metrics("harstream_alerting_predictions_total 640\n"),
    }
    assert lags(metrics) == {
        "preprocess (raw)": 10,
        "inference (windows)": 50,
        "alerting (predictions)": 0,
    }


def test_lag_growing_only_past_a_seconds_worth() -> None:
    steady = [(float(t), 100.0 + (10 if t % 2 else -10)) for t in range(0, 61, 5)]
    assert not lag_trend(steady, rate_per_s=2000).growing
    climbing = [(float(t), 100.0 + 50 * t) for t in range(0, 61, 5)]
    trend = lag_trend(climbing, rate_per_s=2000)
    assert trend.growth == pytest.approx(3000)
    assert trend.growing
    assert not lag_trend(climbing, rate_per_s=5000).growing
    assert not lag_trend([], rate_per_s=10).growing
    # A burst in mid-hold that was worked off: the fit tilts up, the ends agree.
    hump = [(0.0, 0.0), (20.0, 0.0), (40.0, 3000.0), (50.0, 3000.0), (60.0, 0.0)]
    assert lag_trend(hump, rate_per_s=80).growth > 80
    assert not lag_trend(hump, rate_per_s=80).growing


def _snapshot(t: float, fleet: FleetCounters, metrics: str, cpu: dict[str, float]) -> Snapshot:
    parsed = parse_metrics(metrics)
    return Snapshot(
        t=t,
        fleet=fleet,
        metrics={"inference": parsed, "ingest": parsed, "preprocess": parsed},
        usage={k: Usage(v, 100 * 2**20) for k, v in cpu.items()},
        end_offsets={"raw": int(t * 10)},
    )


def test_step_figures_are_differences_over_the_hold() -> None:
    before_fleet = FleetCounters(offered=100, accepted=100, samples_accepted=5000)
    after_fleet = FleetCounters(
        offered=1100,
        accepted=1095,
        samples_accepted=54750,
        retries=3,
        failed=Counter({0: 1}),
    )
    after_fleet.observe_latency(0.004)
    counters = "harstream_ingest_samples_total {s}\nharstream_windows_emitted_total {w}\n"
    before = _snapshot(
        1000.0,
        before_fleet,
        METRICS_BEFORE + counters.format(s=5000, w=70),
        {"ingest": 10.0, "broker": 5.0, "loadgen": 1.0, "harness": 1.0},
    )
    after = _snapshot(
        1010.0,
        after_fleet,
        METRICS_AFTER + counters.format(s=54750, w=840),
        {"ingest": 15.0, "broker": 7.0, "loadgen": 4.0, "harness": 1.5},
    )
    step = step_result(100, before, after, {}, [0.2, 0.3, 0.4], previous=(50, 0))
    assert step.offered_per_s == 100.0
    assert step.accepted_per_s == 99.5
    assert step.failed == 1
    assert step.cpu == {"ingest": 0.5, "broker": 0.2, "loadgen": 0.3, "harness": 0.05}
    assert step.pipeline_cpu == pytest.approx(0.7)  # load generator and harness excluded
    assert step.e2e_within_1s == pytest.approx(0.99)
    assert step.pred_p50_s == pytest.approx(0.3)
    assert step.windows_ratio == pytest.approx(770 * 64 / 49750)
    assert step.broker_in_per_s == 10.0
    # ingest 100 MiB is the one service holding device state here (broker excluded).
    assert step.kib_per_device == pytest.approx(100 * 1024 / 50)
    with pytest.raises(ValueError, match="after"):
        step_result(100, after, before, {}, [], None)


def test_a_step_records_how_far_behind_its_schedule_the_generator_began() -> None:
    """Packets due before the hold but answered in it are accepted beyond the hold's offer."""
    metrics = METRICS_BEFORE + "harstream_ingest_samples_total 0\n"
    behind = FleetCounters(offered=240, accepted=72)
    caught_up = FleetCounters(offered=480, accepted=480)
    step = step_result(
        20,
        _snapshot(0.0, behind, metrics, {}),
        _snapshot(12.0, caught_up, metrics, {}),
        {},
        [],
        None,
    )
    assert step.behind_at_start == 168
    assert step.accepted_per_s * step.seconds == step.offered_per_s * step.seconds + 168
    on_time = FleetCounters(offered=240, accepted=240)
    assert (
        step_result(
            20,
            _snapshot(0.0, on_time, metrics, {}),
            _snapshot(12.0, caught_up, metrics, {}),
            {},
            [],
            None,
        ).behind_at_start
        == 0
    )


def _step(**changes: object) -> StepResult:
    base: dict[str, object] = {
        "devices": 1000,
        "seconds": 60.0,
        "offered_per_s": 1000.0,
        "accepted_per_s": 998.0,
        "failed": 0,
        "ingest_rejections": 0.0,
        "retries": 0,
        "timeouts": 0,
        "late": 0,
        "client_p50_s": 0.005,
        "client_p99_s": 0.05,
        "e2e_p50_s": 0.3,
        "e2e_p99_s": 0.9,
        "e2e_within_1s": 0.995,
        "pred_p50_s": 0.25,
        "pred_p99_s": 0.8,
        "predictions": 46000,
        "windows_per_s": 780.0,
        "windows_ratio": 1.0,
        "lag": {"preprocess (raw)": LagTrend(5, 7, 3, 1000)},
        "cpu": {"ingest": 0.5, "preprocess": 0.5, "loadgen": 0.2},
        "rss_mib": {},
        "broker_in_per_s": 3000.0,
        "broker_out_per_s": 3000.0,
        "pipeline_rss_bytes": 0,
        "kib_per_device": 2.0,
    }
    base.update(changes)
    return StepResult(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"accepted_per_s": 900.0}, "accepted 900/s of 1000/s"),
        ({"failed": 2}, "2 packets rejected or given up"),
        ({"ingest_rejections": 5.0}, "ingest rejected 5"),
        ({"e2e_within_1s": 0.98}, "98.0% of windows within 1 s"),
        ({"pred_p99_s": 1.2}, "predictions p99 1.20 s"),
        ({"lag": {"inference (windows)": LagTrend(0, 5000, 5000, 800)}}, "lag growing: inference"),
        (
            {"e2e_p99_s": None, "e2e_within_1s": None, "pred_p99_s": None},
            "no predictions",
        ),
        ({"offered_per_s": 0.0, "accepted_per_s": 0.0}, "nothing offered"),
    ],
)
def test_verdict(changes: dict[str, object], reason: str | None) -> None:
    why = judge(_step(**changes))
    if reason is None:
        assert why == []
    else:
        assert any(reason in w for w in why), why


def test_interpolated_histogram_p99_does_not_decide_when_the_exact_share_is_known() -> None:
    # 99.5 % within 1 s but the interpolated p99 lands past 1 s in a coarse bucket.
    assert judge(_step(e2e_p99_s=1.3, e2e_within_1s=0.995)) == []


def test_largest_passing_and_devices_per_core() -> None:
    steps = [
        (_step(devices=500), []),
        (_step(devices=1000), []),
        (_step(devices=1500), ["lag growing: preprocess (raw)"]),
    ]
    best = largest_passing(steps)
    assert best is not None and best.devices == 1000
    assert devices_per_core(best) == pytest.approx(1000 / 1.0)
    assert largest_passing([(_step(), ["x"])]) is None
