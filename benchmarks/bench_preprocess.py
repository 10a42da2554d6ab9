"""Throughput of the streaming preprocessing core: one device at a time vs many per call;
and the windows' motion features, one window at a time vs a batch's windows at once."""

from __future__ import annotations

import time

import numpy as np

from shared.dsp import StreamingPreprocessor
from shared.features import motion_features, motion_features_many


def _best_of(fn, repeats: int = 3) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main(devices: int = 500, packets: int = 40, packet_size: int = 50) -> None:
    rng = np.random.default_rng(0)
    gravity_on_y = np.array([0, -1, 0, 0, 0, 0], dtype=np.float64)
    data = rng.normal(0, 0.3, (devices, packets * packet_size, 6)) + gravity_on_y
    pre = StreamingPreprocessor()
    samples = devices * packets * packet_size

    def one_by_one() -> None:
        states = [pre.new_state() for _ in range(devices)]
        for p in range(packets):
            for d in range(devices):
                states[d], _ = pre.process(
                    states[d], data[d, p * packet_size : (p + 1) * packet_size]
                )

    def batched() -> None:
        states = [pre.new_state() for _ in range(devices)]
        for p in range(packets):
            chunk = data[:, p * packet_size : (p + 1) * packet_size]
            results = pre.process_many(states, list(chunk))
            states = [s for s, _ in results]

    print(f"preprocess: {devices} devices × {packets} packets of {packet_size} samples (50 Hz)")
    for name, fn in (("one device per call", one_by_one), ("all devices per call", batched)):
        seconds = _best_of(fn)
        print(
            f"  {name:<22} {samples / seconds:>12,.0f} samples/s  "
            f"= {samples / seconds / 50:>8,.0f} live devices at 50 Hz"
        )

    features()


def features(windows: int = 800) -> None:
    """Side by side in one run: a live batch of 1,000 devices holds ~800 windows."""
    data = np.random.default_rng(1).normal(0, 0.5, (windows, 128, 9)).astype(np.float32)
    print(f"motion features of {windows} windows (medians of 5)")
    for name, fn in (
        ("one window per call", lambda: [motion_features(w) for w in data]),
        ("all windows per call", lambda: motion_features_many(data)),
    ):
        times = []
        for _ in range(5):
            started = time.process_time()
            fn()
            times.append(time.process_time() - started)
        print(f"  {name:<22} {float(np.median(times)) / windows * 1e6:>8.1f} µs of CPU per window")


if __name__ == "__main__":
    main()
