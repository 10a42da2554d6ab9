"""Retry policy: which gRPC codes are retried, exponential backoff with jitter."""

from __future__ import annotations

import random

import pytest

from services.inference.retry import BackoffPolicy, concerns_whole_model, is_retriable


@pytest.mark.parametrize("code", ["UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"])
def test_outage_codes_are_retriable(code: str) -> None:
    assert is_retriable(code)


@pytest.mark.parametrize(
    "code", ["INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "INTERNAL", "OK"]
)
def test_other_codes_are_not_transient(code: str) -> None:
    assert not is_retriable(code)


@pytest.mark.parametrize(
    "code",
    ["UNAVAILABLE", "NOT_FOUND", "FAILED_PRECONDITION", "INTERNAL", "UNKNOWN", "CANCELLED"],
)
def test_only_invalid_argument_is_about_the_windows_sent(code: str) -> None:
    assert concerns_whole_model(code)
    assert not concerns_whole_model("INVALID_ARGUMENT")


def test_base_delay_doubles_up_to_the_cap() -> None:
    policy = BackoffPolicy(initial_s=0.2, max_s=10.0)
    assert [policy.base_delay(n) for n in range(1, 9)] == pytest.approx(
        [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    )
    assert policy.base_delay(10_000) == 10.0  # no overflow however long the outage


def test_jitter_stays_within_its_band_and_varies() -> None:
    policy = BackoffPolicy(initial_s=1.0, max_s=8.0, jitter=0.5)
    rng = random.Random(7)
    delays = [policy.delay(3, rng) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert max(delays) - min(delays) > 1.0  # spread, so replicas do not retry in lock-step


def test_no_jitter_is_deterministic() -> None:
    policy = BackoffPolicy(initial_s=0.5, max_s=4.0, jitter=0.0)
    assert policy.delay(2, random.Random()) == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [{"initial_s": 0.0}, {"initial_s": 2.0, "max_s": 1.0}, {"multiplier": 0.5}, {"jitter": 1.5}],
)
def test_rejects_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(**kwargs)


def test_attempts_are_one_based() -> None:
    with pytest.raises(ValueError):
        BackoffPolicy().base_delay(0)
