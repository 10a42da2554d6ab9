"""The console's pure parts: sessions (expiry, CSRF), the live fleet view (what changed
since a version, alert changes since a sequence number), the pipeline figures from
Prometheus text, the raw-signal window, and the settings."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from services.alerting.lifecycle import acknowledge, open_alert, resolve
from services.common.operators import Identity, Role
from services.console.fleet import FleetView, alert_order
from services.console.pipeline import _quantile, parse, summarize
from services.console.raw import _packets_of, assemble, window_of
from services.console.sessions import SessionStore
from services.console.settings import ConsoleSettings, parse_metrics_urls
from shared.activities import ACTIVITIES
from shared.messages import AlertType, MotionFeatures, Prediction, RawPacket
from shared.messages.raw import encode_bundle

ANA = Identity("ana", Role.CARER, "session")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_sessions_expire_when_idle_or_too_old_and_check_csrf() -> None:
    clock = Clock()
    store = SessionStore(idle_s=60, max_s=300, max_sessions=10, clock=clock)
    sid, session = store.create(ANA)
    assert store.get(sid) is session
    assert session.csrf_ok(session.csrf_token)
    assert not session.csrf_ok(None) and not session.csrf_ok("x")
    assert store.get("forged") is None and store.get(None) is None
    for _ in range(5):  # used every 59 s: never idle, but too old after 300 s
        clock.t += 59
        assert store.get(sid) is session
    clock.t += 59
    assert store.get(sid) is None
    sid2, _ = store.create(ANA)
    clock.t += 61
    assert store.get(sid2) is None


def test_sessions_end_on_logout_revocation_and_capacity() -> None:
    clock = Clock()
    store = SessionStore(idle_s=60, max_s=300, max_sessions=2, clock=clock)
    a, _ = store.create(ANA)
    b, _ = store.create(Identity("bo", Role.VIEWER, "session"))
    c, _ = store.create(ANA)  # over capacity: the least recently used (a) ends
    assert store.get(a) is None and store.get(b) is not None and store.get(c) is not None
    store.end(b)
    assert store.get(b) is None
    assert store.end_operator("ana") == 1 and store.get(c) is None


def _prediction(device: str, label: str, end: float, confidence: float = 0.9) -> Prediction:
    probs = [0.02] * len(ACTIVITIES)
    probs[ACTIVITIES.index(label)] = confidence
    return Prediction(
        window_id=f"{device}:{end}",
        device_id=device,
        start_index=0,
        start_time=end - 2.56,
        end_time=end,
        label=label,
        probabilities=tuple(probs),
        model_name="har",
        model_version=3,
        features=MotionFeatures(
            peak_acc_g=1.0,
            min_acc_g=1.0,
            movement_energy=0.1,
            rotation_energy=0.1,
            acc_std_g=0.1,
            max_abs_acc_g=1.0,
            max_abs_gyro=0.1,
            upright_cosine=1.0,
        ),
        ingested_at=end,
        window_emitted_at=end,
        produced_at=end,
        queue_wait_s=0.0,
        inference_s=0.0,
    )


def test_fleet_view_pushes_only_what_changed() -> None:
    view = FleetView()
    view.traffic("a", 10.0)
    view.prediction(_prediction("a", "WALKING", 12.0), now=12.0)
    view.prediction(_prediction("b", "SITTING", 12.0), now=12.0)
    v = view.version
    assert {r["device_id"] for r in view.changed_since(0)} == {"a", "b"}
    assert view.changed_since(v) == []
    view.prediction(_prediction("a", "LAYING", 15.0, 0.7), now=15.0)
    view.traffic("b", 9.0)  # older than nothing seen: b had no traffic yet, so it counts
    changed = {r["device_id"]: r for r in view.changed_since(v)}
    assert set(changed) == {"a", "b"}
    assert changed["a"]["activity"] == "LAYING" and changed["a"]["activity_since"] == 15.0
    assert changed["a"]["confidence"] == pytest.approx(0.7)
    assert changed["a"]["online"] is True and changed["a"]["model_version"] == 3
    v = view.version
    view.traffic("b", 8.0)  # older than the newest seen: no change
    assert view.changed_since(v) == []


def test_fleet_view_tracks_open_alerts_and_offline() -> None:
    view = FleetView(event_buffer=3)
    view.traffic("a", 1.0)
    offline = open_alert("a", AlertType.DEVICE_OFFLINE, "silent", 5.0, {})
    view.transition(offline.alert, offline.event.value)
    row = view.row("a")
    assert row is not None and row["online"] is False and len(row["open_alerts"]) == 1
    assert view.counts() == {
        "devices": 1, "online": 0, "offline": 1, "with_alerts": 1, "open_alerts": 1,
    }  # fmt: skip
    done = resolve(offline.alert, "auto", 6.0, "data again")
    view.transition(done.alert, done.event.value)
    assert view.row("a")["online"] is True  # type: ignore[index]
    assert [e["event"] for e in view.events_since(0)] == ["opened", "resolved"]  # type: ignore[union-attr]
    for n in range(3):
        step = open_alert(f"d{n}", AlertType.SENSOR_FAULT, "flat", 7.0 + n, {})
        view.transition(step.alert, step.event.value)
    assert view.events_since(0) is None  # fell out of the buffer: the page reloads
    assert len(view.events_since(view.event_seq - 2)) == 2  # type: ignore[arg-type]
    view.forget(["a"])
    assert view.row("a") is None


def test_inbox_order_unresolved_then_severity_then_newest() -> None:
    fall_old = open_alert("a", AlertType.FALL_SUSPECTED, "x", 1.0, {}).alert
    fall_new = open_alert("b", AlertType.FALL_SUSPECTED, "x", 2.0, {}).alert
    fault = open_alert("c", AlertType.SENSOR_FAULT, "x", 3.0, {}).alert
    acked = acknowledge(fault, "ana", 4.0)
    assert acked is not None
    gone = resolve(open_alert("d", AlertType.FALL_SUSPECTED, "x", 9.0, {}).alert, "ana", 9.5, "ok")
    ordered = sorted([gone.alert, fault, fall_old, fall_new], key=alert_order)
    assert ordered[:2] == [fall_new, fall_old]
    assert ordered[-1] == gone.alert


METRICS = """# HELP harstream_predictions_total p
# TYPE harstream_predictions_total counter
harstream_predictions_total{{model="har"}} {n}
# HELP harstream_end_to_end_latency_seconds l
# TYPE harstream_end_to_end_latency_seconds histogram
harstream_end_to_end_latency_seconds_bucket{{le="0.1"}} {a}
harstream_end_to_end_latency_seconds_bucket{{le="0.5"}} {b}
harstream_end_to_end_latency_seconds_bucket{{le="+Inf"}} {b}
harstream_end_to_end_latency_seconds_sum 1.0
harstream_end_to_end_latency_seconds_count {b}
# HELP harstream_inference_model_version v
# TYPE harstream_inference_model_version gauge
harstream_inference_model_version{{model="har"}} 3
# HELP harstream_dead_letters_total d
# TYPE harstream_dead_letters_total counter
harstream_dead_letters_total{{error_type="SchemaError"}} 2
"""


def test_pipeline_figures_rates_and_latency_between_scrapes() -> None:
    first = parse(METRICS.format(n=100, a=50, b=100), at=10.0)
    second = parse(METRICS.format(n=300, a=50, b=200), at=20.0)
    start = summarize("inference", first, None)
    assert start["throughput"]["predictions"] == {"total": 100.0, "per_s": None}
    figures = summarize("inference", second, first)
    assert figures["throughput"]["predictions"]["per_s"] == pytest.approx(20.0)
    # The 100 observations since the first scrape all lie in (0.1, 0.5]: p50 at 0.3 s.
    assert figures["latency"]["p50_s"] == pytest.approx(0.3)
    assert figures["latency"]["window"] == "since the last refresh"
    assert figures["dead_letters"] == 2.0
    assert figures["model_versions"] == {"har": 3}
    with pytest.raises(ValueError):
        parse("this is { not prometheus", at=0.0)


def test_quantile_of_an_empty_histogram_is_none() -> None:
    assert _quantile([], 0.5) is None
    assert _quantile([(0.1, 0.0), (float("inf"), 0.0)], 0.5) is None
    assert _quantile([(0.1, 0.0), (float("inf"), 4.0)], 0.5) == 0.1


def test_raw_window_body_and_total_acceleration() -> None:
    rate = 50.0
    n = 250
    packets = []
    for seq in range(4):  # 20 s at rest (1 g on z), a 3 g spike at t = 12 s
        samples = np.zeros((n, 6))
        samples[:, 2] = 1.0
        t0 = 100.0 + seq * n / rate
        if t0 <= 112.0 < t0 + n / rate:
            samples[int((112.0 - t0) * rate), 2] = 3.0
        packets.append(RawPacket("dev", seq, t0, rate, samples, received_at=t0))
    doc = assemble([*packets, packets[1]], 105.0, 118.0)  # a duplicate is ignored
    assert doc is not None
    assert doc["t"][0] >= 105.0 and doc["t"][-1] <= 118.0
    assert max(doc["total_acc"]) == pytest.approx(3.0)
    assert max(doc["body_acc"]) == pytest.approx(2.0, abs=0.05)  # gravity removed
    assert np.median(doc["body_acc"]) < 0.01
    assert assemble(packets, 500.0, 510.0) is None
    assert assemble([], 0.0, 1.0) is None


def test_raw_window_of_a_fall_starts_before_the_impact() -> None:
    fall = open_alert(
        "dev", AlertType.FALL_SUSPECTED, "x", 1.0, {"impact_time": 200.0, "event_time": 240.0}
    ).alert
    assert window_of(fall, 40.0) == (190.0, 230.0)
    other = open_alert("dev", AlertType.INACTIVITY, "x", 1.0, {"event_time": 500.0}).alert
    assert window_of(other, 40.0) == (460.0, 500.0)


def test_settings_metrics_urls() -> None:
    assert parse_metrics_urls(" a=http://x/metrics, b=https://y/m ,") == {
        "a": "http://x/metrics",
        "b": "https://y/m",
    }
    for bad in ("a", "a=ftp://x", "=http://x"):
        with pytest.raises(ValidationError):
            ConsoleSettings(metrics_urls=bad)


def test_the_raw_window_takes_a_devices_packets_from_single_records_and_bundles() -> None:
    def packet(device: str, seq: int) -> RawPacket:
        return RawPacket(device, seq, 100.0 + seq, 50.0, np.zeros((50, 6)), received_at=101.0)

    single = packet("dev", 0).to_bytes()
    bundle = encode_bundle([packet("other", 0).to_bytes(), packet("dev", 1).to_bytes()], 1)
    assert [p.seq for p in _packets_of(single, "dev")] == [0]
    assert [(p.device_id, p.seq) for p in _packets_of(bundle, "dev")] == [("dev", 1)]
    assert _packets_of(b"HB\x01garbage", "dev") == []  # left out, as preprocess dead-letters it
