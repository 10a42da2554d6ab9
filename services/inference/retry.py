"""When and how long to retry a model-server call. Pure: no gRPC import, codes are names."""

from __future__ import annotations

import random
from dataclasses import dataclass

#: gRPC status codes (names) of a transient condition: the server is down, overloaded or
#: slow, a retry is expected to cure it.
RETRIABLE_CODES: frozenset[str] = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}
)
#: The only status that can be caused by the windows of a Predict request: the batch is
#: bisected to find the bad windows, which go to the dead-letter topic. Every other status
#: (NOT_FOUND while a version is unloaded in a rollout, FAILED_PRECONDITION, INTERNAL,
#: UNKNOWN, CANCELLED, UNIMPLEMENTED, ...) concerns the model or server as a whole: dead-
#: lettering the windows would turn the stream into dead letters, so Predict retries them
#: with backoff like UNAVAILABLE (an operator must fix the server; nothing is lost).
REQUEST_CODES: frozenset[str] = frozenset({"INVALID_ARGUMENT"})


def is_retriable(code: str) -> bool:
    """Whether gRPC status ``code`` (name) is transient (the server is down, overloaded or
    slow). Start-up waits on these only; Predict retries every code that
    :func:`concerns_whole_model`."""
    return code in RETRIABLE_CODES


def concerns_whole_model(code: str) -> bool:
    """Whether a Predict that failed with gRPC status ``code`` (name) failed because of the
    model or server rather than the windows sent: retry the batch, do not dead-letter it."""
    return code not in REQUEST_CODES


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
