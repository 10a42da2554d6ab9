"""Throughput of an exported model's serving signature, in process (what the model card and
``make bench`` report).

Figures depend on what else the machine is doing: every measurement carries the CPU count
and the load average at the time it was taken, so a number from a busy machine says so.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.training.export import INPUT_KEY, PROBABILITIES_KEY, SIGNATURE_NAME

#: Batch sizes measured: one window (a lone device), the inference worker's batch, a big one.
DEFAULT_BATCHES: tuple[int, ...] = (1, 64, 256)


def measure_signature(
    version_dir: Path,
    batch_sizes: Sequence[int] = DEFAULT_BATCHES,
    seconds: float = 3.0,
    repeats: int = 3,
) -> dict[str, Any]:
    """Windows/s and median batch latency of ``serving_default`` at each batch size.

    Each batch size runs ``repeats`` rounds of ``seconds`` after a warm-up; the best round
    counts (the least disturbed by other processes on a shared machine).
    """
    import tensorflow as tf

    signature = tf.saved_model.load(str(version_dir)).signatures[SIGNATURE_NAME]
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {}
    for batch in batch_sizes:
        x = tf.constant(rng.normal(0, 0.3, (batch, 128, 9)).astype(np.float32))
        for _ in range(5):  # warm-up: graph tracing and allocation
            signature(**{INPUT_KEY: x})
        best_rate, best_latencies = 0.0, [0.0]
        for _ in range(repeats):
            done, latencies = 0, []
            started = time.perf_counter()
            while time.perf_counter() - started < seconds:
                t0 = time.perf_counter()
                signature(**{INPUT_KEY: x})[PROBABILITIES_KEY].numpy()
                latencies.append(time.perf_counter() - t0)
                done += batch
            rate = done / (time.perf_counter() - started)
            if rate > best_rate:
                best_rate, best_latencies = rate, latencies
        results[str(batch)] = {
            "windows_per_second": round(best_rate),
            "p50_ms_per_batch": round(1000 * float(np.median(best_latencies)), 3),
        }
    return {
        "batches": results,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "method": (f"serving_default in process, best of {repeats} × {seconds:g} s per batch size"),
    }
