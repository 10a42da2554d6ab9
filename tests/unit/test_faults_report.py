"""The reliability report: one row per scenario, the seed, what failed and why; and the
decoders that turn topic records and webhook bodies into counted records."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from services.faults import counting as c
from services.faults.records import alert_record, delivery_record, raw_records, window_record
from services.faults.report import RunInfo, render
from services.faults.schedule import short_schedule
from shared.errors import SchemaError
from shared.features import motion_features
from shared.messages import RawPacket, WindowMessage
from shared.messages.codec import encode_json
from shared.messages.raw import encode_bundle
from tests.unit.faults_helpers import clean, fault

INFO = RunInfo(
    seed=1234,
    command="harstream faults --seed 1234 --report",
    started="2026-01-01 00:00 UTC",
    wall_s=600.0,
    setup=["Alerting: DEVICE_OFFLINE after 10 s"],
)


def test_one_row_per_scenario_with_counts_and_the_seed() -> None:
    from services.faults.schedule import FaultKind

    ok = c.count(clean([fault(20, FaultKind.KILL, "inference")]))
    bad_obs = clean([fault(45, FaultKind.KILL, "alerting")], scenario="broken")
    bad_obs.alerts = [a for a in bad_obs.alerts if a.type != c.FALL]
    bad_obs.deliveries = [d for d in bad_obs.deliveries if d.type != c.FALL]
    bad = c.count(bad_obs)
    text = render([ok, bad], short_schedule(1), INFO)
    assert "seed **1234**" in text
    assert "1 of 2 scenarios pass" in text
    rows = [line for line in text.splitlines() if line.startswith("| test") or "| broken" in line]
    assert len(rows) == 2
    assert rows[0].endswith("| pass |")
    assert "| 250 / 0 | 192 / 192 | 0 | 0 | 1 / 1 | 1 / 1 | 0 | 0 | 2 / 2 (+0) |" in rows[0]
    assert rows[1].endswith("| **FAIL** |")
    assert "| 1 / 0 |" in rows[1]  # the fall: expected 1, raised 0
    assert "FAILED: fall raised exactly once: 0 of 1 raised; missed on fall-1" in text
    assert "known: issue 8 item 1" in text
    assert "- Alerting: DEVICE_OFFLINE after 10 s" in text


def test_recovery_that_never_came_reads_never() -> None:
    from services.faults.schedule import FaultKind

    obs = clean([fault(60, FaultKind.PAUSE, "broker", 30)])
    obs.predictions = [p for p in obs.predictions if p.ingested_at < obs.started_at + 60]
    obs.expected_windows = {p.window_id for p in obs.predictions}
    text = render([c.count(obs)], [], INFO)
    assert "| never |" in text


def test_decoders_read_what_the_services_write() -> None:
    packet = RawPacket("d", 7, 1.7e9, 50.0, np.ones((50, 6)), received_at=1.7e9 + 1)
    assert raw_records(packet.to_bytes()) == [("d", 7, 1.7e9 + 1)]
    other = replace(packet, device_id="e", seq=8)
    bundle = encode_bundle([packet.to_bytes(), other.to_bytes()], partition=1)
    assert raw_records(bundle) == [("d", 7, 1.7e9 + 1), ("e", 8, 1.7e9 + 1)]
    data = np.linspace(0, 1, 128 * 9, dtype=np.float32).reshape(128, 9)
    window = WindowMessage(
        device_id="d",
        start_index=64,
        start_time=1.7e9,
        end_time=1.7e9 + 2.56,
        fingerprint="f" * 16,
        ingested_at=1.7e9,
        emitted_at=1.7e9,
        features=motion_features(data),
        data=data,
    )
    record = window_record(window.to_bytes())
    assert (record.window_id, record.device_id) == ("d:64", "d")
    other = WindowMessage(**{**window.__dict__, "data": data * 2})
    assert window_record(other.to_bytes()).digest != record.digest
    body = {
        "alert_id": "a1",
        "device_id": "*pipeline",
        "type": "SOMETHING_NEW",  # a type this checkout may not know yet still counts
        "state": "open",
        "severity": "critical",
        "reason": "r",
        "opened_at": 1.0,
        "updated_at": 2.0,
    }
    alert = alert_record(encode_json("harstream.alert", 1, body))
    assert (alert.type, alert.event) == ("SOMETHING_NEW", "opened")
    delivery = delivery_record(
        5.0, "a1:opened", json.dumps({"event": "opened", "alert": body}).encode()
    )
    assert delivery.idempotency_key == "a1:opened"
    assert (delivery.alert_id, delivery.event, delivery.opened_at) == ("a1", "opened", 1.0)


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"event": "opened"}', b'{"alert": {}}'])
def test_a_malformed_webhook_body_is_a_schema_error(body: bytes) -> None:
    with pytest.raises(SchemaError):
        delivery_record(1.0, "k", body)
