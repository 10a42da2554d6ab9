"""The py-spy tables of the benchmarks count busy samples only (no profiler needed)."""

from __future__ import annotations

from benchmarks.capacity_profile import top_frames

RAW = [
    # uvloop's compiled loop under Runner.run: waiting in epoll (idle).
    "process 1:python;thread (1): MainThread;<module> (services/cli.py:3);"
    "Runner.run (/usr/lib/python3.11/asyncio/runners.py:118) 60",
    # asyncio's own loop waiting in its selector (idle).
    "thread (1): MainThread;Runner.run (/usr/lib/python3.11/asyncio/runners.py:118);"
    "EpollSelector.select (/usr/lib/python3.11/selectors.py:468) 5",
    # The handler at work under the loop (busy).
    "thread (1): MainThread;Runner.run (/usr/lib/python3.11/asyncio/runners.py:118);"
    "IngestService._accept (/work/main/services/ingest/app.py:570);"
    "validate_packet (/work/main/services/ingest/validation.py:218) 30",
    "thread (1): MainThread;Runner.run (/usr/lib/python3.11/asyncio/runners.py:118);"
    "IngestService._accept (/work/main/services/ingest/app.py:590) 10",
]


def test_samples_in_the_loops_idle_wait_are_left_out() -> None:
    busy, idle, own, inclusive = top_frames(RAW)
    assert (busy, idle) == (40, 65)
    assert own["validate_packet (services/ingest/validation.py)"] == 30
    assert own["IngestService._accept (services/ingest/app.py)"] == 10
    assert inclusive["IngestService._accept (services/ingest/app.py)"] == 40
    assert "Runner.run (asyncio/runners.py)" not in own
