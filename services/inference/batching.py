"""Micro-batching across devices, bounded by size and by the wait of the oldest entry.

Pure: the clock is injected (seconds, monotonic), so tests drive time by hand.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Queued(Generic[T]):
    """An entry and when it joined the batch (clock seconds)."""

    item: T
    enqueued_at: float


class MicroBatcher(Generic[T]):
    """FIFO of entries; a batch is ready when it is full or its oldest entry waited long enough.

    FIFO matters beyond fairness: a batch is always the oldest entries, so after a batch is
    done every earlier entry of the same partition is done too, and committing the batch's
    highest offset + 1 per partition never skips an entry still queued.
    """

    def __init__(self, max_size: int, max_wait_s: float, clock: Callable[[], float]) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._queue: deque[Queued[T]] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def capacity(self) -> int:
        """How many entries fit before the batch is full (never negative)."""
        return max(0, self.max_size - len(self._queue))

    def add(self, item: T) -> None:
        self._queue.append(Queued(item, self._clock()))

    def time_until_ready(self) -> float | None:
        """Seconds until a batch is ready: 0 if it is now, ``None`` if nothing is queued."""
        if not self._queue:
            return None
        if len(self._queue) >= self.max_size:
            return 0.0
        return max(0.0, self._queue[0].enqueued_at + self.max_wait_s - self._clock())

    def ready(self) -> bool:
        return self.time_until_ready() == 0.0

    def take(self) -> list[Queued[T]]:
        """The oldest ``max_size`` entries (fewer if fewer are queued), removed from the queue."""
        count = min(self.max_size, len(self._queue))
        return [self._queue.popleft() for _ in range(count)]

    def drop(self, keep: Callable[[T], bool]) -> int:
        """Remove the entries ``keep`` rejects (e.g. of revoked partitions); returns how many."""
        before = len(self._queue)
        self._queue = deque(q for q in self._queue if keep(q.item))
        return before - len(self._queue)
