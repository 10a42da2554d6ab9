"""The per-address limit on failed authentications: the bucket check, the client address
behind trusted proxies, and the settings that configure them."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from services.common.clientaddr import client_address, limit_key, parse_networks
from services.common.ratelimit import RateLimiter
from services.ingest.settings import IngestSettings


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_failures_past_the_burst_block_until_refilled() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    for _ in range(3):
        assert limiter.acquire("a", 1).allowed
    blocked = limiter.acquire("a", 1)
    assert not blocked.allowed and blocked.retry_after_s == pytest.approx(0.5)
    assert limiter.acquire("b", 1).allowed  # another address is not affected
    clock.now += 0.5
    assert limiter.acquire("a", 1).allowed
    assert math.isinf(limiter.acquire("a", 4).retry_after_s)


def test_attempts_that_authenticate_are_given_back() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=0.001, burst=2, clock=clock)
    for _ in range(100):  # a device with a valid token: take before the lookup, refund after
        assert limiter.acquire("10.0.0.1", 1).allowed
        limiter.refund("10.0.0.1", 1)
    assert limiter.acquire("10.0.0.1", 1).allowed
    assert limiter.acquire("10.0.0.1", 1).allowed
    assert not limiter.acquire("10.0.0.1", 1).allowed
    assert limiter.prune(clock.now + 1e6) == 1  # full buckets are forgotten


def test_client_address_is_the_peer_unless_a_trusted_proxy_forwards() -> None:
    trusted = parse_networks("10.0.0.0/8, 192.0.2.7")
    # no proxies configured, or an untrusted peer: the header is the client's own claim
    assert client_address("203.0.113.5", "1.2.3.4", ()) == "203.0.113.5"
    assert client_address("203.0.113.5", "1.2.3.4", trusted) == "203.0.113.5"
    # a trusted proxy: the rightmost address that is not one of ours
    assert client_address("10.1.2.3", "198.51.100.9", trusted) == "198.51.100.9"
    assert client_address("10.1.2.3", "6.6.6.6, 198.51.100.9, 192.0.2.7", trusted) == (
        "198.51.100.9"
    )
    assert client_address("10.1.2.3", "10.0.0.1, 10.0.0.2", trusted) == "10.0.0.1"
    # garbage a client put in the list ends the walk at the peer
    assert client_address("10.1.2.3", "not-an-ip", trusted) == "10.1.2.3"
    assert client_address("10.1.2.3", None, trusted) == "10.1.2.3"
    assert client_address(None, None, trusted) == "unknown"


def test_limit_key_groups_ipv6_by_64() -> None:
    assert limit_key("127.0.0.2") == "127.0.0.2"
    assert limit_key("2001:db8:1:2:aaaa::1") == limit_key("2001:db8:1:2:bbbb::2")
    assert limit_key("2001:db8:1:2::1") != limit_key("2001:db8:1:3::1")
    assert limit_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert limit_key("unknown") == "unknown"


def test_settings_refuse_a_client_ip_header_without_trusted_proxies() -> None:
    with pytest.raises(ValidationError, match="trusted_proxies"):
        IngestSettings(client_ip_header="X-Forwarded-For")
    with pytest.raises(ValidationError, match="not an address"):
        IngestSettings(trusted_proxies="10.0.0.0/8, nonsense")
    settings = IngestSettings(client_ip_header="X-Forwarded-For", trusted_proxies="10.0.0.0/8")
    assert settings.trusted_proxies == "10.0.0.0/8"
    limits = IngestSettings().listener_limits
    assert (limits.header_timeout_s, limits.body_timeout_s) == (10.0, 30.0)


def test_wait_s_reads_the_bucket_without_taking_or_storing() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock)
    assert limiter.wait_s("new") == 0.0 and len(limiter) == 0
    limiter.acquire("a", 1)
    limiter.acquire("a", 1)
    assert limiter.wait_s("a") == pytest.approx(1.0)
    assert limiter.wait_s("a") == pytest.approx(1.0)  # asking again took nothing
    clock.now += 1.0
    assert limiter.wait_s("a") == 0.0
    assert math.isinf(limiter.wait_s("a", 3))
