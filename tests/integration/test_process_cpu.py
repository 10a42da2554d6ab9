"""The benchmarks' one reader of a process's CPU time, against /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from benchmarks.capacity_stats import process_cpu_seconds, threads_cpu_seconds


def test_process_cpu_seconds_grows_with_the_work_done() -> None:
    before = process_cpu_seconds(os.getpid())
    spin_until = time.process_time() + 0.2
    while time.process_time() < spin_until:
        pass
    # Clock ticks are 10 ms: allow two of them for rounding at each end.
    assert process_cpu_seconds(os.getpid()) - before >= 0.18


SPINNER = """
import sys, time
print("ready", flush=True)
sys.stdin.readline()
start = time.process_time()
while time.process_time() < start + 0.003:  # under one 10 ms clock tick
    pass
print("done", time.process_time() - start, flush=True)
sys.stdin.readline()
"""


def test_threads_cpu_seconds_counts_a_few_milliseconds_that_ticks_would_miss() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", SPINNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == "ready\n"  # start-up is over; the child waits
        before = threads_cpu_seconds(child.pid)
        child.stdin.write("go\n")
        child.stdin.flush()
        spun = float(child.stdout.readline().split()[1])  # and it waits again
        spent = threads_cpu_seconds(child.pid) - before
        # The scheduler's count of a waiting process is up to date: the spin, plus the
        # microseconds of reading and answering the pipe.
        assert spun <= spent < spun + 0.002
    finally:
        child.kill()
        child.wait()
