"""Slots for token lookups per address: valid devices joining together all get in, a flood
of guesses never has more lookups in flight than failures left, and is refused once they
are spent. asyncio only, the lookups are futures the test resolves."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.common.authlimit import AuthFailureLimit
from services.ingest.authgate import AddressBlocked, LookupGate


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _lookups(gate: LookupGate, source: str, n: int, valid: bool) -> tuple[list[str], int]:
    """``n`` concurrent lookups from ``source``, each one finishing only when the test lets
    it (one at a time, in the order they started); the outcomes, and the most in flight at
    once."""
    loop = asyncio.get_running_loop()
    in_flight = 0
    most = 0
    started: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()

    async def one() -> str:
        nonlocal in_flight, most
        try:
            await gate.enter(source)
        except AddressBlocked as blocked:
            return f"429 retry {blocked.retry_after}"
        in_flight += 1
        most = max(most, in_flight)
        finished: asyncio.Future[None] = loop.create_future()
        started.put_nowait(finished)
        await finished
        in_flight -= 1
        gate.leave(source, failed=not valid)
        return "ok" if valid else "401"

    everything = asyncio.gather(*(one() for _ in range(n)))
    while not everything.done():
        next_one = asyncio.ensure_future(started.get())
        waiting: set[asyncio.Future[Any]] = {next_one, everything}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if next_one.done():
            next_one.result().set_result(None)
        else:
            next_one.cancel()
    return everything.result(), most


def test_many_valid_devices_from_one_address_all_get_in() -> None:
    gate = LookupGate(AuthFailureLimit(1.0, 5, Clock()))
    outcomes, most = asyncio.run(_lookups(gate, "10.0.0.1", 200, valid=True))
    assert outcomes == ["ok"] * 200
    assert most == 5  # a slot per failure left, never more
    assert gate.waiting("10.0.0.1") == 0 and gate.limit.in_flight("10.0.0.1") == 0
    assert gate.limit.blocked_for("10.0.0.1") is None


def test_a_flood_of_guesses_spends_its_budget_and_is_refused() -> None:
    gate = LookupGate(AuthFailureLimit(0.001, 5, Clock()))
    outcomes, most = asyncio.run(_lookups(gate, "10.0.0.2", 200, valid=False))
    assert outcomes.count("401") == 5  # the burst, no overrun however many were in flight
    assert outcomes.count("429 retry 1000") == 195
    assert most <= 5
    assert gate.waiting("10.0.0.2") == 0 and gate.limit.in_flight("10.0.0.2") == 0
    assert gate.limit.blocked_for("10.0.0.2") == 1000


def test_a_cancelled_waiter_passes_its_wake_up_on() -> None:
    async def scenario() -> None:
        gate = LookupGate(AuthFailureLimit(1.0, 1, Clock()))
        await gate.enter("a")  # the one slot
        first = asyncio.create_task(gate.enter("a"))
        second = asyncio.create_task(gate.enter("a"))
        await asyncio.sleep(0)
        assert gate.waiting("a") == 2
        gate.leave("a", failed=False)  # wakes `first`...
        first.cancel()  # ...which goes away before it runs
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, 1.0)  # the wake-up reached the next waiter
        assert gate.limit.in_flight("a") == 1 and gate.waiting("a") == 0

    asyncio.run(scenario())
