"""Expected windows: what a faultless preprocess worker makes from the accepted packets."""

from __future__ import annotations

import numpy as np
import pytest

from services.demo.replay import SimulatedDevice
from services.faults.expect import expected_window_ids, packets_sent, worker_stream_config
from services.preprocess.settings import PreprocessSettings
from shared.dsp.preprocessor import StreamingPreprocessor

START = 1_700_000_000.0


def _device(name: str, seconds: float, seed: int = 0) -> SimulatedDevice:
    n = round(seconds * 50)
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 50
    samples = np.column_stack(
        [
            1.0 + 0.3 * np.sin(2 * np.pi * 1.8 * t),
            0.1 * np.cos(2 * np.pi * 1.8 * t),
            0.05 * rng.standard_normal(n),
            0.5 * np.sin(2 * np.pi * 0.9 * t),
            0.02 * rng.standard_normal(n),
            0.02 * rng.standard_normal(n),
        ]
    )
    return SimulatedDevice(name, samples, np.full(n, 1, dtype=np.int16))


def test_every_packet_once_gives_the_offline_windows_of_the_recording() -> None:
    device = _device("d", 20)
    packets = packets_sent([device], START, {"d": range(20)})
    assert [p.seq for p in packets] == list(range(20))
    assert packets[3].first_sample_time == START + 3.0
    assert np.array_equal(packets[3].samples, device.samples[150:200])
    pre = StreamingPreprocessor()
    _, offline = pre.process(pre.new_state(), device.samples)
    assert expected_window_ids(packets) == {f"d:{s}" for s in offline.start_indices}
    assert len(offline) == (1000 - 128) // 64 + 1


def test_order_and_devices_do_not_matter_only_seq_does() -> None:
    a, b = _device("a", 12, seed=1), _device("b", 12, seed=2)
    packets = packets_sent([a, b], START, {"a": range(12), "b": range(12)})
    shuffled = list(reversed(packets))
    assert expected_window_ids(shuffled) == expected_window_ids(packets)
    assert {i.split(":")[0] for i in expected_window_ids(packets)} == {"a", "b"}


def test_a_packet_never_accepted_is_a_gap_windows_restart_on_the_next_packet() -> None:
    device = _device("d", 30)
    full = expected_window_ids(packets_sent([device], START, {"d": range(30)}))
    holed = expected_window_ids(packets_sent([device], START, {"d": set(range(30)) - {10}}))
    # Windows before the gap are unchanged; none covers packet 10 (samples 500-549); after
    # it the filters restart at packet 11 (sample 550), so ids there are off the 64 grid.
    before = {i for i in full if int(i.split(":")[1]) + 128 <= 500}
    assert before <= holed
    after = sorted(int(i.split(":")[1]) for i in holed - before)
    assert after[0] == 550
    assert all(s >= 550 for s in after)
    assert all((s - 550) % 64 == 0 for s in after)


def test_a_device_that_stopped_early_only_has_its_own_windows() -> None:
    device = SimulatedDevice(
        "s", _device("s", 30).samples, np.zeros(1500, dtype=np.int16), stop_after_samples=500
    )
    packets = packets_sent([device], START, {"s": range(100)})
    assert len(packets) == 10
    assert len(expected_window_ids(packets)) == (500 - 128) // 64 + 1


def test_the_stream_rules_are_the_workers_defaults() -> None:
    config = worker_stream_config()
    defaults = PreprocessSettings.model_fields
    assert config.gap_threshold_s == defaults["gap_threshold_s"].default
    assert config.reorder_max_packets == defaults["reorder_max_packets"].default


def test_a_packet_the_worker_would_reject_is_an_error_not_a_silent_drop() -> None:
    device = _device("d", 3)
    packets = packets_sent([device], START, {"d": range(3)})
    bad = packets[1]
    object.__setattr__(bad, "samples", bad.samples * np.nan)
    with pytest.raises(ValueError, match="d:1"):
        expected_window_ids(packets)
