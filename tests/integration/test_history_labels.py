"""History against known labels: two replayed HAPT recordings (worn in Paris and in New
York), the minutes per activity of the service's daily summary against the minutes the
recordings' own per-sample labels give, within the windowing tolerance.

What is fed: the predictions the pipeline would emit for the recordings' windows (128
samples every 64, as preprocess cuts them, at the device times ``packets_of`` gives the
samples), each labelled with its slot's majority label, i.e. a perfect model. So this
checks the history's accounting (slots, segments, gaps, days in the wearer's zone, the
API), not the model: the model's accuracy is the streaming-accuracy test's
(``tests/integration/test_end_to_end.py``). Windows whose slot is mostly unlabelled or a
postural transition (HAPT 7-12) get no prediction: no data there.

The tolerance per activity, computed from the labels (nothing fitted): a slot (1.28 s)
whose samples are not all one label is counted whole for its majority, so each such slot
touching the activity may be off by up to 1.28 s; a segment bridges gaps of up to
``max_gap_s`` between windows of one activity (that time counts as the activity); and the
first 32 samples and the tail after the last slot are no window's slot.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime
from itertools import pairwise
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from services.ingest.registry import open_registry
from shared.activities import ACTIVITIES, HaptLabel
from shared.data.cache import HaptCache
from shared.data.hapt_pickle import read_hapt_pickle
from shared.data.recording import HAPT_SAMPLE_RATE_HZ, Recording
from shared.messages import Prediction
from tests.integration.test_history_service import (
    Setup,
    produce,
    records_of,
    wait_for,
    yesterday_in,
)
from tests.integration.test_history_service import setup as setup  # noqa: PLC0414 - fixture
from tests.unit.alerting_helpers import WALKING, probs

pytestmark = pytest.mark.integration

WINDOW = 128
STEP = 64
#: Samples of a window's slot: its middle half.
SLOT = slice(32, 96)
SLOT_S = STEP / HAPT_SAMPLE_RATE_HZ


def slot_label(labels: np.ndarray) -> str | None:
    """The majority label of a slot's samples, None if that is not one of the six."""
    values, counts = np.unique(labels, return_counts=True)
    majority = int(values[np.argmax(counts)])
    if HaptLabel.WALKING <= majority <= HaptLabel.LAYING:
        return ACTIVITIES[majority - 1]
    return None


def labelled_predictions(device: str, recording: Recording, t0: float) -> list[Prediction]:
    out = []
    for start in range(0, len(recording) - WINDOW + 1, STEP):
        label = slot_label(recording.labels[start : start + WINDOW][SLOT])
        if label is None:
            continue
        start_time = t0 + start / HAPT_SAMPLE_RATE_HZ
        end_time = start_time + WINDOW / HAPT_SAMPLE_RATE_HZ
        out.append(
            Prediction(
                window_id=f"{device}:{start}",
                device_id=device,
                start_index=start,
                start_time=start_time,
                end_time=end_time,
                label=label,
                probabilities=probs(label, 0.8),
                model_name="har",
                model_version=1,
                features=WALKING,
                ingested_at=end_time,
                window_emitted_at=end_time,
                produced_at=end_time,
                queue_wait_s=0.0,
                inference_s=0.0,
            )
        )
    return out


def expected_minutes(recording: Recording) -> dict[str, float]:
    """Minutes per activity from the per-sample labels."""
    counts = Counter(int(x) for x in recording.labels)
    return {a: counts.get(i + 1, 0) / HAPT_SAMPLE_RATE_HZ / 60 for i, a in enumerate(ACTIVITIES)}


def tolerance_minutes(
    recording: Recording, predictions: list[Prediction], max_gap_s: float
) -> dict[str, float]:
    labels = recording.labels
    seconds = dict.fromkeys(ACTIVITIES, 0.0)
    n_windows = (len(recording) - WINDOW) // STEP + 1
    for k in range(n_windows):
        slot = labels[k * STEP : k * STEP + WINDOW][SLOT]
        present = set(int(x) for x in np.unique(slot))
        if len(present) > 1:
            for value in present:
                if HaptLabel.WALKING <= value <= HaptLabel.LAYING:
                    seconds[ACTIVITIES[value - 1]] += SLOT_S
    uncovered = np.concatenate([labels[: SLOT.start], labels[(n_windows - 1) * STEP + SLOT.stop :]])
    for value in uncovered:
        if HaptLabel.WALKING <= value <= HaptLabel.LAYING:
            seconds[ACTIVITIES[int(value) - 1]] += 1 / HAPT_SAMPLE_RATE_HZ
    for before, after in pairwise(predictions):
        gap = (after.start_index - before.start_index - STEP) / HAPT_SAMPLE_RATE_HZ
        if before.label == after.label and 0 < gap <= max_gap_s:
            seconds[before.label] += gap
    return {a: s / 60 + 1e-3 for a, s in seconds.items()}


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Recording]]:
    cache = HaptCache(tmp_path_factory.mktemp("hapt"))
    cache.build(r for r in read_hapt_pickle() if r.subject in (1, 2))
    yield cache.load(subjects=[1, 2])


def test_daily_minutes_match_the_recordings_labels(
    setup: Setup, recordings: list[Recording]
) -> None:
    worn = {
        "hapt-s01-e01": (recordings[0], ZoneInfo("Europe/Paris")),
        "hapt-s02-e01": (recordings[2], ZoneInfo("America/New_York")),
    }
    registry = open_registry(setup.settings.registry_url)
    for device, (_, tz) in worn.items():
        registry.add(device, timezone=tz.key)
    registry.close()
    days: dict[str, date] = {}
    feeds: dict[str, list[Prediction]] = {}
    for device, (recording, tz) in worn.items():
        # 23:55 local: the recording crosses the wearer's midnight (~7 min long).
        day, t0 = yesterday_in(tz, 23)
        t0 += 55 * 60
        days[device] = day
        feeds[device] = labelled_predictions(device, recording, t0)
    api = setup.process("history")
    produce(setup.settings, [r for items in feeds.values() for r in records_of(items)])
    total = sum(len(items) for items in feeds.values())
    wait_for(lambda: api.counted() == total, 60, "every prediction counted")

    for device, (recording, tz) in worn.items():
        expected = expected_minutes(recording)
        tolerance = tolerance_minutes(recording, feeds[device], setup.settings.max_gap_s)

        feed = feeds[device]
        start, end = feed[0].start_time, feed[-1].end_time

        def stored(
            device: str = device, n: int = len(feed), span: tuple[float, float] = (start, end)
        ) -> bool:
            segments = setup.segments(api, device, span[0] - 60, span[1] + 60)
            return sum(s.windows for s in segments) == n

        wait_for(stored, 30, f"{device}'s segments stored")
        minutes = dict.fromkeys(ACTIVITIES, 0.0)
        for d in (days[device], date.fromordinal(days[device].toordinal() + 1)):
            summary = api.ok(f"/v1/devices/{device}/summary?date={d.isoformat()}")
            for a in ACTIVITIES:
                minutes[a] += summary["minutes"][a]
        for activity in ACTIVITIES:
            assert minutes[activity] == pytest.approx(
                expected[activity], abs=tolerance[activity]
            ), (
                device,
                activity,
                minutes[activity],
                expected[activity],
                tolerance[activity],
            )
        print(
            device,
            tz.key,
            {
                a: (round(minutes[a], 3), round(expected[a], 3), round(tolerance[a], 3))
                for a in ACTIVITIES
            },
        )
        # The day boundary is the wearer's midnight: the first day holds its 5 minutes.
        first = api.ok(f"/v1/devices/{device}/summary?date={days[device].isoformat()}")
        midnight = datetime.combine(days[device], datetime.min.time(), tz).timestamp() + 86_400
        assert first["day_end"] == midnight
        assert first["coverage"]["minutes_with_data"] <= (midnight - start) / 60 + 1e-6
