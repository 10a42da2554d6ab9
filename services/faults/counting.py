"""Counting a fault-injection run against what a faultless pipeline does (pure).

Every figure of the reliability report comes from :func:`count`, from records read off the
topics after the run and the suite's own webhook receiver:

* packets: every packet ingest accepted (202) must be on the raw topic; more records there
  are allowed (a packet answered 503 may still be written, then sent again: at-least-once);
* windows: the ids a faultless pipeline makes from those packets (same streaming core) must
  all be predicted; duplicates are allowed (at-least-once, deterministic ids) but two
  records with one id must carry the same samples, and no window may be made that a
  faultless pipeline would not make (a window off the device's grid means lost state);
* alerts: each fall device raises FALL_SUSPECTED exactly once; each silent device raises
  DEVICE_OFFLINE exactly once after it went silent; no device gets DEVICE_OFFLINE while it
  is still sending (a device retrying 503s is sending); pipeline alerts (PIPELINE_STALLED)
  at most one per fault that stalls the flow;
* notifications: every alert event reaches the webhook, under ``<alert_id>:<event>``; the
  same key twice is allowed (the receiver drops it), one event under two keys or a second
  alert for one incident is not;
* recovery: from the end of each fault to the first prediction of a packet accepted after
  it (data flows end to end again), or to what the controller measured (alerting consuming
  again, the webhook receiving again).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from services.faults.devices import Role
from services.faults.records import AlertRecord, DeliveryRecord, FaultRecord, Observations
from services.faults.schedule import Fault, FaultKind

FALL = "FALL_SUSPECTED"
OFFLINE = "DEVICE_OFFLINE"
PIPELINE = "PIPELINE_STALLED"
#: A fall is judged within ~45 s after its impact: an alerting fault in that span can lose it.
FALL_SPAN_S = 45.0


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str
    #: The issue 8 item this failure matches, when the run shows the item's circumstances.
    known_issue: str | None = None


@dataclass(frozen=True)
class Recovery:
    label: str
    #: Seconds from the end of the fault to recovery; None: never within the run.
    seconds: float | None
    how: str
    #: The fault record's note and error, if any.
    note: str = ""


@dataclass
class ScenarioResult:
    scenario: str
    seed: int
    wall_s: float
    faults: list[str]
    devices: int
    packets_accepted: int
    packets_missing: int
    raw_records: int
    windows_expected: int
    windows_predicted: int
    windows_lost: int
    windows_not_made: int
    duplicate_predictions: int
    duplicate_windows: int
    conflicting_windows: int
    unexpected_windows: int
    falls_expected: int
    falls_raised: int
    false_falls: int
    offline_expected: int
    offline_raised: int
    false_offline: int
    false_offline_devices: int
    pipeline_alerts: int
    alert_events: int
    notified_events: int
    notifications: int
    repeated_keys: int
    dead_letters: int
    recoveries: list[Recovery]
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)


# Check names (tests and the report refer to them).
PACKETS = "accepted packets on the raw topic"
WINDOWS_LOST = "no window lost"
WINDOWS_CONSISTENT = "duplicate windows identical"
WINDOWS_UNEXPECTED = "no unexpected window"
FALL_ONCE = "fall raised exactly once"
NO_FALSE_FALL = "no false fall"
OFFLINE_ONCE = "silent devices offline exactly once"
NO_FALSE_OFFLINE = "no offline while sending"
PIPELINE_ALERTS = "pipeline alerts at most one per stall"
NOTIFIED = "every alert event notified"
ONE_KEY = "one key per alert event"
PUBLISHED = "every notified event on the alerts topic"
RECOVERED = "flow recovers after every fault"


def count(obs: Observations) -> ScenarioResult:
    ours = {d.device_id for d in obs.devices}
    accepted = {k for k in obs.accepted if k[0] in ours}
    raw = [r for r in obs.raw if r.device_id in ours]
    on_raw = {(r.device_id, r.seq) for r in raw}
    missing = accepted - on_raw

    expected = obs.expected_windows
    digests: dict[str, set[str]] = defaultdict(set)
    window_count: Counter[str] = Counter()
    for w in obs.windows:
        if w.device_id in ours:
            digests[w.window_id].add(w.digest)
            window_count[w.window_id] += 1
    predicted_count: Counter[str] = Counter(
        p.window_id for p in obs.predictions if p.device_id in ours
    )
    lost = expected - set(predicted_count)
    not_made = expected - set(window_count)
    conflicting = sorted(i for i, d in digests.items() if len(d) > 1)
    unexpected = sorted((set(window_count) | set(predicted_count)) - expected)

    alerts = _alerts_by_id(obs.alerts, obs.deliveries)
    roles = {d.device_id: d for d in obs.devices}
    falls = _fall_checks(obs, alerts)
    offline = _offline_checks(obs, alerts)
    pipeline_ids = {
        a for a, (dev, kind, _) in alerts.items() if kind == PIPELINE or dev.startswith("*")
    }
    stalls = sum(1 for f in obs.faults if f.fault.stalls_flow)

    events = {(a.alert_id, a.event) for a in obs.alerts}
    keys = Counter(d.idempotency_key for d in obs.deliveries)
    notified = {e for e in events if f"{e[0]}:{e[1]}" in keys}
    wrong_key = [d for d in obs.deliveries if d.idempotency_key != f"{d.alert_id}:{d.event}"]
    delivered_events = {(d.alert_id, d.event) for d in obs.deliveries}
    unpublished = delivered_events - events

    recoveries = [_recovery(f, obs) for f in obs.faults]
    result = ScenarioResult(
        scenario=obs.scenario,
        seed=obs.seed,
        wall_s=obs.ended_at - obs.started_at,
        faults=[f.fault.label for f in obs.faults],
        devices=len(obs.devices),
        packets_accepted=len(accepted),
        packets_missing=len(missing),
        raw_records=len(raw),
        windows_expected=len(expected),
        windows_predicted=len(expected & set(predicted_count)),
        windows_lost=len(lost),
        windows_not_made=len(not_made),
        duplicate_predictions=sum(predicted_count.values()) - len(predicted_count),
        duplicate_windows=sum(window_count.values()) - len(window_count),
        conflicting_windows=len(conflicting),
        unexpected_windows=len(unexpected),
        falls_expected=falls.expected,
        falls_raised=falls.raised,
        false_falls=falls.false,
        offline_expected=offline.expected,
        offline_raised=offline.raised,
        false_offline=len(offline.false_ids),
        false_offline_devices=len({alerts[a][0] for a in offline.false_ids}),
        pipeline_alerts=len(pipeline_ids),
        alert_events=len(events),
        notified_events=len(notified),
        notifications=sum(keys.values()),
        repeated_keys=sum(keys.values()) - len(keys),
        dead_letters=obs.dead_letters,
        recoveries=recoveries,
        notes=list(obs.notes),
    )
    stalled = [f.fault.label for f in obs.faults if f.fault.stalls_flow]
    result.checks = [
        Check(
            PACKETS,
            not missing,
            f"{len(accepted)} accepted, {len(missing)} not on the raw topic"
            + _examples(f"{d}:{s}" for d, s in missing),
        ),
        Check(
            WINDOWS_LOST,
            not lost,
            f"{len(lost)} of {len(expected)} expected windows never predicted "
            f"({len(not_made)} never made by preprocess)" + _examples(lost),
            _windows_issue(obs.faults) if lost else None,
        ),
        Check(
            WINDOWS_CONSISTENT,
            not conflicting,
            f"{len(conflicting)} window ids with differing samples" + _examples(conflicting),
        ),
        Check(
            WINDOWS_UNEXPECTED,
            not unexpected,
            f"{len(unexpected)} windows a faultless pipeline does not make (off the device's "
            "grid: state lost or restored behind the offsets)" + _examples(unexpected),
            _windows_issue(obs.faults) if unexpected else None,
        ),
        Check(FALL_ONCE, falls.ok, falls.detail, falls.known_issue),
        Check(
            NO_FALSE_FALL,
            falls.false == 0,
            f"{falls.false} FALL_SUSPECTED on devices that did not fall"
            + _examples(alerts[a][0] for a in falls.false_ids),
        ),
        Check(OFFLINE_ONCE, offline.ok, offline.detail, offline.known_issue),
        Check(
            NO_FALSE_OFFLINE,
            not offline.false_ids,
            f"{len(offline.false_ids)} DEVICE_OFFLINE alerts on "
            f"{result.false_offline_devices} devices that were still sending"
            + _examples(sorted({alerts[a][0] for a in offline.false_ids}))
            + _when(obs, [alerts[a][2] for a in offline.false_ids]),
            "item 3 (a stalled flow must raise one pipeline alert, not DEVICE_OFFLINE per device)"
            if offline.false_ids and stalled
            else None,
        ),
        _pipeline_check(obs, len(pipeline_ids), stalls),
        Check(
            NOTIFIED,
            len(notified) == len(events),
            f"{len(notified)} of {len(events)} alert events reached the webhook"
            + _examples(f"{a}:{e}" for a, e in events - notified),
        ),
        Check(
            ONE_KEY,
            not wrong_key,
            f"{len(wrong_key)} deliveries whose Idempotency-Key is not <alert_id>:<event>; "
            f"{result.repeated_keys} repeats of a key (allowed)",
        ),
        Check(
            PUBLISHED,
            not unpublished,
            f"{len(unpublished)} notified events missing from the alerts topic"
            + _examples(f"{a}:{e}" for a, e in unpublished),
        ),
        _recovery_check(recoveries, obs.faults),
    ]
    # A device the report should name: the scripted devices' fates.
    for device_id, outcome in sorted(roles.items()):
        if outcome.role is not Role.STEADY and outcome.last_attempt_at is None:
            result.notes.append(f"{device_id} never sent anything")
    return result


# -- alerts ---------------------------------------------------------------------------------


def _alerts_by_id(
    records: Iterable[AlertRecord], deliveries: Iterable[DeliveryRecord]
) -> dict[str, tuple[str, str, float]]:
    """``alert_id -> (device_id, type, opened_at)`` from the topic and the webhook alike, so
    an alert raised but never published (or never notified) still counts as raised."""
    out: dict[str, tuple[str, str, float]] = {}
    for a in records:
        out.setdefault(a.alert_id, (a.device_id, a.type, a.opened_at))
    for d in deliveries:
        out.setdefault(d.alert_id, (d.device_id, d.type, d.opened_at))
    return out


@dataclass
class _AlertTally:
    expected: int = 0
    raised: int = 0
    missed: list[str] = field(default_factory=list)
    repeated: list[str] = field(default_factory=list)
    false_ids: list[str] = field(default_factory=list)
    known_issue: str | None = None

    @property
    def false(self) -> int:
        return len(self.false_ids)

    @property
    def ok(self) -> bool:
        return not self.missed and not self.repeated

    @property
    def detail(self) -> str:
        text = f"{self.raised} of {self.expected} raised"
        if self.missed:
            text += "; missed on " + ", ".join(self.missed)
        if self.repeated:
            text += "; more than one alert for one incident on " + ", ".join(self.repeated)
        return text


def _fall_checks(obs: Observations, alerts: dict[str, tuple[str, str, float]]) -> _AlertTally:
    tally = _AlertTally()
    by_device: dict[str, list[str]] = defaultdict(list)
    for alert_id, (device_id, kind, _) in alerts.items():
        if kind == FALL:
            by_device[device_id].append(alert_id)
    for d in obs.devices:
        ids = by_device.get(d.device_id, [])
        if d.role is Role.FALL:
            tally.expected += 1
            tally.raised += bool(ids)
            if not ids:
                tally.missed.append(d.device_id)
                assert d.at_s is not None
                if _alerting_fault_between(obs.faults, d.at_s, d.at_s + FALL_SPAN_S):
                    tally.known_issue = (
                        "item 1 (alerting restarted or rebalanced during the fall's confirmation)"
                    )
            elif len(ids) > 1:
                tally.repeated.append(f"{d.device_id} ({len(ids)})")
        else:
            tally.false_ids.extend(ids)
    return tally


def _offline_checks(obs: Observations, alerts: dict[str, tuple[str, str, float]]) -> _AlertTally:
    tally = _AlertTally()
    by_device: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for alert_id, (device_id, kind, opened_at) in alerts.items():
        if kind == OFFLINE:
            by_device[device_id].append((alert_id, opened_at))
    for d in obs.devices:
        stopped = d.last_attempt_at if d.last_attempt_at is not None else float("-inf")
        mine = by_device.get(d.device_id, [])
        while_sending = [(a, opened) for a, opened in mine if opened < stopped]
        after = [a for a, opened in mine if not opened < stopped]
        tally.false_ids.extend(a for a, _ in while_sending)
        if d.role is Role.SILENT:
            tally.expected += 1
            tally.raised += bool(after)
            if not after:
                # A false DEVICE_OFFLINE earlier may have resolved and started the cooldown.
                first_false = min((opened for _, opened in while_sending), default=None)
                tally.missed.append(
                    d.device_id
                    if first_false is None
                    else f"{d.device_id} (after a false one at "
                    f"{first_false - obs.started_at:.1f} s)"
                )
                assert d.at_s is not None
                if _alerting_fault_between(obs.faults, d.at_s, d.at_s + obs.offline_after_s + 5):
                    tally.known_issue = (
                        "item 2 (alerting restarted or rebalanced after devices went silent)"
                    )
            elif len(after) > 1:
                tally.repeated.append(f"{d.device_id} ({len(after)})")
    return tally


def _when(obs: Observations, moments: Iterable[float]) -> str:
    """When alerts opened, relative to the start and to the fault before them."""
    rel = sorted(t - obs.started_at for t in moments if math.isfinite(t))
    if not rel:
        return ""
    span = f"{rel[0]:.1f}" if rel[-1] - rel[0] < 0.1 else f"{rel[0]:.1f}-{rel[-1]:.1f}"
    before = [f for f in obs.faults if f.started_at - obs.started_at <= rel[0]]
    if not before:
        return f"; opened {span} s after the start, before any fault"
    last = before[-1]
    return (
        f"; opened {span} s after the start, after {last.fault.label} at "
        f"{last.started_at - obs.started_at:.1f} s"
    )


def _alerting_fault_between(faults: Iterable[FaultRecord], lo: float, hi: float) -> bool:
    return any(f.fault.target == "alerting" and lo <= f.fault.at_s <= hi for f in faults)


def _pipeline_check(obs: Observations, raised: int, stalls: int) -> Check:
    detail = f"{raised} pipeline alerts for {stalls} faults that stall the flow"
    if obs.pipeline_stall_s is None:
        return Check(PIPELINE_ALERTS, raised <= stalls, detail + " (no PIPELINE_STALLED rule)")
    long_stalls = [
        f.fault.label
        for f in obs.faults
        if f.fault.kind is FaultKind.PAUSE
        and f.fault.target == "modelserver"
        and f.fault.duration_s >= obs.pipeline_stall_s + 10
    ]
    ok = len(long_stalls) <= raised <= stalls
    if long_stalls:
        detail += (
            f"; {', '.join(long_stalls)} exceeds the {obs.pipeline_stall_s:.0f} s stall "
            "threshold, so at least one is expected"
        )
    return Check(PIPELINE_ALERTS, ok, detail)


# -- windows and recovery --------------------------------------------------------------------


def _windows_issue(faults: Iterable[FaultRecord]) -> str | None:
    moved = sorted({f.fault.label for f in faults if f.fault.target == "preprocess"})
    if moved:
        return (
            "item 5 (preprocess state restored behind the committed offsets; here after "
            + ", ".join(moved)
            + ")"
        )
    return None


#: Faults whose recovery shows on the topics: fresh data predicted again.
def _flow_visible(fault: Fault) -> bool:
    return fault.target in ("preprocess", "inference", "modelserver", "broker")


def _recovery(record: FaultRecord, obs: Observations) -> Recovery:
    recovery = _measured(record, obs)
    note = "; ".join(x for x in (record.note, record.error) if x)
    return recovery if not note else replace(recovery, note=note)


def _measured(record: FaultRecord, obs: Observations) -> Recovery:
    fault = record.fault
    if _flow_visible(fault):
        after = [
            p.produced_at
            for p in obs.predictions
            if p.ingested_at >= record.ended_at and p.produced_at >= record.ended_at
        ]
        seconds = min(after) - record.ended_at if after else None
        return Recovery(fault.label, seconds, "first prediction of a packet accepted after it")
    seconds = None if record.recovered_at is None else record.recovered_at - record.ended_at
    if fault.kind is FaultKind.DOWN:
        return Recovery(fault.label, seconds, "first webhook delivery after it")
    if fault.kind is FaultKind.LEAVE:
        return Recovery(fault.label, seconds, "remaining alerting worker ready")
    return Recovery(fault.label, seconds, "alerting ready and consuming predictions")


def _recovery_check(recoveries: list[Recovery], faults: list[FaultRecord]) -> Check:
    # A webhook outage with nothing left to deliver has no recovery to measure.
    missing = [
        r.label
        for r, f in zip(recoveries, faults, strict=True)
        if r.seconds is None and f.fault.kind is not FaultKind.DOWN
    ]
    worst = max((r.seconds for r in recoveries if r.seconds is not None), default=None)
    detail = "never recovered: " + ", ".join(missing) if missing else "all recovered"
    if worst is not None:
        detail += f"; slowest {worst:.1f} s"
    known = None
    if any(
        f.fault.target == "broker" and r.seconds is None
        for r, f in zip(recoveries, faults, strict=True)
    ):
        known = "item 4 (ingest keeps answering 503 after a broker pause)"
    return Check(RECOVERED, not missing, detail, known)


def _examples(items: Iterable[str], limit: int = 3) -> str:
    shown = sorted(items)
    if not shown:
        return ""
    more = f" and {len(shown) - limit} more" if len(shown) > limit else ""
    return " (e.g. " + ", ".join(shown[:limit]) + more + ")"
