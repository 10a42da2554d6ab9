"""Rate limiter, tokens, lookup cache, device progress, settings and the OpenAPI document."""

from __future__ import annotations

import base64
import json
import math
import secrets

import pytest
from pydantic import ValidationError

from services.common.ratelimit import RateLimiter, TokenBucket
from services.ingest.cache import TtlCache
from services.ingest.progress import DeviceProgress
from services.ingest.schemas import PACKET_PROBLEMS, Packet, openapi_document
from services.ingest.settings import IngestSettings, default_registry_url
from services.ingest.tokens import (
    MIN_TOKEN_BITS,
    bearer_token,
    check_token_format,
    check_token_strength,
    estimated_bits,
    generate_token,
    hash_token,
    verify_token,
)
from services.ingest.validation import PacketLimits, ValidPacket, validate_packet


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- rate limiter --------------------------------------------------------------------------


def test_bucket_allows_burst_then_refills_at_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=100.0, burst=500.0, clock=clock)
    assert limiter.acquire("d", 300).allowed
    assert limiter.acquire("d", 200).allowed
    denied = limiter.acquire("d", 50)
    assert not denied.allowed
    assert denied.retry_after_s == pytest.approx(0.5)
    clock.now += 0.49
    assert not limiter.acquire("d", 50).allowed
    clock.now += 0.02
    assert limiter.acquire("d", 50).allowed


def test_denied_request_takes_nothing() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10.0, burst=100.0, clock=clock)
    assert limiter.acquire("d", 90).allowed
    for _ in range(5):
        assert not limiter.acquire("d", 50).allowed  # retries do not dig the hole deeper
    clock.now += 4.0
    assert limiter.acquire("d", 50).allowed


def test_bucket_never_exceeds_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10.0, burst=100.0, clock=clock)
    clock.now += 3600.0
    assert limiter.acquire("d", 100).allowed
    assert not limiter.acquire("d", 1).allowed


def test_more_than_burst_can_never_pass() -> None:
    limiter = RateLimiter(rate=10.0, burst=100.0, clock=Clock())
    decision = limiter.acquire("d", 101)
    assert not decision.allowed
    assert math.isinf(decision.retry_after_s)


def test_devices_have_separate_buckets() -> None:
    limiter = RateLimiter(rate=10.0, burst=100.0, clock=Clock())
    assert limiter.acquire("a", 100).allowed
    assert not limiter.acquire("a", 1).allowed
    assert limiter.acquire("b", 100).allowed


def test_refund_gives_tokens_back_up_to_burst() -> None:
    limiter = RateLimiter(rate=10.0, burst=100.0, clock=Clock())
    assert limiter.acquire("d", 100).allowed
    limiter.refund("d", 100)
    assert limiter.acquire("d", 100).allowed
    limiter.refund("d", 1000)
    assert not limiter.acquire("d", 101).allowed


def test_full_buckets_are_pruned_when_the_table_is_full() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10.0, burst=100.0, clock=clock, max_keys=3)
    for key in "abc":
        limiter.acquire(key, 50)
    clock.now += 10.0  # all refilled
    limiter.acquire("d", 1)
    assert len(limiter) == 1


def test_token_bucket_clock_going_backwards_is_harmless() -> None:
    bucket = TokenBucket(rate=10.0, burst=10.0, tokens=0.0, updated=100.0)
    assert bucket.take(1, 99.0) == pytest.approx(0.1)
    assert bucket.take(1, 100.2) == 0.0


# -- tokens ----------------------------------------------------------------------------------


def test_generated_tokens_are_random_and_long() -> None:
    tokens = {generate_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) >= 43 and check_token_format(t) is None for t in tokens)


def test_hash_and_verify() -> None:
    token = generate_token()
    digest = hash_token(token)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert digest != token
    assert verify_token(token, digest)
    assert not verify_token(token + "x", digest)
    assert not verify_token(token, hash_token("other"))
    assert hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer   abc ", "abc"),
        ("BEARER abc", "abc"),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic dXNlcjpwdw==", None),
        ("Bearer " + "x" * 300, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize("token", ["short", "x" * 300, "has space " + "x" * 40, "ü" * 40])
def test_unfit_tokens(token: str) -> None:
    assert check_token_format(token) is not None


# -- cache, progress -----------------------------------------------------------------------------


def test_ttl_cache_expires_and_caches_none() -> None:
    clock = Clock()
    cache: TtlCache[str, int | None] = TtlCache(ttl_s=5.0, max_size=10, clock=clock)
    cache.put("a", 1)
    cache.put("unknown", None)
    assert cache.get("a") == (True, 1)
    assert cache.get("unknown") == (True, None)
    assert cache.get("b") == (False, None)
    clock.now += 5.0
    assert cache.get("a") == (False, None)
    assert len(cache) == 1


def test_ttl_cache_evicts_least_recently_used() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl_s=5.0, max_size=2, clock=Clock())
    cache.put("a", 1)
    cache.put("b", 2)
    cache.get("a")
    cache.put("c", 3)
    assert cache.get("b") == (False, None)
    assert cache.get("a") == (True, 1)


def test_ttl_cache_refresh_keeps_newer_answers_and_times_from_the_read() -> None:
    clock = Clock()
    cache: TtlCache[str, int | None] = TtlCache(ttl_s=4.0, max_size=10, clock=clock)
    cache.put("a", 1)
    cache.put("b", 2)
    read_at = clock.now + 1.0  # the registry was read here...
    clock.now += 2.0
    cache.put("b", 20)  # ...and a request stored a newer answer after it
    assert cache.refresh("a", 10, read_at) and not cache.refresh("b", 200, read_at)
    assert cache.refresh("gone", None, read_at)
    assert cache.entries() == [("a", 10), ("b", 20), ("gone", None)]
    clock.now = read_at + 4.0  # expiry counts from the read, not from the refresh
    assert cache.get("a") == (False, None)
    assert cache.entries() == [("b", 20)]


def test_ttl_zero_disables_the_cache() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl_s=0.0, max_size=2, clock=Clock())
    cache.put("a", 1)
    assert cache.get("a") == (False, None)


def test_progress_keeps_the_highest_seq_and_counts_active_devices() -> None:
    progress = DeviceProgress()
    progress.accepted("a", 5, 100.0, now=0.0)
    progress.accepted("a", 3, 90.0, now=10.0)  # a retry does not move the mark back
    progress.accepted("b", 1, 50.0, now=30.0)
    last = progress.last("a")
    assert last is not None and (last.seq, last.first_sample_time) == (5, 100.0)
    assert progress.last("c") is None
    assert progress.active(now=65.0) == 2
    assert progress.active(now=71.0) == 1
    assert progress.active(now=91.0) == 0
    assert len(progress) == 2


def test_progress_forgets_idle_devices() -> None:
    progress = DeviceProgress(forget_after_s=100.0)
    progress.accepted("a", 1, 1.0, now=0.0)
    progress.accepted("b", 1, 1.0, now=150.0)
    assert progress.forget_idle(now=160.0) == 1
    assert progress.last("a") is None


# -- settings -------------------------------------------------------------------------------


def test_settings_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", "/srv/data")
    monkeypatch.setenv("HARSTREAM_INGEST_PORT", "9999")
    monkeypatch.setenv("HARSTREAM_INGEST_MAX_SAMPLES", "100")
    settings = IngestSettings()
    assert settings.port == 9999
    assert settings.registry_url == "sqlite:////srv/data/harstream/devices.db"
    assert settings.limits == PacketLimits(max_samples=100)
    assert default_registry_url() == settings.registry_url
    for name, field in IngestSettings.model_fields.items():
        assert field.description, name


def test_settings_refuse_a_burst_smaller_than_a_packet() -> None:
    with pytest.raises(ValidationError, match="rate_limit_burst_samples"):
        IngestSettings(max_samples=5000, rate_limit_burst_samples=1000)
    with pytest.raises(ValidationError, match="min_sample_rate_hz"):
        IngestSettings(min_sample_rate_hz=100, max_sample_rate_hz=50)


# -- OpenAPI ---------------------------------------------------------------------------------


def test_openapi_lists_every_status_and_the_running_limits() -> None:
    doc = openapi_document(PacketLimits(max_samples=123, acc_limit_g=8.0), 4096, "1.2.3")
    json.dumps(doc)  # serialisable
    assert doc["openapi"].startswith("3.1")
    responses = doc["paths"]["/v1/packets"]["post"]["responses"]
    assert set(responses) == {"202", *(str(s) for s in PACKET_PROBLEMS)}
    assert {"400", "401", "403", "413", "415", "422", "429", "503"} <= set(responses)
    assert "Retry-After" in responses["429"]["headers"]
    assert "Retry-After" in responses["503"]["headers"]
    packet = doc["components"]["schemas"]["Packet"]
    assert packet["properties"]["samples"]["maxItems"] == 123
    assert packet["properties"]["samples"]["items"]["prefixItems"][0]["maximum"] == 8.0
    assert set(packet["required"]) == {
        "device_id",
        "seq",
        "first_sample_time",
        "sample_rate_hz",
        "samples",
    }
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        assert path in doc["paths"]
    assert "/metrics" not in doc["paths"]  # on the metrics listener, not the device port


def test_schema_example_passes_the_validator() -> None:
    # The published example and the pydantic model agree with the hand-written validator.
    example = Packet.model_json_schema()["examples"][0]
    Packet.model_validate(example)
    result = validate_packet(example, PacketLimits(), now=example["first_sample_time"], last=None)
    assert isinstance(result, ValidPacket)


# -- token strength (custom tokens are stored as unsalted SHA-256) ---------------------------


def test_generated_and_encoded_random_tokens_pass_the_entropy_bar() -> None:
    # hex and base64 encodings of 32 random bytes: what a scripted setup would give
    for _ in range(200):
        assert estimated_bits(secrets.token_hex(32)) >= MIN_TOKEN_BITS
        assert check_token_format(base64.b64encode(secrets.token_bytes(32)).decode()) is None
        assert check_token_strength(generate_token()) is None


@pytest.mark.parametrize(
    "weak",
    [
        "t" * 40,
        "password1234" * 5,
        "correct-horse-battery-staple-correct-horse",
        secrets.token_urlsafe(24),  # 192 bits: long enough for the old 32-character rule
        "0123456789" * 6,
    ],
)
def test_weak_custom_tokens_are_refused(weak: str) -> None:
    assert estimated_bits(weak) < MIN_TOKEN_BITS
    problem = check_token_format(weak)
    assert problem is not None and "256 bits" in problem


def test_verify_against_no_hash_is_false_and_still_compares() -> None:
    assert not verify_token(generate_token(), None)
    assert not verify_token("", None)
