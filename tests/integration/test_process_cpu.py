"""The benchmarks' one reader of a process's CPU time, against /proc."""

from __future__ import annotations

import os
import time

from benchmarks.capacity_stats import process_cpu_seconds


def test_process_cpu_seconds_grows_with_the_work_done() -> None:
    before = process_cpu_seconds(os.getpid())
    spin_until = time.process_time() + 0.2
    while time.process_time() < spin_until:
        pass
    # Clock ticks are 10 ms: allow two of them for rounding at each end.
    assert process_cpu_seconds(os.getpid()) - before >= 0.18
