"""History through the whole pipeline (``harstream demo``'s: embedded broker, model server,
ingest, preprocess, inference, alerting and history as processes): a HAPT recording
replayed over HTTP like a real wearable; the history service's daily minutes per activity
against the recording's own labels.

Here the model predicts, so the tolerance has two parts, both computed from the data
(nothing fitted): the windowing tolerance of ``test_history_labels`` (slots with mixed
labels, bridged gaps, the uncovered edges) plus 1.28 s for every window whose prediction
differs from its slot's label, for both activities involved (the model's errors). The
history's own accounting is also checked exactly: its minutes equal those of the
predictions read back from the predictions topic, slot by slot.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.demo.cli import register_devices
from services.demo.pipeline import Pipeline, PipelineConfig
from services.demo.replay import device_of
from services.demo.run import expected_windows, run_replay
from services.history.summary import local_day
from services.ingest.registry import open_registry
from shared.activities import ACTIVITIES
from shared.data.cache import HaptCache
from shared.data.hapt_pickle import read_hapt_pickle
from shared.messages import Prediction
from tests.integration.kafka_reading import read_topic
from tests.integration.test_history_labels import (
    SLOT,
    SLOT_S,
    WINDOW,
    expected_minutes,
    slot_label,
    tolerance_minutes,
)

pytestmark = pytest.mark.integration

SPEED = 50.0
TZ = ZoneInfo("Europe/Paris")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    config = PipelineConfig(
        workdir=tmp_path_factory.mktemp("pipeline"),
        partitions=4,
        service_env={"history": {"HARSTREAM_HISTORY_IDLE_FLUSH_S": "2"}},
    )
    with Pipeline(config) as running:
        yield running


def _get(pipeline: Pipeline, path: str) -> Any:
    request = urllib.request.Request(
        f"{pipeline.history_url}{path}", headers=pipeline.alert_api_headers()
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_replayed_recording_daily_minutes_match_its_labels(
    pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cache = HaptCache(tmp_path_factory.mktemp("hapt"))
    cache.build(r for r in read_hapt_pickle() if r.subject == 9)
    recording = cache.load(subjects=[9])[0]
    device = device_of(recording)
    tokens = register_devices(pipeline.registry_url, [device.device_id])
    registry = open_registry(pipeline.registry_url)
    registry.set_timezone(device.device_id, TZ.key)
    registry.close()

    result = asyncio.run(
        run_replay(pipeline, [device], tokens, SPEED, 250, console=None, drain_timeout_s=30)
    )
    n = expected_windows(len(recording))
    assert pipeline.settings is not None
    predictions = sorted(
        (
            Prediction.from_bytes(value)
            for _, value in read_topic(
                pipeline.settings,
                pipeline.settings.topics.predictions,
                n,
                key=device.device_id.encode(),
            )
        ),
        key=lambda p: p.start_index,
    )
    assert len({p.window_id for p in predictions}) == n == result.expected_windows
    start, end = predictions[0].start_time, predictions[-1].end_time

    def stored() -> bool:
        body = _get(
            pipeline,
            f"/v1/devices/{device.device_id}/activity?from={_iso(start - 60)}&to={_iso(end + 60)}",
        )
        return bool(sum(s["windows"] for s in body["segments"]) == n)

    _wait(stored, 60, "every window in the history")
    minutes = dict.fromkeys(ACTIVITIES, 0.0)
    day, last = local_day(start, TZ), local_day(end, TZ)
    while day <= last:
        summary = _get(pipeline, f"/v1/devices/{device.device_id}/summary?date={day}")
        assert summary["timezone"] == TZ.key
        for a in ACTIVITIES:
            minutes[a] += summary["minutes"][a]
        day += timedelta(days=1)

    # Exactly the predictions' slots: 1.28 s per window, whatever the segments are.
    predicted = dict.fromkeys(ACTIVITIES, 0.0)
    for p in predictions:
        predicted[p.label] += SLOT_S / 60
    bridged = tolerance_minutes(recording, predictions, 5.0)
    windowing = tolerance_minutes(recording, [], 5.0)
    for a in ACTIVITIES:
        # Gaps only come from windows that failed; there are none: the bridged part is 0.
        assert minutes[a] == pytest.approx(predicted[a], abs=bridged[a] - windowing[a] + 1e-3)

    # Against the labels: windowing, plus the model's errors, plus the windows whose slot
    # is unlabelled or a postural transition (the model predicts one of the six anyway;
    # the labels count none).
    model = dict.fromkeys(ACTIVITIES, 0.0)
    unlabelled = misclassified = 0
    for p in predictions:
        truth = slot_label(recording.labels[p.start_index : p.start_index + WINDOW][SLOT])
        if truth is None:
            unlabelled += 1
            model[p.label] += SLOT_S / 60
        elif truth != p.label:
            misclassified += 1
            model[p.label] += SLOT_S / 60
            model[truth] += SLOT_S / 60
    expected = expected_minutes(recording)
    report = {}
    for a in ACTIVITIES:
        tolerance = windowing[a] + model[a]
        report[a] = (round(minutes[a], 3), round(expected[a], 3), round(tolerance, 3))
        assert minutes[a] == pytest.approx(expected[a], abs=tolerance), (a, report[a])
    print(
        f"{device.device_id}: {n} windows, {unlabelled} on unlabelled/transition slots, "
        f"{misclassified} of the others predicted otherwise than their slot's label; "
        f"(history, labels, tolerance) minutes: {report}; "
        f"total abs error {sum(abs(minutes[a] - expected[a]) for a in ACTIVITIES):.3f} min"
    )


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _wait(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.2)
