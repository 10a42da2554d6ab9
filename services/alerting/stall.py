"""The pipeline-stall rule (pure: no I/O, clocks passed in).

Devices prove they are alive by sending (the raw topic); predictions prove the pipeline
turns their data into activity. Per partition this worker owns, it keeps the newest ingest
time of any device packet (``traffic``) and the newest ingest time a prediction covers
(``predicted``: :attr:`Prediction.ingested_at`, the acceptance time of the window's last
packet). Their difference is how far behind the pipeline is, in ingest time: ~1.3-3 s when
healthy (one window per 1.28 s, plus latency). When it exceeds ``pipeline_stall_s`` on any
judged partition, ONE ``PIPELINE_STALLED`` alert opens for the whole pipeline (device id
:data:`~shared.messages.PIPELINE_SCOPE`); it resolves itself once every owned partition is
judged healthy again. Devices that keep sending never get DEVICE_OFFLINE meanwhile.

A partition is judged only while the caller has read both topics of it up to their ends:
a worker catching up after a restart reads raw and predictions at different paces.

A partition whose devices all stopped sending has no traffic newer than its predictions:
its devices go offline one by one (their own alerts), the pipeline is not blamed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from services.alerting.lifecycle import (
    AlertTransition,
    new_alert_id,
    open_alert,
    resolve,
)
from services.alerting.rules import AlertRules
from shared.messages import PIPELINE_SCOPE, Alert, AlertState, AlertType

_NEVER = float("-inf")


class PipelineMonitor:
    """Judges PIPELINE_STALLED over the partitions a worker owns."""

    def __init__(self, rules: AlertRules, id_factory: Callable[[], str] = new_alert_id) -> None:
        self.rules = rules
        self._id_factory = id_factory
        self._traffic: dict[int, float] = {}
        self._predicted: dict[int, float] = {}
        self.active: Alert | None = None
        self._resolved_wall = _NEVER

    def assigned(self, partitions: Iterable[int], now_wall: float) -> None:
        """Start watching ``partitions``. Until a prediction is read, the pipeline counts as
        having covered everything ingested before now (so a stall that began while this
        worker was down is still found: fresh traffic without predictions)."""
        for p in partitions:
            self._predicted.setdefault(p, now_wall)

    def revoked(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self._traffic.pop(p, None)
            self._predicted.pop(p, None)

    def load(self, alert: Alert) -> None:
        """Adopt the stored open/acknowledged pipeline alert (after a restart)."""
        if alert.state is not AlertState.RESOLVED and self.active is None:
            self.active = alert

    def traffic(self, partition: int, at_wall: float) -> None:
        """A device packet on ``partition``, accepted by ingest at ``at_wall``."""
        if at_wall > self._traffic.get(partition, _NEVER):
            self._traffic[partition] = at_wall

    def predicted(self, partition: int, ingested_at: float) -> None:
        """A prediction on ``partition`` covering data ingested up to ``ingested_at``."""
        if ingested_at > self._predicted.get(partition, _NEVER):
            self._predicted[partition] = ingested_at

    def delay_s(self, partition: int) -> float:
        """Ingest-time lag of predictions behind device traffic on ``partition`` (0 if none)."""
        traffic = self._traffic.get(partition)
        predicted = self._predicted.get(partition)
        if traffic is None or predicted is None:
            return 0.0
        return max(0.0, traffic - predicted)

    def judge(self, now_wall: float, caught_up: Iterable[int]) -> list[AlertTransition]:
        """Open or resolve the pipeline alert from the ``caught_up`` partitions (those read
        to their ends on both topics); the others are not judged this time."""
        judged = sorted(set(caught_up) & set(self._predicted))
        delays = {p: self.delay_s(p) for p in judged}
        stalled = {p: d for p, d in delays.items() if d >= self.rules.pipeline_stall_s}
        if stalled:
            if self.active is not None:
                return []
            if now_wall - self._resolved_wall < self.rules.cooldown_s:
                return []
            worst = max(stalled.values())
            step = open_alert(
                PIPELINE_SCOPE,
                AlertType.PIPELINE_STALLED,
                f"no predictions for data of the last {worst:.0f} s while devices keep "
                f"sending (partitions {', '.join(map(str, stalled))})",
                now_wall,
                {
                    "partitions": sorted(stalled),
                    "delay_s": {str(p): round(d, 2) for p, d in stalled.items()},
                },
                self._id_factory,
            )
            self.active = step.alert
            return [step]
        all_judged = set(judged) == set(self._predicted)
        if self.active is None or not all_judged:
            return []
        alert, self.active = self.active, None
        self._resolved_wall = now_wall
        return [resolve(alert, "auto", now_wall, "predictions flowing again")]

    def apply(self, step: AlertTransition) -> None:
        """Adopt an acknowledge/resolve step made through the API."""
        if self.active is None or step.alert.alert_id != self.active.alert_id:
            return
        if step.alert.state is AlertState.RESOLVED:
            self.active = None
            self._resolved_wall = step.alert.updated_at
        else:
            self.active = step.alert
