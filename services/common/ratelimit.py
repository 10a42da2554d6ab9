"""Token buckets keyed by device (samples per second) or by source address (failed
authentications per second). Pure: the clock is injected."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate`` tokens per second."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, n: float, now: float) -> float:
        """Take ``n`` tokens if there are enough: returns 0.0; otherwise takes nothing and
        returns the seconds until there will be (``inf`` if ``n`` exceeds the burst)."""
        self._refill(now)
        if n <= self.tokens:
            self.tokens -= n
            return 0.0
        if n > self.burst:
            return math.inf
        return (n - self.tokens) / self.rate

    def give_back(self, n: float, now: float) -> None:
        self._refill(now)
        self.tokens = min(self.burst, self.tokens + n)

    def full_at(self) -> float:
        """When the bucket will be full again (clock time)."""
        return self.updated + (self.burst - self.tokens) / self.rate


@dataclass(frozen=True)
class Decision:
    allowed: bool
    #: Seconds until the same request would pass (0.0 when allowed).
    retry_after_s: float


class RateLimiter:
    """One token bucket per key (device id, source address), created full on first use.

    Buckets that have refilled completely are equivalent to new ones, so they are dropped
    when the table grows past ``max_keys``: memory stays bounded by the active devices.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        clock: Callable[[], float],
        max_keys: int = 100_000,
    ) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self.prune(now)
            bucket = TokenBucket(self.rate, self.burst, self.burst, now)
            self._buckets[key] = bucket
        return bucket

    def acquire(self, key: str, n: float) -> Decision:
        now = self._clock()
        wait = self._bucket(key, now).take(n, now)
        return Decision(allowed=wait == 0.0, retry_after_s=wait)

    def wait_s(self, key: str, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens could be taken for ``key`` (0.0: now), taking nothing
        and storing nothing: an unknown key has a full bucket."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0 if n <= self.burst else math.inf
        now = self._clock()
        bucket._refill(now)
        if n <= bucket.tokens:
            return 0.0
        return math.inf if n > self.burst else (n - bucket.tokens) / self.rate

    def refund(self, key: str, n: float) -> None:
        """Give back what an acquire took, when the request failed for another reason."""
        now = self._clock()
        self._bucket(key, now).give_back(n, now)

    def prune(self, now: float) -> int:
        """Drop the buckets that are full again; returns how many were dropped."""
        full = [k for k, b in self._buckets.items() if b.full_at() <= now]
        for key in full:
            del self._buckets[key]
        return len(full)
