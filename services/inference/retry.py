"""When and how long to retry a model-server call. Pure: no gRPC import, codes are names."""

from __future__ import annotations

import random
from dataclasses import dataclass

#: gRPC status codes (names) a retry can cure: the server is down, overloaded or slow. Any
#: other code (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, ...) fails the same way
#: again, so those windows go to the dead-letter topic instead.
RETRIABLE_CODES: frozenset[str] = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}
)


def is_retriable(code: str) -> bool:
    """Whether a call that failed with gRPC status ``code`` (name) is worth retrying."""
    return code in RETRIABLE_CODES


@dataclass(frozen=True)
class BackoffPolicy:
    """Exponential backoff with jitter.

    Attributes:
        initial_s: base wait before the first retry (seconds).
        max_s: cap on the base wait (seconds).
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
