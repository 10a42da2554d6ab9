"""Schemas: every message round-trips exactly, and bad bytes fail with SchemaError (never
another exception a worker would not catch)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import SchemaError
from shared.features import MotionFeatures, motion_features
from shared.messages import (
    Alert,
    AlertState,
    AlertType,
    DeadLetter,
    Prediction,
    RawPacket,
    Severity,
    WindowMessage,
)
from shared.topics import Topics

RNG = np.random.default_rng(0)
WINDOW = RNG.normal(size=(128, 9)).astype(np.float32)
FEATURES = motion_features(WINDOW)


def _window() -> WindowMessage:
    return WindowMessage(
        device_id="dev-1",
        start_index=640,
        start_time=1_700_000_012.8,
        end_time=1_700_000_015.36,
        fingerprint="0123456789abcdef",
        ingested_at=1_700_000_015.5,
        emitted_at=1_700_000_015.51,
        features=FEATURES,
        data=WINDOW,
    )


def _prediction() -> Prediction:
    return Prediction(
        window_id="dev-1:640",
        device_id="dev-1",
        start_index=640,
        start_time=1.0,
        end_time=3.56,
        label="LAYING",
        probabilities=(0.0, 0.01, 0.0, 0.02, 0.07, 0.9),
        model_name="har",
        model_version=3,
        features=FEATURES,
        ingested_at=10.0,
        window_emitted_at=10.02,
        produced_at=10.1,
        queue_wait_s=0.03,
        inference_s=0.004,
    )


def test_raw_packet_round_trip_is_bit_exact() -> None:
    samples = RNG.normal(size=(50, 6))
    packet = RawPacket("dev-1", 7, 1_700_000_000.123456, 50.0, samples, 1_700_000_001.0)
    decoded = RawPacket.from_bytes(packet.to_bytes())
    assert decoded.equals(packet)
    assert decoded.samples.dtype == np.float64


def test_window_round_trip_and_size() -> None:
    message = _window()
    data = message.to_bytes()
    decoded = WindowMessage.from_bytes(data)
    assert np.array_equal(decoded.data, WINDOW)
    assert decoded.window_id == "dev-1:640"
    assert decoded.features == FEATURES
    assert (decoded.start_time, decoded.end_time) == (message.start_time, message.end_time)
    # 4,608 bytes of float32 plus a small header: far below JSON's ~20 KB.
    assert len(data) < 5_400


def test_prediction_alert_dead_letter_round_trip() -> None:
    prediction = _prediction()
    assert Prediction.from_bytes(prediction.to_bytes()) == prediction
    assert prediction.confidence == 0.9
    assert prediction.end_to_end_s == pytest.approx(0.1)
    alert = Alert(
        "a-1",
        "dev-1",
        AlertType.FALL_SUSPECTED,
        AlertState.OPEN,
        Severity.CRITICAL,
        "impact 3.1 g then lying 30 s",
        5.0,
        5.0,
        details={"peak_acc_g": 3.1},
    )
    assert Alert.from_bytes(alert.to_bytes()) == alert
    letter = DeadLetter(
        "preprocess", "bad magic", "SchemaError", "t", 3, 42, b"dev", b"\x00\xff", 9.0
    )
    assert DeadLetter.from_bytes(letter.to_bytes()) == letter


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"HW",
        b"XX\x01\x00\x00\x00\x02{}",
        b"HW\x09\x00\x00\x00\x02{}",  # unknown version
        b"HW\x01\x00\x00\x10\x00{}",  # header longer than the message
        b"HW\x01\x00\x00\x00\x02[]",  # header not an object
        b"HW\x01\x00\x00\x00\x03{x}",  # header not JSON
    ],
)
def test_bad_window_frames_raise_schema_error(data: bytes) -> None:
    with pytest.raises(SchemaError):
        WindowMessage.from_bytes(data)


def test_truncated_payload_and_wrong_types_raise_schema_error() -> None:
    data = _window().to_bytes()
    with pytest.raises(SchemaError, match="float32"):
        WindowMessage.from_bytes(data[:-4])
    body = _prediction().to_bytes().replace(b'"model_version":3', b'"model_version":"3"')
    with pytest.raises(SchemaError, match="model_version"):
        Prediction.from_bytes(body)
    with pytest.raises(SchemaError):
        Prediction.from_bytes(_prediction().to_bytes().replace(b"LAYING", b"DANCING"))
    with pytest.raises(SchemaError):
        RawPacket.from_bytes(_window().to_bytes())


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_schema_error(data: bytes) -> None:
    for cls in (RawPacket, WindowMessage, Prediction, Alert, DeadLetter):
        with contextlib.suppress(SchemaError):
            cls.from_bytes(data)


def test_motion_features_of_still_and_impact() -> None:
    still = np.zeros((128, 9), dtype=np.float32)
    still[:, 6] = 1.0  # gravity on x, upright
    features = motion_features(still)
    assert features.movement_energy == 0.0
    assert features.acc_std_g == 0.0
    assert features.peak_acc_g == pytest.approx(1.0)
    assert features.upright_cosine == pytest.approx(1.0)
    impact = still.copy()
    impact[60:65, 6] = 3.5
    assert motion_features(impact).peak_acc_g == pytest.approx(3.5)
    assert MotionFeatures.from_dict(features.to_dict()) == features


def test_topics_are_versioned_and_prefixed() -> None:
    topics = Topics("site-a")
    assert topics.windows == "site-a.windows.v1"
    assert len(set(topics.all())) == 5
