"""The sitting/standing analysis on hand-made windows."""

from __future__ import annotations

import numpy as np
import pytest

from services.training.posture import (
    PROBES,
    SITTING,
    STANDING,
    gravity_directions,
    probe_model,
    render,
    subject_postures,
    yaw_rate_spread,
)
from shared.dataset import WindowSet

RATE_HZ = 50.0


def _window(tilt_degrees: float, yaw_amplitude: float) -> np.ndarray:
    """A still wearer: gravity tilted from x towards y, swaying about gravity."""
    t = np.arange(128) / RATE_HZ
    tilt = np.radians(tilt_degrees)
    up = np.array([np.cos(tilt), np.sin(tilt), 0.0])
    w = np.zeros((128, 9), np.float32)
    w[:, 6:9] = up
    w[:, 3:6] = yaw_amplitude * np.sin(2 * np.pi * 0.5 * t)[:, None] * up
    return w


def _windows() -> WindowSet:
    # subject 1 sits at 0° and stands at 10°; subject 2 the other way round, both sway
    # (yaw) more standing than sitting
    rows = [(1, SITTING, 0.0, 0.005), (1, STANDING, 10.0, 0.05)]
    rows += [(2, SITTING, 10.0, 0.005), (2, STANDING, 0.0, 0.05)]
    rows = [r for r in rows for _ in range(3)]
    x = np.stack([_window(tilt, yaw) for _, _, tilt, yaw in rows])
    n = len(rows)
    return WindowSet(
        x=x,
        y=np.array([r[1] for r in rows]),
        subject=np.array([r[0] for r in rows]),
        experiment=np.ones(n, np.int64),
        start=np.zeros(n, np.int64),
    )


def test_gravity_direction_and_yaw_spread() -> None:
    windows = _windows()
    np.testing.assert_allclose(gravity_directions(windows.x[:1]), [[1.0, 0.0, 0.0]], atol=1e-6)
    spread = yaw_rate_spread(windows.x)
    # a sine's standard deviation is its amplitude / sqrt(2)
    assert spread[0] == pytest.approx(0.005 / np.sqrt(2), rel=0.02)
    assert spread[3] == pytest.approx(0.05 / np.sqrt(2), rel=0.02)


def test_subject_postures_measure_tilt_and_sway_per_subject() -> None:
    postures = subject_postures(_windows())
    assert [p.subject for p in postures] == [1, 2]
    for p in postures:
        assert (p.sitting, p.standing) == (3, 3)
        assert p.tilt_degrees == pytest.approx(10.0, abs=1e-3)
        assert p.yaw_standing > 5 * p.yaw_sitting


def test_probes_show_what_a_classifier_relies_on() -> None:
    windows = _windows()

    def by_sway(x: np.ndarray) -> np.ndarray:
        """Calls standing when the body turns about gravity: blind to tilt."""
        probs = np.zeros((len(x), 6), np.float32)
        standing = yaw_rate_spread(x) > 0.01
        probs[standing, STANDING] = 1.0
        probs[~standing, SITTING] = 1.0
        return probs

    def by_tilt(x: np.ndarray) -> np.ndarray:
        """Calls standing when gravity leans towards y: right for subject 1 only."""
        probs = np.zeros((len(x), 6), np.float32)
        standing = gravity_directions(x)[:, 1] > np.sin(np.radians(5))
        probs[standing, STANDING] = 1.0
        probs[~standing, SITTING] = 1.0
        return probs

    sway = {r.probe: r for r in probe_model(by_sway, windows)}
    assert set(sway) == set(PROBES)
    assert sway["as recorded"].accuracy == 1.0
    assert sway["phone turned 20°"].accuracy == 1.0  # sway does not care how the phone sits
    assert sway["gyroscope silenced"].accuracy == 0.5  # everything called sitting
    assert sway["gyroscope silenced"].called_standing == 0.0
    tilt = {r.probe: r for r in probe_model(by_tilt, windows)}
    assert tilt["as recorded"].accuracy == 0.5
    assert tilt["gyroscope silenced"].accuracy == 0.5  # the gyro was never used
    text = render(subject_postures(windows), {"by sway": list(sway.values())}, "validation")
    assert "| 1 | 3 | 3 | 10.0 |" in text
    assert "| gyroscope silenced | 50.00% | 0.0% |" in text
