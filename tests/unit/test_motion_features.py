"""The per-window motion features, one window at a time and many at once."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.features import motion_features, motion_features_many


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.floats(0.01, 4.0), st.integers(0, 2**32 - 1))
def test_many_windows_at_once_equal_each_window_alone(n: int, scale: float, seed: int) -> None:
    windows = np.random.default_rng(seed).normal(0, scale, (n, 128, 9)).astype(np.float32)
    assert motion_features_many(windows) == [motion_features(w) for w in windows]


def test_known_values_of_a_still_upright_window_and_a_flat_one() -> None:
    still = np.zeros((128, 9), dtype=np.float32)
    still[:, 6] = 1.0  # 1 g along x, the upright waist phone's vertical
    flat = np.zeros((128, 9), dtype=np.float32)  # a dead sensor: no gravity at all
    upright, dead = motion_features_many(np.stack([still, flat]))
    assert (upright.peak_acc_g, upright.min_acc_g, upright.upright_cosine) == (1.0, 1.0, 1.0)
    assert upright.acc_std_g == 0.0 and upright.movement_energy == 0.0
    assert dead.upright_cosine == 0.0 and dead.max_abs_acc_g == 0.0
    assert upright.gyro_std_rad_s == 0.0 and dead.gyro_std_rad_s == 0.0


def test_gyro_spread_is_the_largest_axis_standard_deviation() -> None:
    window = np.zeros((128, 9), dtype=np.float32)
    window[:, 6] = 1.0
    window[::2, 4] = 0.1  # y alternates 0 / 0.1 rad/s: std 0.05
    window[:, 5] = 0.3  # z stuck at 0.3 rad/s: std 0
    assert motion_features(window).gyro_std_rad_s == pytest.approx(0.05)
    assert motion_features_many(np.zeros((0, 128, 9))) == []


def test_a_window_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="windows"):
        motion_features_many(np.zeros((128, 9)))
