"""A small TTL + LRU cache for registry lookups. Pure: the clock is injected."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Entries expire ``ttl_s`` after they were stored; at most ``max_size`` are kept."""

    def __init__(self, ttl_s: float, max_size: int, clock: Callable[[], float]) -> None:
        self._ttl_s = ttl_s
        self._max_size = max_size
        self._clock = clock
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K) -> tuple[bool, V | None]:
        """``(True, value)`` if cached and fresh, else ``(False, None)``."""
        item = self._data.get(key)
        if item is None:
            return False, None
        expires, value = item
        if self._clock() >= expires:
            del self._data[key]
            return False, None
        self._data.move_to_end(key)
        return True, value

    def put(self, key: K, value: V) -> None:
        if self._ttl_s <= 0:
            return
        self._data[key] = (self._clock() + self._ttl_s, value)
        self._data.move_to_end(key)
        self._evict()

    def entries(self) -> list[tuple[K, V]]:
        """The fresh entries, least recently used first (expired ones are dropped)."""
        now = self._clock()
        expired = [key for key, (expires, _) in self._data.items() if now >= expires]
        for key in expired:
            del self._data[key]
        return [(key, value) for key, (_, value) in self._data.items()]

    def refresh(self, key: K, value: V, read_at: float) -> bool:
        """Store ``value``, read from the source at ``read_at`` (this cache's clock), to
        expire ``ttl_s`` after that read; unless the entry was stored after ``read_at``
        (it holds a newer answer). Its place in the LRU order is kept. Whether it was
        stored."""
        if self._ttl_s <= 0:
            return False
        current = self._data.get(key)
        if current is not None and current[0] - self._ttl_s > read_at:
            return False
        self._data[key] = (read_at + self._ttl_s, value)
        self._evict()
        return True

    def _evict(self) -> None:
        """Drop the least recently used entries beyond ``max_size``."""
        while len(self._data) > self._max_size:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()
