"""The history service against the real local broker and PostgreSQL: predictions in,
segments and summaries out through the API; duplicates and replays never count twice;
kill -9 and a restart lose nothing; bad records become dead letters.

The worker runs as ``harstream history`` (a real process, killed with SIGKILL). Predictions
are produced with kafka-python; the API is called with an operator made in the alert store.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from kafka import KafkaProducer  # type: ignore[import-untyped]

from services.alerting.auth import create_operator
from services.alerting.lifecycle import acknowledge, open_alert, resolve
from services.alerting.store import open_store as open_alert_store
from services.common.operators import Role
from services.history.segments import Segment, SegmentBuilder, window_of
from services.history.settings import HistorySettings
from services.ingest.registry import open_registry
from shared.messages import AlertType, DeadLetter, Prediction
from tests.integration.kafka_reading import read_topic
from tests.integration.workers import WorkerProcess, wait_for
from tests.integration.workers import all_committed as all_committed_in
from tests.unit.alerting_helpers import STEP_S, WALKING, prediction

pytestmark = pytest.mark.integration

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
PARIS = ZoneInfo("Europe/Paris")


def yesterday_in(tz: ZoneInfo, hour: int) -> tuple[date, float]:
    """Yesterday's local date in ``tz`` and the Unix time of ``hour``:00 on it (a whole
    past day: its expected minutes are the full day, and retention keeps it)."""
    day = datetime.now(tz).date() - timedelta(days=1)
    return day, datetime(day.year, day.month, day.day, hour, tzinfo=tz).timestamp()


def predictions_of(device: str, labels: list[str], t0: float, first: int = 0) -> list[Prediction]:
    return [
        prediction(first + i, label, WALKING, device=device, t0=t0)
        for i, label in enumerate(labels)
    ]


def expected_segments(items: list[Prediction]) -> list[Segment]:
    """What the pure builder makes of ``items`` in order, once each."""
    builder = SegmentBuilder()
    for p in items:
        builder.observe(p.device_id, window_of(p))
    for device in {p.device_id for p in items}:
        builder.flush(device)
    segments, _ = builder.take_changes()
    latest: dict[tuple[str, float], Segment] = {(s.device_id, s.start): s for s in segments}
    return sorted(latest.values())


def produce(settings: HistorySettings, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    for key, value in records:
        producer.send(settings.topics.predictions, key=key, value=value)
    producer.flush(10)
    producer.close()


def records_of(items: list[Prediction]) -> list[tuple[bytes | None, bytes]]:
    return [(p.device_id.encode(), p.to_bytes()) for p in items]


def all_committed(settings: HistorySettings) -> bool:
    return all_committed_in(
        settings.bootstrap_servers,
        settings.group_id,
        [settings.topics.predictions],
        settings.topic_partitions,
    )


class HistoryProcess(WorkerProcess):
    """``harstream history`` as a child process on a free port."""

    command = "history"

    def __init__(self, settings: HistorySettings, log: Path, viewer_key: str) -> None:
        super().__init__(log)
        self.settings = settings
        self.headers = {"Authorization": f"Bearer {viewer_key}"}

    def env(self) -> dict[str, str]:
        s = self.settings
        return {
            "HARSTREAM_HISTORY_KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
            "HARSTREAM_HISTORY_KAFKA_PROFILE": s.kafka_profile,
            "HARSTREAM_HISTORY_TOPIC_PREFIX": s.topic_prefix,
            "HARSTREAM_HISTORY_TOPIC_PARTITIONS": str(s.topic_partitions),
            "HARSTREAM_HISTORY_GROUP_ID": s.group_id,
            "HARSTREAM_HISTORY_HOST": "127.0.0.1",
            "HARSTREAM_HISTORY_PORT": str(self.port),
            "HARSTREAM_HISTORY_STORE_URL": s.store_url,
            "HARSTREAM_HISTORY_STORE_SCHEMA": s.store_schema,
            "HARSTREAM_HISTORY_REGISTRY_URL": s.registry_url,
            "HARSTREAM_HISTORY_OPERATORS_STORE_URL": s.operators_store_url,
            "HARSTREAM_HISTORY_COMMIT_INTERVAL_S": str(s.commit_interval_s),
            "HARSTREAM_HISTORY_IDLE_FLUSH_S": str(s.idle_flush_s),
            "HARSTREAM_HISTORY_RETENTION_DAYS": str(s.retention_days),
            "HARSTREAM_HISTORY_RETENTION_INTERVAL_S": str(s.retention_interval_s),
        }

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any, str]:
        """(status, JSON body, content type) of ``GET path``."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            headers=self.headers if headers is None else headers,
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, json.load(r), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc), exc.headers.get("Content-Type", "")

    def ok(self, path: str) -> Any:
        status, body, _ = self.get(path)
        assert status == 200, body
        return body

    def counted(self, outcome: str = "accepted") -> float:
        return self.metric(f'harstream_history_predictions_total{{outcome="{outcome}"}}')


class Setup:
    """Settings (PostgreSQL store in its own schema), a registry and a viewer."""

    def __init__(self, settings: HistorySettings, viewer_key: str, tmp_path: Path) -> None:
        self.settings = settings
        self.viewer_key = viewer_key
        self.tmp_path = tmp_path
        self.started: list[HistoryProcess] = []

    def process(self, name: str) -> HistoryProcess:
        started = HistoryProcess(self.settings, self.tmp_path / f"{name}.log", self.viewer_key)
        self.started.append(started)
        return started.start()

    def segments(self, api: HistoryProcess, device: str, start: float, end: float) -> list[Segment]:
        body = api.ok(f"/v1/devices/{device}/activity?from={_iso(start)}&to={_iso(end)}")
        return [
            Segment(
                device,
                s["start"],
                s["end"],
                s["activity"],
                s["model_version"],
                s["windows"],
                round(s["mean_confidence"] * s["windows"], 6),
            )
            for s in body["segments"]
        ]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, ZoneInfo("UTC")).isoformat().replace("+00:00", "Z")


def _rounded(segments: list[Segment]) -> list[Segment]:
    return [s._replace(confidence_sum=round(s.confidence_sum, 6)) for s in segments]


@pytest.fixture
def setup(stream_settings: Callable[..., HistorySettings], tmp_path: Path) -> Iterator[Setup]:
    schema = f"test_history_{uuid.uuid4().hex[:10]}"
    operators_url = f"sqlite:///{tmp_path / 'alerts.db'}"
    alert_store = open_alert_store(operators_url)
    try:
        _, key = create_operator(alert_store, "history-viewer", Role.VIEWER)
    finally:
        alert_store.close()
    settings = stream_settings(
        HistorySettings,
        group_id=f"history-{uuid.uuid4().hex[:8]}",
        store_url=PG_URL,
        store_schema=schema,
        registry_url=f"sqlite:///{tmp_path / 'devices.db'}",
        operators_store_url=operators_url,
        commit_interval_s=0.5,
        idle_flush_s=1.0,
    )
    made = Setup(settings, key.get_secret_value(), tmp_path)
    try:
        yield made
    finally:
        for p in made.started:
            p.stop()
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_predictions_become_segments_and_a_daily_summary(setup: Setup) -> None:
    """A wearer in Paris: 2 min walking, 5 min sitting, 3 min lying yesterday morning, every
    prediction delivered twice. The API answers the segments and the local day's summary."""
    registry = open_registry(setup.settings.registry_url)
    registry.add("dev-paris", "room 12", timezone="Europe/Paris")
    registry.add("dev-quiet")  # registered, never sent anything
    registry.close()
    day, t0 = yesterday_in(PARIS, 8)
    per_minute = round(60 / STEP_S)
    labels = (
        ["WALKING"] * 2 * per_minute + ["SITTING"] * 5 * per_minute + ["LAYING"] * 3 * per_minute
    )
    items = predictions_of("dev-paris", labels, t0)
    api = setup.process("history")
    produce(setup.settings, records_of(items) + records_of(items[::-1]))
    wait_for(lambda: api.counted() == len(items), 60, "every window counted once")
    wait_for(lambda: all_committed(setup.settings), 30, "offsets committed")
    assert api.counted("duplicate") + api.counted("stale") == len(items)
    start, end = t0 - 3600, t0 + 3600
    expected = expected_segments(items)
    assert [s.activity for s in expected] == ["WALKING", "SITTING", "LAYING"]
    wait_for(
        lambda: setup.segments(api, "dev-paris", start, end) == _rounded(expected),
        30,
        "segments stored",
    )

    summary = api.ok(f"/v1/devices/dev-paris/summary?date={day.isoformat()}")
    assert summary["timezone"] == "Europe/Paris" and summary["date"] == day.isoformat()
    for activity in ("WALKING", "SITTING", "LAYING"):
        # Each window stands for 1.28 s (47 of them are "a minute": 60.16 s).
        minutes = labels.count(activity) * STEP_S / 60
        assert summary["minutes"][activity] == pytest.approx(minutes, abs=1e-3)
    assert summary["active_minutes"] == summary["minutes"]["WALKING"]
    assert summary["lying_minutes"] == summary["minutes"]["LAYING"]
    assert summary["posture_changes"] == 2  # walking -> sitting, sitting -> lying
    assert summary["posture_change_kinds"] == {"stand->sit": 1, "sit->lie": 1}
    assert summary["longest_still"]["minutes"] == pytest.approx(8, abs=2 * STEP_S / 60)
    coverage = summary["coverage"]
    assert coverage["minutes_expected"] == pytest.approx(
        (summary["day_end"] - summary["day_start"]) / 60
    )
    assert coverage["minutes_with_data"] == pytest.approx(len(items) * STEP_S / 60, abs=1e-3)

    device = api.ok("/v1/devices/dev-paris")
    assert device["timezone"] == "Europe/Paris" and device["label"] == "room 12"
    assert device["current"]["activity"] == "LAYING"
    assert device["current"]["model_version"] == 1
    assert device["current"]["since"] == pytest.approx(expected[-1].start)
    assert device["last_seen"] == pytest.approx(expected[-1].end)
    assert device["open_alerts"] == []
    # An alert of the device in the alert store (as alerting writes it) is listed until
    # resolved; acknowledged ones too.
    alert_store = open_alert_store(setup.settings.operators_store_url)
    try:
        fall = open_alert("dev-paris", AlertType.FALL_SUSPECTED, "impact 3.1 g", 100.0, {})
        offline = open_alert("dev-quiet", AlertType.DEVICE_OFFLINE, "no data", 150.0, {})
        alert_store.record([fall, offline], [])
        acked = acknowledge(fall.alert, "carer-1", 120.0)
        assert acked is not None
        alert_store.record([acked], [])
        (listed_alert,) = api.ok("/v1/devices/dev-paris")["open_alerts"]
        assert listed_alert["alert_id"] == fall.alert.alert_id
        assert (listed_alert["type"], listed_alert["state"]) == ("FALL_SUSPECTED", "acknowledged")
        alert_store.record([resolve(acked.alert, "carer-1", 130.0, "got up")], [])
        assert api.ok("/v1/devices/dev-paris")["open_alerts"] == []
    finally:
        alert_store.close()
    listed = api.ok("/v1/devices")["devices"]
    assert [d["device_id"] for d in listed] == ["dev-paris", "dev-quiet"]
    assert listed[1]["current"] is None and listed[1]["registered"] is True
    # A known device without data that day: zeros, not 404.
    quiet = api.ok(f"/v1/devices/dev-quiet/summary?date={day.isoformat()}")
    assert quiet["coverage"]["minutes_with_data"] == 0


def test_api_errors_are_problems(setup: Setup) -> None:
    api = setup.process("history")
    for path, status, words in (
        ("/v1/devices/nobody", 404, "no device"),
        ("/v1/devices/nobody/summary", 404, "no device"),
        ("/v1/devices/nobody/activity", 404, "no device"),
        ("/v1/devices/x/summary?date=2026-02-30", 400, "does not exist"),
        ("/v1/devices/x/activity?from=2026-01-01T00:00:00", 400, "offset"),
        ("/v1/devices/x/activity?from=2026-01-01T00:00:00Z&to=2025-01-01T00:00:00Z", 400, "before"),
        ("/v1/nothing", 404, "Not Found"),
    ):
        code, body, content_type = api.get(path)
        assert code == status, (path, body)
        assert content_type.startswith("application/problem+json"), (path, content_type)
        assert words in body["detail"], (path, body)
    code, body, _ = api.get("/v1/devices", headers={})
    assert code == 401 and body["title"] == "Unauthenticated"
    code, _, _ = api.get("/v1/devices", headers={"Authorization": "Bearer hso_nope_nope"})
    assert code == 401
    assert api.get("/healthz", headers={})[0] == 200
    assert api.get("/readyz", headers={})[0] == 200


def test_kill_9_and_restarts_lose_nothing_and_count_nothing_twice(setup: Setup) -> None:
    """Three runs over one stream: the first is killed after a checkpoint, the second before
    its next (its offsets uncommitted: the third replays them) and each restart also gets
    the whole stream again (a producer retrying everything)."""
    _, t0 = yesterday_in(ZoneInfo("UTC"), 6)
    labels = (["WALKING"] * 40 + ["STANDING"] * 30 + ["SITTING"] * 50) * 3
    items = predictions_of("dev-kill", labels, t0)
    third_1, third_2 = len(items) // 3, 2 * len(items) // 3

    first = setup.process("history-1")
    produce(setup.settings, records_of(items[:third_1]))
    wait_for(lambda: first.counted() >= third_1 - 10, 60, "the first third read")
    wait_for(lambda: all_committed(setup.settings), 30, "the first third committed")
    first.kill()

    setup.settings = setup.settings.model_copy(update={"commit_interval_s": 3600.0})
    second = setup.process("history-2")
    produce(setup.settings, records_of(items[:third_2]))  # the first third again, and more
    wait_for(lambda: second.counted() >= third_2 - third_1 - 10, 60, "the second third read")
    second.kill()
    assert not all_committed(setup.settings)

    setup.settings = setup.settings.model_copy(update={"commit_interval_s": 0.5})
    third = setup.process("history-3")
    produce(setup.settings, records_of(items))  # everything once more
    wait_for(lambda: all_committed(setup.settings), 60, "everything committed")
    expected = expected_segments(items)
    wait_for(
        lambda: setup.segments(third, "dev-kill", t0 - 60, t0 + 3600) == _rounded(expected),
        30,
        "the segments of one clean pass",
    )
    assert sum(s.windows for s in expected) == len(items)


def test_bad_records_go_to_the_dead_letter_topic(setup: Setup) -> None:
    _, t0 = yesterday_in(ZoneInfo("UTC"), 9)
    good = predictions_of("dev-ok", ["WALKING"] * 5, t0)
    wrong_key = prediction(0, "WALKING", WALKING, device="dev-a", t0=t0)
    # A clock years ahead: counted, it would make every later window look like a replay.
    ahead = prediction(0, "WALKING", WALKING, device="dev-ok", t0=t0 + 3 * 365 * 86_400)
    api = setup.process("history")
    produce(
        setup.settings,
        [
            (b"dev-x", b"not a prediction"),
            (b"dev-b", wrong_key.to_bytes()),
            (b"dev-ok", ahead.to_bytes()),
            *records_of(good),
        ],
    )
    wait_for(lambda: api.counted("dead_letter") == 3, 30, "three dead letters")
    # Counted when judged; on the topic once acknowledged, a moment later.
    letters = [
        DeadLetter.from_bytes(value)
        for _, value in read_topic(setup.settings, setup.settings.topics.dlq, 3, timeout_s=30)
    ]
    mine = sorted((d for d in letters if d.service == "history"), key=lambda d: d.source_offset)
    assert len(mine) == 3
    assert {d.key for d in mine} == {b"dev-x", b"dev-b", b"dev-ok"}
    assert "ahead of the clock" in mine[2].reason
    assert all(d.source_topic == setup.settings.topics.predictions for d in mine)
    wait_for(lambda: api.counted() == len(good), 30, "the good ones counted")


def test_retention_deletes_old_segments(setup: Setup) -> None:
    """Segments that ended more than retention_days ago are deleted by the service; newer
    ones stay."""
    setup.settings = setup.settings.model_copy(
        update={"retention_days": 2.0, "retention_interval_s": 0.5}
    )
    _, recent = yesterday_in(ZoneInfo("UTC"), 12)
    old = recent - 5 * 86_400
    api = setup.process("history")
    produce(
        setup.settings,
        records_of(predictions_of("dev-old", ["SITTING"] * 20, old))
        + records_of(predictions_of("dev-new", ["SITTING"] * 20, recent)),
    )
    wait_for(lambda: api.counted() == 40, 30, "both devices counted")
    wait_for(lambda: api.metric("harstream_history_segments_deleted_total") >= 1, 30, "old deleted")
    # The newer one stays, whole (its last windows are stored after the idle flush).
    wait_for(
        lambda: (
            [s.windows for s in setup.segments(api, "dev-new", recent - 60, recent + 600)] == [20]
        ),
        30,
        "the newer segment kept",
    )
    # Deleted for good: also the part stored after the idle flush (the next pass).
    wait_for(lambda: setup.segments(api, "dev-old", old - 60, old + 600) == [], 30, "old gone")


def test_a_second_worker_takes_partitions_over_without_loss_or_double_count(
    setup: Setup,
) -> None:
    """Two workers in one group on one PostgreSQL store: a rebalance mid-stream (the second
    joins, then the first leaves cleanly) hands devices over with their stored states."""
    _, t0 = yesterday_in(ZoneInfo("UTC"), 15)
    devices = [f"dev-rb-{i}" for i in range(8)]
    labels = ["WALKING"] * 30 + ["SITTING"] * 30 + ["LAYING"] * 30
    streams = {d: predictions_of(d, labels, t0) for d in devices}
    half = len(labels) // 2

    first = setup.process("history-1")
    produce(setup.settings, [r for d in devices for r in records_of(streams[d][:half])])
    wait_for(lambda: first.counted() >= len(devices) * half, 60, "the first half counted")
    second = setup.process("history-2")
    produce(setup.settings, [r for d in devices for r in records_of(streams[d][half : half + 10])])
    wait_for(
        lambda: second.metric("harstream_history_partitions_assigned") > 0, 60, "second joined"
    )
    first.stop()  # SIGTERM: a last checkpoint, then it leaves the group
    produce(setup.settings, [r for d in devices for r in records_of(streams[d][half:])])
    wait_for(lambda: all_committed(setup.settings), 60, "everything committed")
    for device in devices:
        expected = _rounded(expected_segments(streams[device]))

        def handed_over(device: str = device, expected: list[Segment] = expected) -> bool:
            return setup.segments(second, device, t0 - 60, t0 + 3600) == expected

        wait_for(handed_over, 30, f"{device}: the segments of one clean pass")
