"""The load generator's own benchmark in a short form: a small fleet against each sink (the
bare asyncio protocol and the bare aiohttp app). Checks that every request was answered and
the figures add up, never how fast anything was (the machine is shared)."""

from __future__ import annotations

import pytest

from benchmarks.capacity_loadgen import main


@pytest.mark.parametrize("sink", ["protocol", "aiohttp"])
def test_a_small_fleet_is_answered_by_each_sink(sink: str) -> None:
    figures = main(
        [
            "--devices",
            "20",
            "--seconds",
            "3",
            "--warmup-s",
            "2",
            "--processes",
            "1",
            "--sink",
            sink,
        ]
    )
    assert figures["sink"] == sink
    assert figures["failed"] == 0 and figures["retries"] == 0
    # 20 packets/s is nothing for either sink: all of the schedule is answered (the margin
    # is the edges of the measured interval, not the sink)
    assert figures["accepted_per_s"] >= 0.8 * figures["offered_per_s"] > 0
    assert figures["sink_cpu_us_per_request"] > 0


def test_the_aiohttp_sink_does_not_take_gateways() -> None:
    with pytest.raises(SystemExit):
        main(["--sink", "aiohttp", "--gateways", "5"])
