"""The alert rules on real model output: HAPT segments spliced into a fall (walking → impact →
lying), run through the shared preprocessing core and the committed model, then the rules.
This is what the stream does, minus Kafka, so rule thresholds are checked on real signals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.alerting.monitor import DeviceMonitor
from services.alerting.rules import AlertRules
from services.demo.run import versions_on_disk
from services.demo.scenarios import Segment, fall_scenario
from shared.activities import ACTIVITIES
from shared.dsp.preprocessor import StreamingPreprocessor
from shared.features import motion_features
from shared.messages import AlertType, Prediction

pytestmark = pytest.mark.integration

#: The pipeline's model server serves the newest version on disk (TF Serving's default
#: policy): the offline reference is that version.
MODEL_BASE = Path(__file__).resolve().parents[2] / "models" / "har"
MODEL_DIR = MODEL_BASE / str(max(versions_on_disk(MODEL_BASE)))
T0 = 1_705_312_800.0  # 2024-01-15 10:00 UTC


@pytest.fixture(scope="module")
def predictor():  # type: ignore[no-untyped-def]
    from services.training.evaluate import SavedModelPredictor

    return SavedModelPredictor(MODEL_DIR)


def _alerts_of(segment: Segment, predictor, rules: AlertRules) -> list[AlertType]:  # type: ignore[no-untyped-def]
    pre = StreamingPreprocessor()
    _, windows = pre.process(pre.new_state(), segment.samples)
    probabilities = predictor.predict_proba(windows.data)
    monitor = DeviceMonitor("dev", rules)
    opened = []
    for start, data, probs in zip(windows.start_indices, windows.data, probabilities, strict=True):
        t_start = T0 + start / 50.0
        p = Prediction(
            window_id=f"dev:{start}",
            device_id="dev",
            start_index=int(start),
            start_time=t_start,
            end_time=t_start + 2.56,
            label=ACTIVITIES[int(np.argmax(probs))],
            probabilities=tuple(float(x) for x in probs),
            model_name="har",
            model_version=1,
            features=motion_features(data),
            ingested_at=t_start + 2.56,
            window_emitted_at=t_start + 2.56,
            produced_at=t_start + 2.6,
            queue_wait_s=0.0,
            inference_s=0.0,
        )
        for step in monitor.observe(p, now_wall=p.end_time):
            if step.event.value == "opened":
                opened.append(step.alert.type)
    return opened


def test_fall_then_lying_raises_one_fall_alert(hapt_cache, predictor) -> None:  # type: ignore[no-untyped-def]
    fall = fall_scenario(hapt_cache.load(subjects=[2, 4]), walk_s=20.0, lie_s=60.0)
    opened = _alerts_of(fall, predictor, AlertRules())
    assert opened.count(AlertType.FALL_SUSPECTED) == 1


def test_getting_up_within_the_wait_cancels_the_fall(hapt_cache, predictor) -> None:  # type: ignore[no-untyped-def]
    got_up = fall_scenario(hapt_cache.load(subjects=[2, 4]), walk_s=20.0, get_up_after_s=10.0)
    assert AlertType.FALL_SUSPECTED not in _alerts_of(got_up, predictor, AlertRules())


def test_walking_and_lying_down_without_impact_is_not_a_fall(hapt_cache, predictor) -> None:  # type: ignore[no-untyped-def]
    recordings = hapt_cache.load(subjects=[2, 4])
    for rec in recordings:
        assert AlertType.FALL_SUSPECTED not in _alerts_of(
            Segment(rec.samples, rec.labels), predictor, AlertRules()
        )


def test_without_settle_time_the_gravity_filter_transient_would_cancel_real_falls(
    hapt_cache, predictor
) -> None:  # type: ignore[no-untyped-def]
    """Why ``fall_settle_s`` exists: the body turns, gravity separation lags ~3 s, and the
    resulting body acceleration looks like getting up."""
    fall = fall_scenario(hapt_cache.load(subjects=[2, 4]), walk_s=20.0, lie_s=60.0)
    assert AlertType.FALL_SUSPECTED not in _alerts_of(fall, predictor, AlertRules(fall_settle_s=0))


def test_a_gyroscope_gone_silent_is_a_sensor_fault(hapt_cache, predictor) -> None:  # type: ignore[no-untyped-def]
    """Without its gyroscope the model reads nearly every window as sitting (model card v5):
    the carers must learn that the activity is not to be trusted. A healthy recording of the
    same person raises no sensor fault."""
    fall = fall_scenario(hapt_cache.load(subjects=[2, 4]), walk_s=20.0, lie_s=60.0)
    assert AlertType.SENSOR_FAULT not in _alerts_of(fall, predictor, AlertRules())
    silent = fall.samples.copy()
    silent[len(silent) // 2 :, 3:] = 0.0  # the gyroscope stops half-way (reads 0 rad/s)
    opened = _alerts_of(Segment(silent, fall.labels), predictor, AlertRules())
    assert opened.count(AlertType.SENSOR_FAULT) == 1
    # Accelerometer-only fleets switch the check off.
    off = AlertRules(gyro_flatline_std_rad_s=0)
    assert AlertType.SENSOR_FAULT not in _alerts_of(Segment(silent, fall.labels), predictor, off)
