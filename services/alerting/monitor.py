"""Per-device alert state machines (pure: no I/O, clocks passed in).

Two clocks:

* event time: the device-clock ``end_time`` of predictions. Falls, prolonged lying,
  inactivity and sensor faults are judged on it, so a replay at 10× speed behaves like the
  real day and a consumer lagging behind does not stretch or shrink a fall's 30 s.
* wall time (``now_wall``, Unix seconds): DEVICE_OFFLINE (no device traffic for N seconds)
  fires from :meth:`DeviceMonitor.tick` when nothing arrives, and every alert's ``opened_at``
  / ``updated_at`` is the wall time at which harstream decided (what the care team sees).

Device liveness comes from the device's own traffic (:meth:`DeviceMonitor.traffic`, fed from
the raw topic with ingest's acceptance time), never from predictions: when inference stalls,
devices that keep sending are not offline (the stall is one pipeline alert,
:mod:`services.alerting.stall`).

Everything a rule waits on (smoothing windows, a pending impact and its deadlines, lying and
stillness start times, fault runs, cooldowns, last traffic) is in :meth:`DeviceMonitor.snapshot`,
which the service stores with the alerts before it commits offsets, and which
:meth:`DeviceMonitor.restore` takes back after a restart or a rebalance.

Choices worth knowing:

* FALL_SUSPECTED never auto-resolves: someone fell hard enough to lie still for 30 s, so a
  human checks and resolves it even if the person got up afterwards. Acknowledging keeps it
  open (acknowledged) until resolved.
* PROLONGED_LYING, INACTIVITY, SENSOR_FAULT and DEVICE_OFFLINE resolve themselves when the
  condition clears (lying ended, movement, healthy windows, data again), acknowledged or not.
  A PROLONGED_LYING alert opened in day hours stays open into the night until lying ends.
* At most one open-or-acknowledged alert per (device, type); after one resolves, the same
  type waits ``cooldown_s`` (event time for event rules, wall time for offline) before it
  may open again.
* Windows of a flat-lined sensor carry no information about the person: they feed the
  sensor-fault rule only, never stillness, lying or falls.
* Duplicates (same window again, at-least-once upstream) and windows older than the newest
  seen are ignored (counted in ``duplicates_ignored``).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.alerting.lifecycle import (
    EVENT_TIME_TYPES,
    AlertEvent,
    AlertTransition,
    acknowledge,
    new_alert_id,
    open_alert,
    resolve,
)
from services.alerting.liveness import PartitionClock
from services.alerting.rules import (
    LAYING,
    UPRIGHT_ACTIVITIES,
    AlertRules,
    check_prediction,
    smoothed_activity,
)
from shared.errors import HarstreamError
from shared.messages import Alert, AlertState, AlertType, Prediction

_NEVER = float("-inf")
#: Layout of :meth:`DeviceMonitor.snapshot`; a stored snapshot of another layout is not used.
SNAPSHOT_VERSION = 1


class SnapshotError(HarstreamError):
    """A stored monitor snapshot cannot be used (damaged, or of another layout)."""


@dataclass
class _FallCandidate:
    """An impact waiting for lying/stillness, then for the confirmation time."""

    impact_g: float
    #: end_time of the impact window: windows starting before it still contain the impact.
    impact_window_end: float
    #: Event time by which lying/stillness must (re)start, while ``lying_since`` is None.
    deadline: float
    lying_since: float | None = None
    #: Probabilities of the windows after the impact: the pre-fall walking must not count
    #: as "got up again".
    after: deque[tuple[float, ...]] = field(default_factory=deque)

    def to_dict(self) -> dict[str, Any]:
        return {
            "impact_g": self.impact_g,
            "impact_window_end": self.impact_window_end,
            "deadline": self.deadline,
            "lying_since": self.lying_since,
            "after": [list(p) for p in self.after],
        }

    @classmethod
    def from_dict(cls, body: Mapping[str, Any], smoothing_windows: int) -> _FallCandidate:
        return cls(
            impact_g=_number(body["impact_g"]),
            impact_window_end=_number(body["impact_window_end"]),
            deadline=_number(body["deadline"]),
            lying_since=_optional(body["lying_since"]),
            after=deque(_vectors(body["after"]), maxlen=smoothing_windows),
        )


class DeviceMonitor:
    """All rules for one device. ``observe`` per prediction, ``tick`` periodically."""

    def __init__(
        self,
        device_id: str,
        rules: AlertRules,
        id_factory: Callable[[], str] = new_alert_id,
    ) -> None:
        self.device_id = device_id
        self.rules = rules
        self._id_factory = id_factory
        self._probabilities: deque[tuple[float, ...]] = deque(maxlen=rules.smoothing_windows)
        self._energies: deque[float] = deque(maxlen=rules.smoothing_windows)
        #: Newest device-clock window end seen.
        self.last_end_time: float | None = None
        #: Wall time of the device's newest traffic (ingest accepted a packet).
        self.last_traffic_wall: float | None = None
        #: Open or acknowledged alerts by type.
        self.active: dict[AlertType, Alert] = {}
        self._resolved_event: dict[AlertType, float] = {}
        self._resolved_wall: dict[AlertType, float] = {}
        self._fall: _FallCandidate | None = None
        self._laying_since: float | None = None
        self._still_since: float | None = None
        self._fault_run = 0
        self._healthy_run = 0
        self._fault_kinds: set[str] = set()
        self.falls_cancelled = 0
        self.duplicates_ignored = 0
        self.smoothed: str | None = None

    # -- entry points -------------------------------------------------------------------

    def observe(self, prediction: Prediction, now_wall: float) -> list[AlertTransition]:
        """Judge one prediction; returns the alerts it opened or resolved.

        Raises :class:`~services.alerting.rules.PredictionRejectedError` for non-finite numbers.
        """
        check_prediction(prediction)
        t = prediction.end_time
        if self.last_end_time is not None and t <= self.last_end_time:
            self.duplicates_ignored += 1
            return []
        self.last_end_time = t
        out: list[AlertTransition] = []
        faults = self.rules.sensor_faults(prediction)
        self._sensor_fault(prediction, faults, now_wall, out)
        if "flatline" in faults:
            return out  # a stuck sensor says nothing about the person
        self._probabilities.append(prediction.probabilities)
        self._energies.append(prediction.features.movement_energy)
        self.smoothed = smoothed_activity(list(self._probabilities))
        self._fall_rule(prediction, now_wall, out)
        self._lying_rule(prediction, now_wall, out)
        self._inactivity_rule(prediction, now_wall, out)
        return out

    def traffic(self, at_wall: float, now_wall: float) -> list[AlertTransition]:
        """The device sent data that ingest accepted at ``at_wall``; resolves DEVICE_OFFLINE.

        Traffic at or before the newest already seen changes nothing (a replay after a
        restart re-reads what the stored snapshot already covers)."""
        if self.last_traffic_wall is not None and at_wall <= self.last_traffic_wall:
            return []
        self.last_traffic_wall = at_wall
        offline = self.active.get(AlertType.DEVICE_OFFLINE)
        if offline is None:
            return []
        silent_s = at_wall - float(offline.details.get("last_seen_at", offline.opened_at))
        return [
            self._resolve(
                AlertType.DEVICE_OFFLINE,
                "auto",
                now_wall,
                self.last_end_time,
                f"data again after {silent_s:.0f} s",
            )
        ]

    def tick(self, now_wall: float, clock: PartitionClock | None = None) -> list[AlertTransition]:
        """Wall-clock rules (DEVICE_OFFLINE), run even when no message arrives.

        With its partition's ``clock`` (:mod:`services.alerting.liveness`) silence counts only
        while the pipeline could take the device's data. Without one (or before its first
        heartbeat) silence is wall-clock time. Either way the caller runs this only once it
        has read the device's traffic up to now (else a consumer catching up after a restart
        would see every device as silent)."""
        if self.last_traffic_wall is None:
            return []
        silent_s = clock.silence_since(self.last_traffic_wall) if clock is not None else None
        if silent_s is None:
            silent_s = now_wall - self.last_traffic_wall
        if silent_s < self.rules.offline_after_s:
            return []
        opened = self._open(
            AlertType.DEVICE_OFFLINE,
            f"no data for {now_wall - self.last_traffic_wall:.0f} s",
            now_wall,
            None,
            {"last_seen_at": self.last_traffic_wall, "last_end_time": self.last_end_time},
        )
        return [opened] if opened else []

    def plan_acknowledge(self, alert: Alert, by: str, now_wall: float) -> AlertTransition | None:
        """The acknowledge step of ``alert`` (None if already acknowledged), not applied yet:
        the service stores it first, then calls :meth:`apply`."""
        current = self.active.get(alert.type)
        if current is not None and current.alert_id == alert.alert_id:
            alert = current
        return acknowledge(alert, by, now_wall)

    def plan_resolve(
        self, alert: Alert, by: str, now_wall: float, resolution: str
    ) -> AlertTransition:
        current = self.active.get(alert.type)
        if current is not None and current.alert_id == alert.alert_id:
            alert = current
        return resolve(alert, by, now_wall, resolution)

    def apply(self, step: AlertTransition) -> None:
        """Adopt a step planned with :meth:`plan_acknowledge` / :meth:`plan_resolve`."""
        alert = step.alert
        current = self.active.get(alert.type)
        if current is None or current.alert_id != alert.alert_id:
            return
        if step.event is AlertEvent.RESOLVED:
            del self.active[alert.type]
            self._resolved_event[alert.type] = (
                self.last_end_time if self.last_end_time is not None else _NEVER
            )
            self._resolved_wall[alert.type] = alert.updated_at
        else:
            self.active[alert.type] = alert

    def acknowledge(self, alert: Alert, by: str, now_wall: float) -> AlertTransition | None:
        step = self.plan_acknowledge(alert, by, now_wall)
        if step is not None:
            self.apply(step)
        return step

    def resolve(self, alert: Alert, by: str, now_wall: float, resolution: str) -> AlertTransition:
        step = self.plan_resolve(alert, by, now_wall, resolution)
        self.apply(step)
        return step

    def load(self, alert: Alert) -> None:
        """Adopt a stored open/acknowledged alert (after a restart or a rebalance)."""
        if alert.state is not AlertState.RESOLVED and alert.type not in self.active:
            self.active[alert.type] = alert

    # -- durable state ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything the rules wait on, as JSON-ready values (open alerts excluded: they are
        stored as alerts). Process-local counters are not part of it."""
        return {
            "v": SNAPSHOT_VERSION,
            "probabilities": [list(p) for p in self._probabilities],
            "energies": list(self._energies),
            "smoothed": self.smoothed,
            "last_end_time": self.last_end_time,
            "last_traffic_wall": self.last_traffic_wall,
            "resolved_event": {
                k.value: _finite_or_none(v) for k, v in self._resolved_event.items()
            },
            "resolved_wall": {k.value: _finite_or_none(v) for k, v in self._resolved_wall.items()},
            "fall": None if self._fall is None else self._fall.to_dict(),
            "laying_since": self._laying_since,
            "still_since": self._still_since,
            "fault_run": self._fault_run,
            "healthy_run": self._healthy_run,
            "fault_kinds": sorted(self._fault_kinds),
        }

    @classmethod
    def restore(
        cls,
        device_id: str,
        rules: AlertRules,
        snapshot: Mapping[str, Any],
        alerts: Iterable[Alert] = (),
        id_factory: Callable[[], str] = new_alert_id,
    ) -> DeviceMonitor:
        """The monitor a :meth:`snapshot` was taken of, with its stored open alerts.

        Raises :class:`SnapshotError` if the snapshot cannot be used."""
        monitor = cls(device_id, rules, id_factory)
        try:
            if snapshot.get("v") != SNAPSHOT_VERSION:
                raise SnapshotError(
                    f"snapshot layout {snapshot.get('v')!r} is not {SNAPSHOT_VERSION}"
                )
            monitor._probabilities.extend(_vectors(snapshot["probabilities"]))
            monitor._energies.extend(_number(e) for e in snapshot["energies"])
            smoothed = snapshot["smoothed"]
            monitor.smoothed = smoothed if isinstance(smoothed, str) else None
            monitor.last_end_time = _optional(snapshot["last_end_time"])
            monitor.last_traffic_wall = _optional(snapshot["last_traffic_wall"])
            monitor._resolved_event = _times(snapshot["resolved_event"])
            monitor._resolved_wall = _times(snapshot["resolved_wall"])
            fall = snapshot["fall"]
            monitor._fall = (
                None if fall is None else _FallCandidate.from_dict(fall, rules.smoothing_windows)
            )
            monitor._laying_since = _optional(snapshot["laying_since"])
            monitor._still_since = _optional(snapshot["still_since"])
            monitor._fault_run = int(snapshot["fault_run"])
            monitor._healthy_run = int(snapshot["healthy_run"])
            monitor._fault_kinds = {str(k) for k in snapshot["fault_kinds"]}
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"device {device_id}: unusable snapshot: {exc!r}") from exc
        for alert in alerts:
            monitor.load(alert)
        return monitor

    # -- rules --------------------------------------------------------------------------

    def _sensor_fault(
        self, p: Prediction, faults: list[str], now_wall: float, out: list[AlertTransition]
    ) -> None:
        rules = self.rules
        if faults:
            self._fault_run += 1
            self._healthy_run = 0
            self._fault_kinds.update(faults)
            if self._fault_run >= rules.fault_windows:
                f = p.features
                kinds = sorted(self._fault_kinds)
                opened = self._open(
                    AlertType.SENSOR_FAULT,
                    f"sensor fault ({', '.join(kinds)}) for {self._fault_run} windows",
                    now_wall,
                    p.end_time,
                    {
                        "faults": kinds,
                        "windows": self._fault_run,
                        "acc_std_g": f.acc_std_g,
                        "max_abs_acc_g": f.max_abs_acc_g,
                        "max_abs_gyro": f.max_abs_gyro,
                        "min_acc_g": f.min_acc_g,
                        "peak_acc_g": f.peak_acc_g,
                        **(
                            {} if f.gyro_std_rad_s is None else {"gyro_std_rad_s": f.gyro_std_rad_s}
                        ),
                    },
                )
                if opened:
                    out.append(opened)
            return
        self._healthy_run += 1
        self._fault_run = 0
        if self._healthy_run >= rules.fault_clear_windows:
            self._fault_kinds.clear()
            if AlertType.SENSOR_FAULT in self.active:
                out.append(
                    self._resolve(
                        AlertType.SENSOR_FAULT,
                        "auto",
                        now_wall,
                        p.end_time,
                        f"{self._healthy_run} healthy windows",
                    )
                )

    def _fall_rule(self, p: Prediction, now_wall: float, out: list[AlertTransition]) -> None:
        rules = self.rules
        f = p.features
        t = p.end_time
        impact = f.peak_acc_g >= rules.fall_impact_g
        fall = self._fall
        if fall is not None and p.start_time < fall.impact_window_end:
            # Still overlaps the impact window: its energy and label are the impact's.
            fall.impact_g = max(fall.impact_g, f.peak_acc_g)
            return
        if impact:
            # A (new) impact starts the wait for lying; a second one restarts it.
            self._fall = _FallCandidate(
                impact_g=f.peak_acc_g if fall is None else max(fall.impact_g, f.peak_acc_g),
                impact_window_end=t,
                deadline=t + rules.fall_followup_s,
                after=deque(maxlen=rules.smoothing_windows),
            )
            return
        if fall is None:
            return
        fall.after.append(p.probabilities)
        after_activity = smoothed_activity(list(fall.after))
        settled = t > fall.impact_window_end + rules.fall_settle_s
        up = (settled and f.movement_energy > rules.getup_energy_g2) or (
            len(fall.after) == rules.smoothing_windows and after_activity in UPRIGHT_ACTIVITIES
        )
        lying_or_still = after_activity == LAYING or rules.is_still(f.movement_energy)
        if up:
            if fall.lying_since is not None:
                self.falls_cancelled += 1  # was lying after an impact, then got up
            self._fall = None
            return
        if lying_or_still:
            if fall.lying_since is None:
                fall.lying_since = p.start_time
            lying_s = t - fall.lying_since
            if lying_s >= rules.fall_confirm_s:
                self._fall = None
                opened = self._open(
                    AlertType.FALL_SUSPECTED,
                    f"impact {fall.impact_g:.1f} g, then lying/still {lying_s:.0f} s",
                    now_wall,
                    t,
                    {
                        "impact_g": round(fall.impact_g, 3),
                        "impact_time": fall.impact_window_end,
                        "lying_s": round(lying_s, 2),
                        "activity": after_activity,
                        "movement_energy_g2": f.movement_energy,
                    },
                )
                if opened:
                    out.append(opened)
            return
        # Neither lying/still nor up (e.g. sitting and shifting): the confirmation wait needs
        # *continued* lying, so it restarts, and lying must resume within the follow-up time.
        if fall.lying_since is not None:
            fall.lying_since = None
            fall.deadline = t + rules.fall_followup_s
        elif t > fall.deadline:
            self._fall = None  # an impact without lying afterwards: a stomp, a jump, stairs

    def _lying_rule(self, p: Prediction, now_wall: float, out: list[AlertTransition]) -> None:
        t = p.end_time
        if self.smoothed != LAYING:
            self._laying_since = None
            if AlertType.PROLONGED_LYING in self.active:
                out.append(
                    self._resolve(
                        AlertType.PROLONGED_LYING, "auto", now_wall, t, f"now {self.smoothed}"
                    )
                )
            return
        if self._laying_since is None:
            self._laying_since = p.start_time
        lying_s = t - self._laying_since
        if lying_s >= self.rules.lying_max_s and self.rules.in_day_hours(t):
            opened = self._open(
                AlertType.PROLONGED_LYING,
                f"lying for {_duration(lying_s)} during day hours",
                now_wall,
                t,
                {"lying_s": round(lying_s, 2), "lying_since": self._laying_since},
            )
            if opened:
                out.append(opened)

    def _inactivity_rule(self, p: Prediction, now_wall: float, out: list[AlertTransition]) -> None:
        t = p.end_time
        # Median of the smoothing window: one twitch neither breaks nor makes stillness.
        energy = statistics.median(self._energies)
        if not self.rules.is_still(energy):
            self._still_since = None
            if AlertType.INACTIVITY in self.active:
                out.append(
                    self._resolve(
                        AlertType.INACTIVITY,
                        "auto",
                        now_wall,
                        t,
                        f"moving again ({energy:.4f} g²)",
                    )
                )
            return
        if self._still_since is None:
            self._still_since = p.start_time
        still_s = t - self._still_since
        if still_s >= self.rules.inactivity_s:
            opened = self._open(
                AlertType.INACTIVITY,
                f"no movement for {_duration(still_s)}",
                now_wall,
                t,
                {
                    "still_s": round(still_s, 2),
                    "still_since": self._still_since,
                    "movement_energy_g2": energy,
                },
            )
            if opened:
                out.append(opened)

    # -- lifecycle helpers --------------------------------------------------------------

    def _open(
        self,
        kind: AlertType,
        reason: str,
        now_wall: float,
        event_time: float | None,
        details: dict[str, object],
    ) -> AlertTransition | None:
        """Open ``kind`` unless one is active or it resolved less than cooldown_s ago."""
        if kind in self.active:
            return None
        if kind in EVENT_TIME_TYPES:
            since = (event_time or 0.0) - self._resolved_event.get(kind, _NEVER)
        else:
            since = now_wall - self._resolved_wall.get(kind, _NEVER)
        if since < self.rules.cooldown_s:
            return None
        step = open_alert(
            self.device_id,
            kind,
            reason,
            now_wall,
            {**details, "event_time": event_time},
            self._id_factory,
        )
        self.active[kind] = step.alert
        return step

    def _resolve(
        self,
        kind: AlertType,
        by: str,
        now_wall: float,
        event_time: float | None,
        resolution: str,
    ) -> AlertTransition:
        alert = self.active.pop(kind)
        self._resolved_event[kind] = event_time if event_time is not None else _NEVER
        self._resolved_wall[kind] = now_wall
        return resolve(alert, by, now_wall, resolution)


class FleetMonitor:
    """The :class:`DeviceMonitor` of every device this worker sees.

    It also tracks which devices' snapshots changed since they were last stored
    (:attr:`changed`), so the service stores each device once per checkpoint however many of
    its records the checkpoint covers, and none whose records changed nothing (duplicates,
    replayed traffic)."""

    def __init__(self, rules: AlertRules, id_factory: Callable[[], str] = new_alert_id) -> None:
        self.rules = rules
        self._id_factory = id_factory
        self.devices: dict[str, DeviceMonitor] = {}
        self._cancelled = 0
        self._duplicates = 0
        self._changed: set[str] = set()

    def monitor(self, device_id: str) -> DeviceMonitor:
        found = self.devices.get(device_id)
        if found is None:
            found = self.devices[device_id] = DeviceMonitor(device_id, self.rules, self._id_factory)
        return found

    def observe(self, prediction: Prediction, now_wall: float) -> list[AlertTransition]:
        device = self.monitor(prediction.device_id)
        duplicates, cancelled = device.duplicates_ignored, device.falls_cancelled
        steps = device.observe(prediction, now_wall)
        if device.duplicates_ignored != duplicates:
            self._duplicates += device.duplicates_ignored - duplicates
        else:
            self._changed.add(device.device_id)
        self._cancelled += device.falls_cancelled - cancelled
        return steps

    def traffic(self, device_id: str, at_wall: float, now_wall: float) -> list[AlertTransition]:
        device = self.monitor(device_id)
        before = device.last_traffic_wall
        steps = device.traffic(at_wall, now_wall)
        if device.last_traffic_wall != before:
            self._changed.add(device_id)
        return steps

    def tick(
        self,
        now_wall: float,
        device_ids: Iterable[str] | None = None,
        clock: PartitionClock | None = None,
    ) -> list[AlertTransition]:
        """Wall-clock rules of ``device_ids`` (default: every device), all of one partition
        with its ``clock`` (see :meth:`DeviceMonitor.tick`)."""
        out: list[AlertTransition] = []
        devices = (
            self.devices.values()
            if device_ids is None
            else [d for i in device_ids if (d := self.devices.get(i)) is not None]
        )
        for device in devices:
            steps = device.tick(now_wall, clock)
            if steps:
                out.extend(steps)
                self._changed.add(device.device_id)
        return out

    def take_duplicates(self) -> int:
        """Predictions ignored as duplicates since the last call, for a counter metric."""
        new, self._duplicates = self._duplicates, 0
        return new

    def snapshots(self, device_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """:meth:`DeviceMonitor.snapshot` of each tracked device among ``device_ids``."""
        return {i: d.snapshot() for i in device_ids if (d := self.devices.get(i)) is not None}

    @property
    def changed(self) -> frozenset[str]:
        """Devices whose snapshot may differ from the one last stored (see :meth:`stored`)."""
        return frozenset(self._changed)

    def stored(self, device_ids: Iterable[str]) -> None:
        """The snapshots of ``device_ids`` (taken since their last change) are stored."""
        self._changed.difference_update(device_ids)

    def restore(
        self, device_id: str, snapshot: Mapping[str, Any], alerts: Sequence[Alert] = ()
    ) -> None:
        """Track ``device_id`` again from its stored snapshot and open alerts (replacing what
        this worker had). Raises :class:`SnapshotError`; the device is then tracked from
        its alerts alone."""
        try:
            device = DeviceMonitor.restore(
                device_id, self.rules, snapshot, alerts, self._id_factory
            )
        except SnapshotError:
            fresh = self.devices[device_id] = DeviceMonitor(device_id, self.rules, self._id_factory)
            for alert in alerts:
                fresh.load(alert)
            raise
        self.devices[device_id] = device
        self._changed.discard(device_id)  # what is stored

    def plan_acknowledge(self, alert: Alert, by: str, now_wall: float) -> AlertTransition | None:
        """The acknowledge step of a stored alert (None if it already was), not applied.
        Raises :class:`~services.alerting.lifecycle.InvalidTransitionError` if resolved."""
        device = self.devices.get(alert.device_id)
        if device is None:
            return acknowledge(alert, by, now_wall)
        return device.plan_acknowledge(alert, by, now_wall)

    def plan_resolve(self, alert: Alert, by: str, now_wall: float) -> AlertTransition:
        """The manual resolve step of a stored alert, not applied. Raises
        :class:`~services.alerting.lifecycle.InvalidTransitionError` if already resolved."""
        device = self.devices.get(alert.device_id)
        if device is None:
            return resolve(alert, by, now_wall, f"resolved by {by}")
        return device.plan_resolve(alert, by, now_wall, f"resolved by {by}")

    def apply(self, step: AlertTransition) -> None:
        device = self.devices.get(step.alert.device_id)
        if device is not None:
            device.apply(step)
            self._changed.add(device.device_id)  # a resolve starts a cooldown

    def forget(self, device_ids: Iterable[str]) -> None:
        """Drop devices another worker now owns (partitions revoked); their alerts stay stored."""
        for device_id in device_ids:
            self.devices.pop(device_id, None)
            self._changed.discard(device_id)

    def take_falls_cancelled(self) -> int:
        """Falls cancelled (person got up) since the last call, for a counter metric."""
        new, self._cancelled = self._cancelled, 0
        return new

    @property
    def devices_tracked(self) -> int:
        """Devices whose traffic or predictions this worker has seen (now or before a restart),
        not those only known from stored alerts."""
        return sum(
            1
            for d in self.devices.values()
            if d.last_traffic_wall is not None or d.last_end_time is not None
        )

    def active_alerts(self) -> list[Alert]:
        return [a for d in self.devices.values() for a in d.active.values()]


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _optional(value: Any) -> float | None:
    return None if value is None else _number(value)


def _finite_or_none(value: float) -> float | None:
    """JSON has no infinities: "never" (-inf) is stored as null."""
    return value if math.isfinite(value) else None


def _times(body: Mapping[str, Any]) -> dict[AlertType, float]:
    return {AlertType(k): _NEVER if v is None else _number(v) for k, v in body.items()}


def _vectors(rows: Iterable[Any]) -> list[tuple[float, ...]]:
    return [tuple(_number(x) for x in row) for row in rows]
