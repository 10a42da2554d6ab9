"""services.common.broker.choose_port: service ports come from below the kernel's ephemeral
range, where outgoing connections never take them between choice and bind."""

from __future__ import annotations

import random

from services.common.broker import LOWEST_CHOSEN_PORT, choose_port


def test_ports_are_chosen_below_the_ephemeral_range() -> None:
    rng = random.Random(0)
    ports = [choose_port(rng, 32768, ()) for _ in range(2000)]
    assert all(p is not None and LOWEST_CHOSEN_PORT <= p < 32768 for p in ports)
    assert len(set(ports)) > 1500  # spread over the range, not a fixed few


def test_a_recently_handed_out_port_is_not_handed_out_again() -> None:
    rng = random.Random(1)
    low = LOWEST_CHOSEN_PORT + 2100
    recent = set(range(LOWEST_CHOSEN_PORT, low - 1))  # all but one
    assert choose_port(rng, low, recent) == low - 1


def test_the_kernel_chooses_when_little_room_is_left_below_its_range() -> None:
    assert choose_port(random.Random(0), 1024, ()) is None
    assert choose_port(random.Random(0), LOWEST_CHOSEN_PORT + 1999, ()) is None
