"""The pipeline-stall rule: one alert for the pipeline, judged in ingest time."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from services.alerting.lifecycle import AlertEvent, acknowledge
from services.alerting.rules import AlertRules
from services.alerting.stall import PipelineMonitor
from shared.messages import PIPELINE_SCOPE, AlertType, Severity


def _ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"p{next(counter)}"


def _monitor(**rules: float) -> PipelineMonitor:
    m = PipelineMonitor(AlertRules(pipeline_stall_s=60.0, cooldown_s=0.0, **rules), _ids())
    m.assigned([0, 1, 2, 3], now_wall=0.0)
    return m


def _healthy_second(m: PipelineMonitor, t: float, partitions: range = range(4)) -> None:
    for p in partitions:
        m.traffic(p, t)
        m.predicted(p, t - 2.0)  # a window's last packet, ~2 s behind the newest packet


def test_a_healthy_pipeline_never_alerts() -> None:
    m = _monitor()
    for t in range(1, 600):
        _healthy_second(m, float(t))
        assert m.judge(float(t), range(4)) == []
    assert m.delay_s(0) == 2.0


def test_one_alert_for_a_stall_on_every_partition_and_it_resolves_itself() -> None:
    m = _monitor()
    for t in range(1, 100):
        _healthy_second(m, float(t))
        m.judge(float(t), range(4))
    opened = []
    for t in range(100, 200):  # model server paused: traffic goes on, predictions stop
        for p in range(4):
            m.traffic(p, float(t))
        opened += m.judge(float(t), range(4))
    assert [(s.alert.type, s.event) for s in opened] == [
        (AlertType.PIPELINE_STALLED, AlertEvent.OPENED)
    ]
    alert = opened[0].alert
    assert alert.device_id == PIPELINE_SCOPE
    assert alert.severity is Severity.CRITICAL
    assert alert.details["partitions"] == [0, 1, 2, 3]
    # The last prediction covered data ingested at 97 s: 60 s of unpredicted traffic at 157 s.
    assert alert.opened_at == 157.0
    _healthy_second(m, 200.0)
    (resolved,) = m.judge(200.0, range(4))
    assert resolved.event is AlertEvent.RESOLVED
    assert resolved.alert.alert_id == alert.alert_id


def test_partitions_not_read_to_the_end_are_not_judged() -> None:
    """A worker catching up reads raw faster than predictions: that is not a stall."""
    m = _monitor()
    m.traffic(0, 500.0)
    m.predicted(0, 10.0)
    assert m.judge(500.0, []) == []
    assert m.judge(500.0, [1, 2, 3]) == []
    assert [s.event for s in m.judge(500.0, [0])] == [AlertEvent.OPENED]


def test_it_resolves_only_once_every_partition_is_judged_healthy() -> None:
    m = _monitor()
    m.traffic(0, 100.0)
    assert m.judge(100.0, range(4))
    _healthy_second(m, 101.0)
    assert m.judge(101.0, [0, 1, 2]) == []  # partition 3 not read to its end yet
    assert [s.event for s in m.judge(101.0, range(4))] == [AlertEvent.RESOLVED]


def test_devices_that_stop_sending_do_not_blame_the_pipeline() -> None:
    m = _monitor()
    _healthy_second(m, 50.0)
    assert m.judge(1000.0, range(4)) == []  # silence everywhere: devices offline, not a stall


def test_a_stall_that_began_before_a_restart_is_still_found() -> None:
    """No prediction at all since the worker started: traffic beyond the stall time alerts."""
    m = PipelineMonitor(AlertRules(pipeline_stall_s=60.0), _ids())
    m.assigned([0], now_wall=1000.0)
    m.traffic(0, 990.0)  # replayed traffic from before the start: not held against it
    assert m.judge(1000.0, [0]) == []
    m.traffic(0, 1059.0)
    assert m.judge(1059.0, [0]) == []
    m.traffic(0, 1060.0)
    assert [s.alert.type for s in m.judge(1060.0, [0])] == [AlertType.PIPELINE_STALLED]


def test_a_stored_alert_is_adopted_and_an_api_resolve_applied() -> None:
    m = _monitor()
    m.traffic(1, 100.0)
    (opened,) = m.judge(100.0, range(4))
    restarted = _monitor()
    restarted.load(opened.alert)
    restarted.traffic(1, 200.0)
    assert restarted.judge(200.0, range(4)) == []  # already open: not twice
    ack = acknowledge(opened.alert, "oncall", 201.0)
    assert ack is not None
    restarted.apply(ack)
    assert restarted.active == ack.alert


def test_revoked_partitions_are_forgotten() -> None:
    m = _monitor()
    m.traffic(2, 500.0)
    m.revoked([2])
    assert m.delay_s(2) == 0.0
    assert m.judge(500.0, range(4)) == []
