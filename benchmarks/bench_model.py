"""Throughput of an exported SavedModel's serving signature, in process.

``python -m benchmarks.bench_model [MODEL_DIR ...]`` (default: the newest version under
models/har). Several directories are measured one after the other in the same process, so
their figures are comparable even on a busy machine.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MODEL_BASE = Path(__file__).resolve().parent.parent / "models" / "har"


def main(paths: tuple[Path, ...] = (MODEL_BASE,), seconds: float = 3.0) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from services.training.evaluate import resolve_version_dir
    from services.training.throughput import measure_signature

    for path in paths:
        version_dir = resolve_version_dir(path)
        figures = measure_signature(version_dir, seconds=seconds)
        print(
            f"model: {version_dir} ({figures['method']}, {figures['cpus']} CPUs, "
            f"load average {figures['load_average_1min']})"
        )
        for batch, row in figures["batches"].items():
            print(
                f"  batch {int(batch):>4}: {row['windows_per_second']:>9,} windows/s   p50 "
                f"{row['p50_ms_per_batch']:6.2f} ms/batch"
            )


if __name__ == "__main__":
    main(tuple(Path(p) for p in sys.argv[1:]) or (MODEL_BASE,))
