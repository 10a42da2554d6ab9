"""The one backoff policy: how long to wait before retry number n. Pure: no I/O, no clock.

Used for Kafka sends (:mod:`services.common.kafka.send`), the ingest producer's reconnects,
model-server calls, webhook deliveries and the load generator's retries alike.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffPolicy:
    """Exponential backoff with jitter.

    Attributes:
        initial_s: base wait before the first retry (seconds).
        max_s: cap on the base wait, and on a server's ``Retry-After`` (seconds).
        multiplier: growth of the base wait per retry.
        jitter: fraction of the base wait taken off at random (0: none, 1: "full jitter"),
            so replicas that failed together do not retry in lock-step.
    """

    initial_s: float = 0.2
    max_s: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError("need 0 < initial_s <= max_s")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")

    def base_delay(self, attempt: int) -> float:
        """Wait before retry number ``attempt`` (1-based) without jitter (seconds)."""
        if attempt < 1:
            raise ValueError("attempt is 1-based")
        # Cap the exponent, not just the result: 2.0 ** 2000 overflows a float.
        exponent = min(attempt - 1, 64)
        return min(self.max_s, self.initial_s * self.multiplier**exponent)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Wait before retry number ``attempt`` (1-based), jittered: within
        ``[(1 - jitter) * base, base]`` (seconds)."""
        return self.base_delay(attempt) * (1.0 - self.jitter * rng.random())

    def delay_or_retry_after(
        self, attempt: int, rng: random.Random, retry_after_s: float | None
    ) -> float:
        """:meth:`delay`, unless the server said when to come back (``Retry-After``, seconds):
        then that, within ``[0, max_s]`` (a server cannot park a client for hours)."""
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.max_s)
        return self.delay(attempt, rng)

    def delays(self, rng: random.Random) -> Iterator[float]:
        """The waits before retries 1, 2, 3, ... (jittered, seconds), without end: for a
        loop that retries until it succeeds or is stopped."""
        attempt = 0
        while True:
            attempt += 1
            yield self.delay(attempt, rng)
