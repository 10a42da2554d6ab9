from __future__ import annotations

import sys

import numpy as np
import pytest

from services.training.baselines import (
    CLASSICAL_BASELINES,
    DETERMINISTIC_BASELINES,
    FEATURE_NAMES,
    NUM_FEATURES,
    window_features,
)
from shared.dsp.config import CHANNELS

RATE_HZ = 50.0
BIN_HZ = RATE_HZ / 128


def column(name: str) -> int:
    return FEATURE_NAMES.index(name)


@pytest.fixture
def random_windows() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(5, 128, 9)).astype(np.float32)


def test_shape_and_names_agree(random_windows: np.ndarray) -> None:
    features = window_features(random_windows)
    assert features.shape == (5, NUM_FEATURES) == (5, len(FEATURE_NAMES))
    assert features.dtype == np.float32
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert window_features(np.zeros((0, 128, 9), np.float32)).shape == (0, NUM_FEATURES)


def test_rejects_wrong_channel_count() -> None:
    with pytest.raises(ValueError, match="expected windows"):
        window_features(np.zeros((2, 128, 6), np.float32))


@pytest.mark.parametrize("value", [0.0, 1.0, -0.3])
def test_constant_windows_are_finite(value: float) -> None:
    features = window_features(np.full((3, 128, 9), value, np.float32))
    assert np.isfinite(features).all()
    assert features[0, column("body_gyro_x_dominant_freq_hz")] == 0.0
    assert features[0, column("total_acc_z_skewness")] == 0.0
    assert features[0, column("body_acc_corr_xy")] == 0.0


def test_random_windows_are_finite(random_windows: np.ndarray) -> None:
    big = random_windows * np.float32(1e3)
    assert np.isfinite(window_features(random_windows)).all()
    assert np.isfinite(window_features(big)).all()


def test_dominant_frequency_of_a_sine() -> None:
    t = np.arange(128) / RATE_HZ
    windows = np.zeros((1, 128, 9), np.float32)
    windows[0, :, 3] = np.sin(2 * np.pi * 5.0 * t) + 0.2  # offset: DC must not win
    features = window_features(windows)[0]
    assert features[column("body_gyro_x_dominant_freq_hz")] == pytest.approx(5.0, abs=BIN_HZ)
    # nearly all its power is in the 3-6 Hz band, and the bands add up to the variance
    bands = [features[column(f"body_gyro_x_band_energy_{b}hz")] for b in
             ("0_1", "1_3", "3_6", "6_12", "12_25")]  # fmt: skip
    assert bands[2] > 0.9 * sum(bands)
    assert sum(bands) == pytest.approx(features[column("body_gyro_x_std")] ** 2, rel=1e-4)


def test_time_domain_statistics_equal_numpy(random_windows: np.ndarray) -> None:
    features = window_features(random_windows)
    w = random_windows.astype(np.float64)
    for i, channel in enumerate(CHANNELS):
        got = {
            s: features[:, column(f"{channel}_{s}")]
            for s in ("mean", "std", "min", "max", "median", "iqr")
        }
        np.testing.assert_allclose(got["mean"], w[:, :, i].mean(axis=1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["std"], w[:, :, i].std(axis=1), rtol=1e-5)
        np.testing.assert_allclose(got["min"], w[:, :, i].min(axis=1), rtol=1e-6)
        np.testing.assert_allclose(got["max"], w[:, :, i].max(axis=1), rtol=1e-6)
        np.testing.assert_allclose(got["median"], np.median(w[:, :, i], axis=1), rtol=1e-5)
        q25, q75 = np.percentile(w[:, :, i], [25, 75], axis=1)
        np.testing.assert_allclose(got["iqr"], q75 - q25, rtol=1e-5)
    corr = np.corrcoef(w[0, :, 0], w[0, :, 2])[0, 1]
    assert features[0, column("body_acc_corr_xz")] == pytest.approx(corr, rel=1e-4)


def test_gravity_direction_of_a_still_device() -> None:
    windows = np.zeros((2, 128, 9), np.float32)
    windows[:, :, 7] = -1.0  # total_acc = (0, -1, 0) g, body_acc = 0
    features = window_features(windows)[0]
    direction = [features[column(f"gravity_dir_{a}")] for a in "xyz"]
    angles = [features[column(f"gravity_angle_{a}")] for a in "xyz"]
    np.testing.assert_allclose(direction, [0.0, -1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(angles, [np.pi / 2, np.pi, np.pi / 2], atol=1e-5)
    assert features[column("total_acc_mag_mean")] == pytest.approx(1.0)


def test_classical_models_are_sklearn_estimators_and_import_without_keras() -> None:
    assert set(CLASSICAL_BASELINES) == {"KNN", "XGBoost", "Random Forest", "SVM", "Extra Trees"}
    assert set(DETERMINISTIC_BASELINES) <= set(CLASSICAL_BASELINES)
    for name in ("KNN", "SVM", "Random Forest", "Extra Trees"):
        model = CLASSICAL_BASELINES[name](3)
        assert hasattr(model, "fit")
        assert hasattr(model, "predict")
    assert CLASSICAL_BASELINES["Random Forest"](3).random_state == 3  # type: ignore[attr-defined]
    if "keras" not in sys.modules:  # only meaningful when nothing else loaded it first
        assert "tensorflow" not in sys.modules
