"""The micro-batcher: size and wait bounds, FIFO order, revoked partitions."""

from __future__ import annotations

import pytest

from services.inference.batching import MicroBatcher


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_empty_batcher_is_never_ready() -> None:
    batcher: MicroBatcher[int] = MicroBatcher(4, 0.05, Clock())
    assert batcher.time_until_ready() is None
    assert not batcher.ready()
    assert batcher.take() == []
    assert batcher.capacity == 4


def test_size_bound_makes_a_batch_ready_at_once() -> None:
    clock = Clock()
    batcher: MicroBatcher[int] = MicroBatcher(3, 10.0, clock)
    for i in range(2):
        batcher.add(i)
    assert not batcher.ready()
    assert batcher.time_until_ready() == pytest.approx(10.0)
    batcher.add(2)
    assert batcher.ready()
    assert batcher.capacity == 0
    assert [q.item for q in batcher.take()] == [0, 1, 2]
    assert len(batcher) == 0


def test_wait_bound_counts_from_the_oldest_entry() -> None:
    clock = Clock()
    batcher: MicroBatcher[str] = MicroBatcher(64, 0.05, clock)
    batcher.add("a")
    clock.now = 0.03
    batcher.add("b")  # a newer entry does not restart the wait
    assert batcher.time_until_ready() == pytest.approx(0.02)
    assert not batcher.ready()
    clock.now = 0.05
    assert batcher.ready()
    taken = batcher.take()
    assert [(q.item, q.enqueued_at) for q in taken] == [("a", 0.0), ("b", 0.03)]


def test_take_returns_at_most_max_size_oldest_first() -> None:
    clock = Clock()
    batcher: MicroBatcher[int] = MicroBatcher(2, 1.0, clock)
    for i in range(5):
        batcher.add(i)
    assert [q.item for q in batcher.take()] == [0, 1]
    assert [q.item for q in batcher.take()] == [2, 3]
    assert len(batcher) == 1
    assert not batcher.ready()  # one entry, wait not over
    clock.now = 1.0
    assert [q.item for q in batcher.take()] == [4]


def test_zero_wait_sends_whatever_is_queued() -> None:
    batcher: MicroBatcher[int] = MicroBatcher(64, 0.0, Clock())
    batcher.add(1)
    assert batcher.ready()


def test_drop_removes_rejected_entries_and_keeps_order() -> None:
    batcher: MicroBatcher[tuple[int, int]] = MicroBatcher(8, 1.0, Clock())
    for partition, offset in [(0, 1), (1, 1), (0, 2), (2, 1)]:
        batcher.add((partition, offset))
    assert batcher.drop(lambda item: item[0] != 0) == 2
    assert [q.item for q in batcher.take()] == [(1, 1), (2, 1)]


@pytest.mark.parametrize(("size", "wait"), [(0, 0.05), (4, -1.0)])
def test_rejects_bad_bounds(size: int, wait: float) -> None:
    with pytest.raises(ValueError):
        MicroBatcher(size, wait, Clock())
