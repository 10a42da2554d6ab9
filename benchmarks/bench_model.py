"""Throughput of the committed SavedModel's serving signature, in process."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

MODEL_BASE = Path(__file__).resolve().parent.parent / "models" / "har"


def main(batch_sizes: tuple[int, ...] = (1, 64, 256), seconds: float = 3.0) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from services.training.evaluate import resolve_version_dir
    from services.training.export import INPUT_KEY, SIGNATURE_NAME

    version_dir = resolve_version_dir(MODEL_BASE)
    signature = tf.saved_model.load(str(version_dir)).signatures[SIGNATURE_NAME]
    rng = np.random.default_rng(0)
    print(f"model: {version_dir} (serving_default, in process, {os.cpu_count()} CPUs)")
    for batch in batch_sizes:
        x = tf.constant(rng.normal(0, 0.3, (batch, 128, 9)).astype(np.float32))
        for _ in range(5):  # warm-up: graph tracing and allocation
            signature(**{INPUT_KEY: x})
        done, latencies = 0, []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            t0 = time.perf_counter()
            signature(**{INPUT_KEY: x})["probabilities"].numpy()
            latencies.append(time.perf_counter() - t0)
            done += batch
        rate = done / (time.perf_counter() - started)
        print(
            f"  batch {batch:>4}: {rate:>9,.0f} windows/s   p50 "
            f"{1000 * np.median(latencies):6.2f} ms/batch"
        )


if __name__ == "__main__":
    main()
