"""The failed-authentication limit shared by ingest and the alert API, the problem bytes the
common listener writes, and the alert API's listener settings. No I/O."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from services.alerting.api import AUTH_RATE_LIMITED, listener_problem
from services.alerting.settings import AlertingSettings
from services.common.authlimit import (
    GO,
    MAX_RETRY_AFTER_S,
    WAIT,
    AuthFailureLimit,
    OverBudgetError,
    retry_after_s,
)
from services.common.http_server import ListenerLimits, auth_screen, raw_problem


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_check_and_failed_block_an_address_until_its_bucket_refills() -> None:
    clock = Clock()
    limit = AuthFailureLimit(0.5, 3, clock)
    for _ in range(3):
        limit.check("198.51.100.1")  # never raises while there is budget, takes nothing
        limit.failed("198.51.100.1")
    with pytest.raises(OverBudgetError) as over:
        limit.check("198.51.100.1")
    assert over.value.retry_after == 2  # one failure back after 1 / 0.5 s
    assert "retry in 2 s" in str(over.value)
    limit.check("198.51.100.2")  # other addresses are not affected
    limit.failed("198.51.100.1")  # past the budget: owes nothing
    clock.now += 2.0
    limit.check("198.51.100.1")


def test_checks_that_pass_take_nothing() -> None:
    # Operators sharing an address (a NAT) send any number of valid requests at once.
    limit = AuthFailureLimit(0.001, 2, Clock())
    for _ in range(1000):
        limit.check("10.0.0.1")
    limit.failed("10.0.0.1")
    limit.failed("10.0.0.1")
    with pytest.raises(OverBudgetError):
        limit.check("10.0.0.1")


def test_lookups_in_flight_hold_slots_and_only_failures_spend_the_budget() -> None:
    limit = AuthFailureLimit(1.0, 2, Clock())
    assert limit.begin("a") == GO
    assert limit.begin("a") == GO
    # Two lookups in flight could both fail and spend the budget: a third waits, it is
    # not refused (devices joining together from one address all get in).
    assert limit.begin("a") == WAIT
    assert limit.blocked_for("a") is None  # nothing failed: new connections are served
    limit.end("a", failed=False)
    assert limit.in_flight("a") == 1
    assert limit.begin("a") == GO
    for _ in range(1000):  # any number of valid lookups cost nothing
        limit.end("a", failed=False)
        assert limit.begin("a") == GO
    limit.end("a", failed=True)
    limit.end("a", failed=True)
    assert limit.in_flight("a") == 0
    assert limit.begin("a") == 1  # failures spent it: 429, Retry-After 1 s
    assert limit.over_budget("a") == 1 and limit.blocked_for("a") == 1
    assert limit.begin("b") == GO  # other addresses are not affected


def test_a_failure_while_others_are_in_flight_leaves_fewer_slots() -> None:
    clock = Clock()
    limit = AuthFailureLimit(1.0, 3, clock)
    assert [limit.begin("a") for _ in range(4)] == [GO, GO, GO, WAIT]
    limit.end("a", failed=True)  # two failures left, two lookups in flight: still full
    assert limit.begin("a") == WAIT
    limit.end("a", failed=False)
    assert limit.begin("a") == GO
    clock.now += 1.0  # a failure back
    assert limit.begin("a") == GO
    assert limit.begin("a") == WAIT


def test_blocked_for_screens_peers_only_without_a_proxy_header() -> None:
    clock = Clock()
    direct = AuthFailureLimit(1.0, 1, clock)
    direct.failed("203.0.113.9")
    assert direct.blocked_for("203.0.113.9") == 1
    assert direct.blocked_for("203.0.113.10") is None
    # IPv6 clients are one bucket per /64
    direct.failed(direct.source("2001:db8::1", {}))
    assert direct.blocked_for("2001:db8::ffff") == 1
    behind = AuthFailureLimit(1.0, 1, clock, "X-Forwarded-For", "10.0.0.0/8")
    source = behind.source("10.1.1.1", {"X-Forwarded-For": "203.0.113.9"})
    assert source == "203.0.113.9"
    behind.failed(source)
    with pytest.raises(OverBudgetError):
        behind.check(source)
    assert behind.blocked_for("10.1.1.1") is None  # the proxy itself is never screened
    # from an untrusted peer the header is the client's own claim
    assert behind.source("198.51.100.7", {"X-Forwarded-For": "1.2.3.4"}) == "198.51.100.7"


def test_retry_after_is_whole_seconds_within_an_hour() -> None:
    assert retry_after_s(0.01) == 1
    assert retry_after_s(1.2) == 2
    assert retry_after_s(float("inf")) == MAX_RETRY_AFTER_S


def test_raw_problems_carry_the_services_document() -> None:
    data = raw_problem(listener_problem, 408, "body_timeout", "too slow", {"X-a": "b"})
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 408 Request Timeout"
    assert "Content-Type: application/problem+json" in lines
    assert "Connection: close" in lines and "X-a: b" in lines
    assert f"Content-Length: {len(body)}" in lines
    assert json.loads(body) == {
        "type": "about:blank",
        "title": "Request Timeout",
        "status": 408,
        "detail": "too slow",
    }


def test_auth_screen_answers_a_blocked_address_with_a_canned_429() -> None:
    clock = Clock()
    limit = AuthFailureLimit(0.5, 1, clock)
    screened: list[int] = []
    screen = auth_screen(limit, listener_problem, AUTH_RATE_LIMITED, lambda: screened.append(1))
    assert screen("192.0.2.1") is None
    limit.failed("192.0.2.1")
    answer = screen("192.0.2.1")
    assert answer is not None and answer.startswith(b"HTTP/1.1 429 ")
    assert b"Retry-After: 2\r\n" in answer
    body = answer.partition(b"\r\n\r\n")[2]
    assert json.loads(body)["title"] == "Too many failed authentications"
    assert screen("192.0.2.1") is answer  # built once per Retry-After
    assert screened == [1, 1]


def test_alerting_listener_settings() -> None:
    settings = AlertingSettings()
    assert settings.listener_limits == ListenerLimits(10.0, 10.0, 15.0, 256)
    assert settings.max_body_bytes == 64 * 1024
    with pytest.raises(ValidationError, match="trusted_proxies"):
        AlertingSettings(client_ip_header="X-Forwarded-For")
    with pytest.raises(ValidationError, match="nonsense"):
        AlertingSettings(client_ip_header="X-Forwarded-For", trusted_proxies="nonsense")
