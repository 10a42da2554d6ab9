"""Which gRPC codes are retried (the backoff itself: tests/unit/test_kafka_edge.py)."""

from __future__ import annotations

import pytest

from services.inference.retry import concerns_whole_model, is_retriable


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
