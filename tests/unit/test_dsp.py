"""The streaming preprocessing core: filters, windows, state, chunk invariance."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view
from scipy import signal

from shared.dsp import DeviceState, PreprocessingConfig, StreamingPreprocessor, Windows
from shared.dsp.preprocessor import causal_median
from shared.errors import PreprocessingError, StateDecodeError

RATE = 50.0
CONFIG = PreprocessingConfig()


def imu_signal(n: int, seed: int = 0) -> np.ndarray:
    """A plausible waist IMU: gravity on y, a 2 Hz gait, noise; (n, 6) in g and rad/s."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / RATE
    acc = np.stack(
        [
            0.1 * np.sin(2 * np.pi * 2 * t),
            -0.98 + 0.2 * np.sin(2 * np.pi * 2 * t + 1),
            0.15 + 0.05 * np.cos(2 * np.pi * 1 * t),
        ],
        axis=1,
    )
    gyro = np.stack([0.5 * np.sin(2 * np.pi * 2 * t + k) for k in range(3)], axis=1)
    return np.concatenate([acc, gyro], axis=1) + rng.normal(0, 0.02, (n, 6))


def run_whole(samples: np.ndarray) -> tuple[DeviceState, Windows]:
    pre = StreamingPreprocessor(CONFIG)
    return pre.process(pre.new_state(), samples)


def run_chunked(samples: np.ndarray, sizes: list[int]) -> tuple[DeviceState, Windows]:
    pre = StreamingPreprocessor(CONFIG)
    state, parts, i = pre.new_state(), [], 0
    for size in sizes:
        state, windows = pre.process(state, samples[i : i + size])
        parts.append(windows)
        i += size
    return state, Windows.concat(parts, CONFIG.window_size)


# --- filters ------------------------------------------------------------------------------


def test_noise_filter_attenuates_a_24_hz_tone() -> None:
    t = np.arange(2000) / RATE
    tone = np.sin(2 * np.pi * 24.0 * t)
    samples = np.zeros((t.size, 6))
    samples[:, 3] = tone  # gyro x: passes only median + noise filter
    _, windows = run_whole(samples)
    settled = windows.data[5:, :, 3]  # body gyro x, after the start-up
    # 3rd-order Butterworth at 20 Hz: 24 Hz is ~ -12 dB before the median filter helps.
    assert np.sqrt(np.mean(settled**2)) < 0.25 * np.sqrt(np.mean(tone**2))


def test_noise_filter_passes_a_2_hz_gait_tone() -> None:
    t = np.arange(2000) / RATE
    samples = np.zeros((t.size, 6))
    samples[:, 3] = np.sin(2 * np.pi * 2.0 * t)
    _, windows = run_whole(samples)
    rms = np.sqrt(np.mean(windows.data[5:, :, 3] ** 2))
    assert rms == pytest.approx(np.sqrt(0.5), rel=0.02)


def test_constant_gravity_passes_the_gravity_filter_and_body_acc_is_zero() -> None:
    samples = np.tile([0.1, -0.97, 0.2, 0.0, 0.0, 0.0], (1000, 1))
    _, windows = run_whole(samples)
    np.testing.assert_allclose(
        windows.data[:, :, 6:9],
        np.broadcast_to([0.1, -0.97, 0.2], (len(windows), 128, 3)),
        atol=1e-6,
    )
    np.testing.assert_allclose(windows.data[:, :, 0:3], 0.0, atol=1e-6)


def test_gravity_filter_separates_a_slow_tilt_from_fast_motion() -> None:
    t = np.arange(5000) / RATE
    gravity = np.stack([np.zeros_like(t), -np.ones_like(t), np.zeros_like(t)], axis=1)
    motion = 0.3 * np.sin(2 * np.pi * 3.0 * t)[:, None] * np.array([1.0, 0.0, 0.0])
    samples = np.concatenate([gravity + motion, np.zeros_like(gravity)], axis=1)
    _, windows = run_whole(samples)
    body_x = windows.data[10:, :, 0]
    total_y = windows.data[10:, :, 7]
    assert np.sqrt(np.mean(body_x**2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.05)
    np.testing.assert_allclose(total_y - windows.data[10:, :, 1], -1.0, atol=0.02)


def test_median_filter_removes_a_single_sample_spike() -> None:
    samples = np.tile([0.0, -1.0, 0.0, 0.0, 0.0, 0.0], (256, 1))
    samples[100, 3] = 50.0  # gyro glitch
    _, windows = run_whole(samples)
    assert np.abs(windows.data[:, :, 3]).max() < 1e-9


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from([-2.5, -1.0, -0.0, 0.0, 0.5, 1.0, 3.0]) | st.floats(-1e6, 1e6),
        min_size=3,
        max_size=60,
    ),
    st.sampled_from([1, 3, 5]),
)
def test_causal_median_is_numpys_median_of_each_run(values: list[float], kernel: int) -> None:
    # Ties, repeats and signed zeros included: the min/max network of kernel 3 must give the
    # very bits np.median gives (-0.0 == 0.0, so compare bytes), or windows would change.
    padded = np.array(values, dtype=np.float64).reshape(1, -1, 1).repeat(2, axis=2)
    padded[:, :, 1] *= -1.0
    if padded.shape[1] < kernel:
        return
    got = causal_median(padded, kernel)
    runs = sliding_window_view(padded, kernel, axis=1)
    expected = np.median(runs, axis=-1) if kernel > 1 else padded
    assert got.shape == (1, padded.shape[1] - kernel + 1, 2)
    assert got.tobytes() == np.ascontiguousarray(expected).tobytes()


def test_filters_are_causal() -> None:
    base = imu_signal(600)
    changed = base.copy()
    changed[400:] += 1.0
    _, a = run_whole(base)
    _, b = run_whole(changed)
    # windows that end before sample 400 cannot see the change
    ended_before = a.start_indices + CONFIG.window_size <= 400
    assert ended_before.sum() == 5  # starts 0, 64, 128, 192, 256
    np.testing.assert_array_equal(a.data[ended_before], b.data[ended_before])
    assert not np.array_equal(a.data[~ended_before], b.data[~ended_before])


# --- windows ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"), [(0, 0), (127, 0), (128, 1), (191, 1), (192, 2), (1000, 14)]
)
def test_window_count_and_starts(n: int, expected: int) -> None:
    _, windows = run_whole(imu_signal(n) if n else np.zeros((0, 6)))
    assert len(windows) == expected
    np.testing.assert_array_equal(windows.start_indices, 64 * np.arange(expected))
    assert windows.data.shape == (expected, 128, 9)
    assert windows.data.dtype == np.float32


def test_windows_overlap_by_half() -> None:
    _, windows = run_whole(imu_signal(512))
    np.testing.assert_array_equal(windows.data[1:, :64], windows.data[:-1, 64:])


def test_window_starts_at_the_expected_samples_when_packets_straddle_them() -> None:
    state, windows = run_chunked(imu_signal(300), [100, 100, 100])
    np.testing.assert_array_equal(windows.start_indices, [0, 64, 128])
    assert state.samples_seen == 300
    assert state.next_window_start == 192
    assert state.tail.shape == (108, 9)


# --- chunk invariance ---------------------------------------------------------------------

RECORDING = imu_signal(3000, seed=7)
_, WHOLE = run_whole(RECORDING)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=1, max_value=500), min_size=1, max_size=200))
def test_any_packet_sizes_give_exactly_the_windows_of_one_call(sizes: list[int]) -> None:
    total, cuts = 0, []
    for size in sizes:
        if total >= len(RECORDING):
            break
        cut = min(size, len(RECORDING) - total)
        cuts.append(cut)
        total += cut
    if total < len(RECORDING):
        cuts.append(len(RECORDING) - total)
    _, chunked = run_chunked(RECORDING, cuts)
    np.testing.assert_array_equal(chunked.start_indices, WHOLE.start_indices)
    np.testing.assert_array_equal(chunked.data, WHOLE.data)  # bit for bit


@settings(max_examples=25, deadline=None)
@given(
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=1, max_value=120),
    st.integers(min_value=0, max_value=10_000),
)
def test_many_devices_in_one_call_equal_each_device_alone(
    devices: int, packet: int, seed: int
) -> None:
    pre = StreamingPreprocessor(CONFIG)
    rng = np.random.default_rng(seed)
    streams = [imu_signal(600, seed=seed + d) for d in range(devices)]
    together = [pre.new_state() for _ in streams]
    alone = [pre.new_state() for _ in streams]
    out_together: list[list[Windows]] = [[] for _ in streams]
    out_alone: list[list[Windows]] = [[] for _ in streams]
    cursors = [0] * devices
    while min(cursors) < 600:
        # mostly equal packets (one vectorised group), sometimes a device sends another size
        sizes = [packet if rng.random() < 0.7 else int(rng.integers(1, 50)) for _ in streams]
        chunks = [s[c : c + n] for s, c, n in zip(streams, cursors, sizes, strict=True)]
        results = pre.process_many(together, chunks)
        for d, (state, windows) in enumerate(results):
            together[d] = state
            out_together[d].append(windows)
            alone[d], w = pre.process(alone[d], chunks[d])
            out_alone[d].append(w)
            cursors[d] += len(chunks[d])
    for d in range(devices):
        assert together[d].equals(alone[d])
        a = Windows.concat(out_together[d], 128)
        b = Windows.concat(out_alone[d], 128)
        np.testing.assert_array_equal(a.data, b.data)


# --- state --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 100, 128, 1000])
def test_state_round_trips_through_bytes(n: int) -> None:
    pre = StreamingPreprocessor(CONFIG)
    state, _ = pre.process(pre.new_state(), imu_signal(n) if n else np.zeros((0, 6)))
    data = state.to_bytes(CONFIG)
    restored = DeviceState.from_bytes(data, CONFIG)
    assert restored.equals(state)
    assert restored.to_bytes(CONFIG) == data
    assert len(data) < 5_000  # fits comfortably in a table row


def test_restored_state_continues_exactly() -> None:
    pre = StreamingPreprocessor(CONFIG)
    signal_ = imu_signal(1000)
    state, first = pre.process(pre.new_state(), signal_[:333])
    state = DeviceState.from_bytes(state.to_bytes(CONFIG), CONFIG)
    _, second = pre.process(state, signal_[333:])
    _, whole = run_whole(signal_)
    np.testing.assert_array_equal(Windows.concat([first, second], 128).data, whole.data)


def test_state_from_another_configuration_is_refused() -> None:
    pre = StreamingPreprocessor(CONFIG)
    state, _ = pre.process(pre.new_state(), imu_signal(200))
    other = PreprocessingConfig(gravity_cutoff_hz=0.5)
    with pytest.raises(StateDecodeError, match="preprocessing"):
        DeviceState.from_bytes(state.to_bytes(CONFIG), other)


@pytest.mark.parametrize(
    "damage", [lambda b: b[:10], lambda b: b[:-3], lambda b: b + b"x", lambda b: b"XXXX" + b[4:]]
)
def test_damaged_state_bytes_are_refused(damage) -> None:  # type: ignore[no-untyped-def]
    pre = StreamingPreprocessor(CONFIG)
    state, _ = pre.process(pre.new_state(), imu_signal(200))
    with pytest.raises(StateDecodeError):
        DeviceState.from_bytes(damage(state.to_bytes(CONFIG)), CONFIG)


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [np.zeros((10, 5)), np.zeros(6), [[np.nan] * 6], [[np.inf, 0, 0, 0, 0, 0]], [["a"] * 6]]
)
def test_malformed_samples_raise_a_clear_error_and_leave_state_alone(bad) -> None:  # type: ignore[no-untyped-def]
    pre = StreamingPreprocessor(CONFIG)
    state = pre.new_state()
    with pytest.raises(PreprocessingError):
        pre.process_many([state, state], [imu_signal(10), bad])


def test_fingerprint_changes_with_any_parameter() -> None:
    prints = {
        PreprocessingConfig().fingerprint,
        PreprocessingConfig(noise_cutoff_hz=19.0).fingerprint,
        PreprocessingConfig(window_step=32).fingerprint,
        PreprocessingConfig(median_kernel=5).fingerprint,
    }
    assert len(prints) == 4
    assert PreprocessingConfig().fingerprint == PreprocessingConfig().fingerprint


def test_filter_design_is_butterworth_of_the_stated_order() -> None:
    _, a = signal.butter(3, 0.3, fs=50.0)
    _, h = signal.sosfreqz(CONFIG.gravity_sos, worN=[0.3, 3.0], fs=50.0)
    assert abs(h[0]) == pytest.approx(1 / np.sqrt(2), rel=1e-6)  # -3 dB at the corner
    assert abs(h[1]) < 1e-2  # a 3 Hz step rhythm is gone from gravity
    assert CONFIG.noise_sos.shape == (2, 6)  # 3rd order = 2 second-order sections
    assert len(a) == 4
