"""Windows + model outputs + timings → Predictions."""

from __future__ import annotations

import numpy as np
import pytest

from services.inference.errors import FingerprintMismatchError, InvalidWindowError
from services.inference.model import ModelOutput
from services.inference.results import batch_predictions, build_prediction, validate_window
from shared.activities import ACTIVITIES
from shared.messages import Prediction
from tests.unit.inference_helpers import FINGERPRINT, make_window


def test_prediction_copies_the_window_and_takes_argmax_label() -> None:
    window = make_window("watch-7", 640, ingested_at=2000.0)
    probs = np.array([0.05, 0.05, 0.1, 0.6, 0.1, 0.1], dtype=np.float32)
    p = build_prediction(window, probs, "har", 3, 2000.5, 0.02, 0.006)
    assert p.window_id == "watch-7:640"
    assert (p.device_id, p.start_index) == ("watch-7", 640)
    assert (p.start_time, p.end_time) == (window.start_time, window.end_time)
    assert p.label == ACTIVITIES[3] == "SITTING"
    assert p.probabilities == pytest.approx(tuple(probs.tolist()))
    assert (p.model_name, p.model_version) == ("har", 3)
    assert p.features == window.features
    assert p.ingested_at == 2000.0
    assert p.window_emitted_at == window.emitted_at
    assert p.produced_at == 2000.5
    assert (p.queue_wait_s, p.inference_s) == (0.02, 0.006)
    assert p.end_to_end_s == pytest.approx(0.5)
    assert Prediction.from_bytes(p.to_bytes()).label == "SITTING"


def test_prediction_refuses_wrong_probability_count() -> None:
    with pytest.raises(ValueError):
        build_prediction(make_window(), np.ones(5), "har", 1, 0.0, 0.0, 0.0)


def test_batch_predictions_rows_follow_windows_and_mismatches_are_errors() -> None:
    windows = [make_window(start_index=0), make_window(start_index=64, fingerprint="other")]
    probs = np.eye(6, dtype=np.float32)[[5, 0]]
    output = ModelOutput(probs, (FINGERPRINT, FINGERPRINT), version=2)
    results = batch_predictions(windows, [0.01, 0.02], output, "har", 10.0, 0.004)
    first, second = results
    assert isinstance(first, Prediction)
    assert first.label == "LAYING" and first.queue_wait_s == 0.01 and first.model_version == 2
    assert isinstance(second, FingerprintMismatchError)
    assert "'other'" in str(second) and repr(FINGERPRINT) in str(second)


def test_validate_window_rejects_wrong_shape_and_nan() -> None:
    validate_window(make_window())
    short = make_window()
    object.__setattr__(short, "data", short.data[:64])
    with pytest.raises(InvalidWindowError, match="shape"):
        validate_window(short)
    nan = make_window()
    data = nan.data.copy()
    data[5, 2] = np.nan
    object.__setattr__(nan, "data", data)
    with pytest.raises(InvalidWindowError, match="non-finite"):
        validate_window(nan)
