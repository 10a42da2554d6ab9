"""The ingest service in-process (aiohttp test server) against the real broker."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from services.common.broker import EmbeddedBroker, free_port
from services.common.kafka.topics import create_topics
from services.ingest.app import SERVICE_KEY, create_app
from services.ingest.errors import RegistryUnavailableError
from services.ingest.registry import SqliteRegistry
from services.ingest.settings import IngestSettings
from shared.messages.raw import RawPacket
from tests.integration.ingest_helpers import (
    IngestTestServer,
    auth,
    metric,
    packet,
    read_raw,
    run,
    scrape,
    serve,
)

pytestmark = pytest.mark.integration


def test_valid_packet_reaches_the_raw_topic_bit_exact(
    make_settings: Callable[..., IngestSettings], registry: SqliteRegistry
) -> None:
    settings = make_settings()
    _, token = registry.add("watch-1")
    sent = [packet("watch-1", seq=0, seed=1), packet("watch-1", seq=1, seed=2)]

    async def scenario() -> None:
        async with serve(settings, registry) as client:
            response = await client.post("/v1/packets", json=sent[0], headers=auth(token))
            assert response.status == 202, await response.text()
            assert await response.json() == {"device_id": "watch-1", "seq": 0, "samples": 50}
            compressed = gzip.compress(json.dumps(sent[1]).encode())
            response = await client.post(
                "/v1/packets",
                data=compressed,
                headers={
                    **auth(token),
                    "Content-Type": "application/json",
                    "Content-Encoding": "gzip",
                },
            )
            assert response.status == 202, await response.text()
            assert metric(client, "harstream_ingest_packets_total") == 2
            assert metric(client, "harstream_ingest_samples_total") == 100
            assert metric(client, "harstream_ingest_devices_active") == 1
            assert metric(client, "harstream_ingest_kafka_ack_seconds_count") == 2
            text = await scrape(client.server.app)
            assert "harstream_ingest_devices_active 1.0" in text
            assert 'harstream_ingest_request_seconds_count{outcome="accepted"} 2.0' in text

    started = time.time()
    run(scenario())
    records = read_raw(settings, expected=2)
    assert len(records) == 2
    decoded = sorted((RawPacket.from_bytes(r.value) for r in records), key=lambda p: p.seq)
    assert {r.key for r in records} == {b"watch-1"}
    assert len({r.partition for r in records}) == 1  # one key, one partition
    for body, got in zip(sent, decoded, strict=True):
        assert got.device_id == "watch-1"
        assert got.seq == body["seq"]
        assert got.first_sample_time == body["first_sample_time"]
        assert got.sample_rate_hz == 50.0
        assert got.samples.dtype == np.float64
        expected = np.array(body["samples"], dtype=np.float64)
        assert got.samples.tobytes() == expected.tobytes()  # bit-exact
        assert started <= got.received_at <= time.time()


def test_every_documented_refusal(
    make_settings: Callable[..., IngestSettings], registry: SqliteRegistry
) -> None:
    settings = make_settings(max_body_bytes=64 * 1024, max_samples=100)
    _, token = registry.add("dev-a")
    _, other_token = registry.add("dev-b")
    _, revoked_token = registry.add("dev-r")
    registry.revoke("dev-r")
    refusals: list[str] = []

    async def expect(
        client: TestClient[web.Request, web.Application],
        status: int,
        reason: str,
        field: str | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        response = await client.post("/v1/packets", **kwargs)
        assert response.status == status, await response.text()
        assert response.content_type == "application/problem+json"
        problem: dict[str, Any] = await response.json()
        assert problem["status"] == status
        assert problem["reason"] == reason
        assert problem["type"].endswith(reason)
        assert problem["title"] and problem["detail"]
        if field is not None:
            assert problem["errors"][0]["field"] == field, problem
        refusals.append(reason)
        return problem

    def with_row(row: int, column: int, value: Any, **overrides: Any) -> dict[str, Any]:
        body = packet("dev-a", **overrides)
        body["samples"][row][column] = value
        return body

    async def scenario() -> None:
        async with serve(settings, registry) as client:
            ok = auth(token)
            # 401: no token; then unknown token, unknown device, another device's token,
            # all with the same body (no oracle for which device ids are registered)
            await expect(client, 401, "unauthenticated", json=packet("dev-a"))
            same = [
                await expect(
                    client, 401, "unauthenticated", json=packet("dev-a"), headers=auth("x" * 43)
                ),
                await expect(client, 401, "unauthenticated", json=packet("ghost"), headers=ok),
                await expect(client, 401, "unauthenticated", json=packet("dev-b"), headers=ok),
                await expect(
                    client, 401, "unauthenticated", json=packet("dev-a"), headers=auth(other_token)
                ),
            ]
            assert all(problem == same[0] for problem in same), same
            # 403: revoked device
            await expect(
                client, 403, "forbidden", json=packet("dev-r"), headers=auth(revoked_token)
            )
            # 415: content type and encoding
            await expect(
                client,
                415,
                "unsupported_media_type",
                data=json.dumps(packet("dev-a")),
                headers={**ok, "Content-Type": "text/plain"},
            )
            await expect(
                client,
                415,
                "unsupported_media_type",
                data=json.dumps(packet("dev-a")),
                headers={**ok, "Content-Type": "application/json", "Content-Encoding": "br"},
            )
            # 413: by Content-Length, for a chunked upload, and for a gzip bomb
            big = json.dumps(packet("dev-a", n=2000)).encode()
            assert len(big) > settings.max_body_bytes
            await expect(
                client,
                413,
                "too_large",
                data=big,
                headers={**ok, "Content-Type": "application/json"},
            )

            async def chunks() -> AsyncIterator[bytes]:
                for i in range(0, len(big), 8192):
                    yield big[i : i + 8192]

            await expect(
                client,
                413,
                "too_large",
                data=chunks(),
                headers={**ok, "Content-Type": "application/json"},
            )
            bomb = gzip.compress(b" " * (10 * settings.max_body_bytes))
            await expect(
                client,
                413,
                "too_large",
                data=bomb,
                headers={**ok, "Content-Type": "application/json", "Content-Encoding": "gzip"},
            )
            # 400: malformed JSON, wrong types, bad gzip
            json_headers = {**ok, "Content-Type": "application/json"}
            await expect(client, 400, "malformed", data=b'{"device_id": ', headers=json_headers)
            await expect(client, 400, "malformed", data=b"[1, 2]", headers=json_headers)
            await expect(client, 400, "malformed", data=b"[" * 60_000, headers=json_headers)
            await expect(
                client, 400, "malformed", "seq", json={**packet("dev-a"), "seq": "1"}, headers=ok
            )
            await expect(
                client, 400, "malformed", "samples[3][1]", json=with_row(3, 1, True), headers=ok
            )
            await expect(
                client, 400, "malformed", "samples[2][0]", json=with_row(2, 0, "NaN"), headers=ok
            )
            await expect(
                client,
                400,
                "malformed",
                data=b"not gzip",
                headers={**json_headers, "Content-Encoding": "gzip"},
            )
            # 422: shape, values, rate, time
            ragged = packet("dev-a")
            ragged["samples"][4] = ragged["samples"][4][:5]
            await expect(client, 422, "invalid_shape", "samples[4]", json=ragged, headers=ok)
            await expect(
                client, 422, "invalid_shape", "samples", json=packet("dev-a", n=0), headers=ok
            )
            await expect(
                client,
                422,
                "invalid_shape",
                "samples",
                json=packet("dev-a", n=settings.max_samples + 1),
                headers=ok,
            )
            nan_text = json.dumps(with_row(5, 2, 0.123456)).replace("0.123456", "NaN")
            await expect(
                client, 422, "non_finite", "samples[5][2]", data=nan_text, headers=json_headers
            )
            huge_text = json.dumps(with_row(6, 3, 0.123456)).replace("0.123456", "1e999")
            await expect(
                client, 422, "non_finite", "samples[6][3]", data=huge_text, headers=json_headers
            )
            await expect(
                client, 422, "out_of_range", "samples[1][0]", json=with_row(1, 0, 17.0), headers=ok
            )
            await expect(
                client,
                422,
                "out_of_range",
                "samples[1][5]",
                json=with_row(1, 5, -36.0),
                headers=ok,
            )
            await expect(
                client,
                422,
                "bad_rate",
                "sample_rate_hz",
                json={**packet("dev-a"), "sample_rate_hz": 1000.0},
                headers=ok,
            )
            await expect(
                client,
                422,
                "bad_timestamp",
                "first_sample_time",
                json=packet("dev-a", first=time.time() + 3600),
                headers=ok,
            )
            await expect(
                client,
                422,
                "bad_timestamp",
                "first_sample_time",
                json=packet("dev-a", first=915_148_800.0),  # 1999
                headers=ok,
            )
            # time order: seq 10 accepted; a higher seq starting earlier is a device clock
            # set back: accepted and counted; a lower seq (retry / reordering) is accepted
            now = time.time()
            for seq, first in ((10, now - 10), (11, now - 20), (9, now - 11)):
                response = await client.post(
                    "/v1/packets", json=packet("dev-a", seq=seq, first=first), headers=ok
                )
                assert response.status == 202, await response.text()
            assert metric(client, "harstream_ingest_clock_corrections_total") == 1

            for reason in set(refusals):
                counted = metric(client, "harstream_ingest_rejections_total", reason=reason)
                assert counted == refusals.count(reason), reason
            assert metric(client, "harstream_ingest_packets_total") == 3
            rejected = metric(client, "harstream_ingest_request_seconds_count", outcome="rejected")
            assert rejected == len(refusals)

    run(scenario())


def test_rate_limit_answers_429_with_retry_after(
    make_settings: Callable[..., IngestSettings], registry: SqliteRegistry
) -> None:
    settings = make_settings(
        rate_limit_samples_per_s=20.0, rate_limit_burst_samples=120, max_samples=100
    )
    _, token = registry.add("fast")
    _, slow_token = registry.add("slow")

    async def scenario() -> None:
        async with serve(settings, registry) as client:
            statuses = []
            for seq in range(3):
                response = await client.post(
                    "/v1/packets", json=packet("fast", seq=seq, n=50), headers=auth(token)
                )
                statuses.append(response.status)
            assert statuses == [202, 202, 429]
            problem = await response.json()
            assert problem["reason"] == "rate_limited"
            # 20 tokens left, 50 needed at 20/s: 1.5 s, rounded up
            assert response.headers["Retry-After"] == "2"
            other = await client.post(
                "/v1/packets", json=packet("slow", n=50), headers=auth(slow_token)
            )
            assert other.status == 202  # buckets are per device
            await asyncio.sleep(1.6)
            again = await client.post(
                "/v1/packets", json=packet("fast", seq=2, n=50), headers=auth(token)
            )
            assert again.status == 202

    run(scenario())


def test_revocation_takes_effect_within_the_cache_ttl(
    make_settings: Callable[..., IngestSettings], registry: SqliteRegistry
) -> None:
    settings = make_settings(token_cache_ttl_s=0.5)
    _, token = registry.add("dev")

    async def scenario() -> None:
        async with serve(settings, registry) as client:
            first = await client.post("/v1/packets", json=packet("dev", 0), headers=auth(token))
            assert first.status == 202
            registry.revoke("dev")  # as `harstream devices revoke` would, from another process
            await asyncio.sleep(0.6)
            later = await client.post("/v1/packets", json=packet("dev", 1), headers=auth(token))
            assert later.status == 403

    run(scenario())


class CountingRegistry(SqliteRegistry):
    """Counts the token lookups made one request at a time."""

    token_lookups = 0

    def find_by_token(self, token: str) -> Any:
        self.token_lookups += 1
        return super().find_by_token(token)


def test_cached_tokens_are_reread_in_bulk_so_a_revocation_needs_no_expiry(
    make_settings: Callable[..., IngestSettings], tmp_path: Path
) -> None:
    # A TTL longer than the test: only the refresh can show the revocation.
    settings = make_settings(token_cache_ttl_s=600.0)
    registry = CountingRegistry(tmp_path / "devices.db")
    _, token = registry.add("dev")
    registry.add("idle")  # never posts: not cached, not re-read

    async def scenario() -> None:
        async with serve(settings, registry) as client:
            service = client.server.app[SERVICE_KEY]  # type: ignore[union-attr]
            post = lambda seq: client.post(  # noqa: E731
                "/v1/packets", json=packet("dev", seq), headers=auth(token)
            )
            assert (await post(0)).status == 202
            registry.revoke("dev")
            assert (await post(1)).status == 202  # cached: not seen yet
            assert await service.refresh_cached_lookups() == 1
            later = await post(2)
            assert later.status == 403, await later.text()
            assert registry.token_lookups == 1
            assert _refreshes(client, "ok") == 1

    run(scenario())


def _refreshes(client: Any, outcome: str) -> float:
    return metric(client, "harstream_ingest_registry_refreshes_total", outcome=outcome)


async def _until_refreshes(
    client: Any,
    outcome: str,
    at_least: float,
    each_round: Callable[[], Awaitable[None]] | None = None,
    pause_s: float = 0.02,
) -> None:
    """Wait until the refresher counted ``at_least`` refreshes of ``outcome`` (15 s at most),
    running ``each_round`` between looks."""
    deadline = time.monotonic() + 15
    while _refreshes(client, outcome) < at_least:
        assert time.monotonic() < deadline, f"fewer than {at_least} {outcome} refreshes"
        if each_round is not None:
            await each_round()
        await asyncio.sleep(pause_s)


def _locked(*_: Any) -> Any:
    raise RegistryUnavailableError("database is locked")


def test_the_refresh_runs_every_half_ttl_and_a_registry_outage_only_counts(
    make_settings: Callable[..., IngestSettings], tmp_path: Path
) -> None:
    settings = make_settings(token_cache_ttl_s=0.2)
    registry = SqliteRegistry(tmp_path / "devices.db")
    _, token = registry.add("dev")

    async def scenario() -> None:
        async with serve(settings, registry) as client:
            post = await client.post("/v1/packets", json=packet("dev", 0), headers=auth(token))
            assert post.status == 202
            await _until_refreshes(client, "ok", 2)
            registry.find_by_token_hashes = _locked  # type: ignore[method-assign]
            await _until_refreshes(client, "failed", 1)

    run(scenario())


def _broken(*_: Any) -> Any:
    raise RuntimeError("a bug in the registry code")


def test_an_unexpected_refresh_error_is_counted_and_the_refreshes_go_on(
    make_settings: Callable[..., IngestSettings], tmp_path: Path
) -> None:
    settings = make_settings(token_cache_ttl_s=0.4)
    registry = SqliteRegistry(tmp_path / "devices.db")
    _, token = registry.add("dev")

    async def scenario() -> None:
        async with serve(settings, registry) as client:
            seq = 0

            async def post() -> None:
                nonlocal seq
                answer = await client.post(
                    "/v1/packets", json=packet("dev", seq), headers=auth(token)
                )
                assert answer.status == 202, await answer.text()
                seq += 1

            # The device keeps sending, so its token stays cached (or is cached again once an
            # unrefreshed entry expired) and every refresh has it to re-read.
            await post()
            working = registry.find_by_token_hashes
            registry.find_by_token_hashes = _broken  # type: ignore[method-assign]
            # Counted at all only by the catch-all; twice only if the task outlived the first.
            await _until_refreshes(client, "failed", 2, each_round=post, pause_s=0.1)
            registry.find_by_token_hashes = working  # type: ignore[method-assign]
            ok_so_far = _refreshes(client, "ok")
            await _until_refreshes(client, "ok", ok_so_far + 1, each_round=post, pause_s=0.1)

    run(scenario())


def test_operational_endpoints(
    make_settings: Callable[..., IngestSettings], registry: SqliteRegistry
) -> None:
    settings = make_settings()

    async def scenario() -> None:
        async with serve(settings, registry) as client:
            health = await client.get("/healthz")
            assert (health.status, await health.json()) == (200, {"status": "ok"})
            ready = await client.get("/readyz")
            assert await ready.json() == {"ready": True, "broker": "ok", "registry": "ok"}
            spec_response = await client.get("/openapi.json")
            assert spec_response.status == 200
            spec = json.loads(await spec_response.text())
            assert spec["openapi"] == "3.1.0"
            codes = set(spec["paths"]["/v1/packets"]["post"]["responses"])
            assert {"202", "400", "401", "403", "413", "415", "422", "429", "500", "503"} <= codes
            docs = await client.get("/docs")
            assert docs.status == 200 and "/openapi.json" in await docs.text()
            # /metrics is not on the device port: 404, a problem like every unknown path
            public = await client.get("/metrics")
            assert public.status == 404 and public.content_type == "application/problem+json"
            text = await scrape(client.server.app)
            for name in (
                "harstream_ingest_packets_total",
                "harstream_ingest_samples_total",
                'harstream_ingest_rejections_total{reason="broker_unavailable"}',
                "harstream_ingest_request_seconds_bucket",
                "harstream_ingest_kafka_ack_seconds_bucket",
                "harstream_ingest_devices_active",
            ):
                assert name in text, name
            missing = await client.get("/nope")
            assert missing.status == 404
            assert missing.content_type == "application/problem+json"
            wrong_method = await client.get("/v1/packets")
            assert wrong_method.status == 405

    run(scenario())


def test_broker_at_a_closed_port_means_503_not_a_crash(
    registry: SqliteRegistry, unique_id: str
) -> None:
    settings = IngestSettings(
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        kafka_profile="tansu",
        topic_prefix=f"test-{unique_id}",
        registry_url=f"sqlite:///{registry.path}",
        broker_retry_after_s=7,
    )
    _, token = registry.add("dev")

    async def scenario() -> None:
        async with serve(settings, registry, wait_ready=False) as client:
            health = await client.get("/healthz")
            assert health.status == 200
            ready = await client.get("/readyz")
            assert ready.status == 503
            body = await ready.json()
            assert body["ready"] is False and body["broker"] != "ok" and body["registry"] == "ok"
            response = await client.post("/v1/packets", json=packet("dev"), headers=auth(token))
            assert response.status == 503
            assert response.headers["Retry-After"] == "7"
            assert (await response.json())["reason"] == "broker_unavailable"

    run(scenario())


def test_paused_broker_gives_503_then_recovers(
    registry: SqliteRegistry, unique_id: str, tmp_path: Path
) -> None:
    # Our own broker: pausing the shared session broker would stall every other test.
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as broker:
        settings = IngestSettings(
            kafka_bootstrap_servers=broker.bootstrap_servers,
            kafka_profile="tansu",
            topic_prefix=f"test-{unique_id}",
            topic_partitions=2,
            registry_url=f"sqlite:///{registry.path}",
            produce_timeout_s=1.0,
            readiness_timeout_s=1.0,
        )
        create_topics(settings)
        _, token = registry.add("dev")
        assert broker.pid is not None

        async def scenario() -> None:
            async with serve(settings, registry) as client:
                ok = await client.post("/v1/packets", json=packet("dev", 0), headers=auth(token))
                assert ok.status == 202
                os.kill(broker.pid, signal.SIGSTOP)  # type: ignore[arg-type]
                try:
                    t0 = time.monotonic()
                    response = await client.post(
                        "/v1/packets", json=packet("dev", 1), headers=auth(token)
                    )
                    assert response.status == 503
                    assert 0.9 < time.monotonic() - t0 < 3.0  # the produce timeout, not longer
                    assert int(response.headers["Retry-After"]) >= 1
                    await asyncio.sleep(1.1)  # past the readiness cache
                    ready = await client.get("/readyz")
                    assert ready.status == 503
                    assert (await ready.json())["registry"] == "ok"
                finally:
                    os.kill(broker.pid, signal.SIGCONT)  # type: ignore[arg-type]
                deadline = time.monotonic() + 20
                while True:
                    response = await client.post(
                        "/v1/packets", json=packet("dev", 1), headers=auth(token)
                    )
                    if response.status == 202:
                        break
                    assert response.status == 503
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.5)
                await asyncio.sleep(1.1)
                assert (await client.get("/readyz")).status == 200
                assert (
                    metric(client, "harstream_ingest_rejections_total", reason="broker_unavailable")
                    >= 1
                )

        run(scenario())
        records = read_raw(settings, expected=2)
        assert {RawPacket.from_bytes(r.value).seq for r in records} == {0, 1}


class ExplodingSink:
    """A sink with a bug in it."""

    async def start(self) -> None:
        pass

    async def send(self, key: bytes, value: bytes) -> float:
        raise RuntimeError("secret internal detail")

    async def check(self) -> str | None:
        return None

    @property
    def replacements(self) -> int:
        return 0

    async def close(self, deadline: float | None = None) -> None:
        pass


class DownRegistry(SqliteRegistry):
    def find_by_token(self, token: str) -> Any:
        raise RegistryUnavailableError("database is locked")

    def ping(self) -> None:
        raise RegistryUnavailableError("database is locked")


def test_internal_errors_are_500_problems_and_registry_outage_is_503(
    make_settings: Callable[..., IngestSettings], registry: SqliteRegistry, tmp_path: Path
) -> None:
    settings = make_settings()
    _, token = registry.add("dev")

    async def scenario() -> None:
        app = create_app(settings, registry=registry, sink=ExplodingSink())
        async with TestClient(IngestTestServer(app)) as client:
            response = await client.post("/v1/packets", json=packet("dev"), headers=auth(token))
            assert response.status == 500
            problem = await response.json()
            assert problem["reason"] == "internal"
            assert "secret" not in await response.text()
        down = DownRegistry(tmp_path / "down.db")
        app = create_app(settings, registry=down, sink=ExplodingSink())
        async with TestClient(IngestTestServer(app)) as client:
            response = await client.post("/v1/packets", json=packet("dev"), headers=auth(token))
            assert response.status == 503
            assert response.headers["Retry-After"]
            assert (await response.json())["reason"] == "registry_unavailable"
            ready = await client.get("/readyz")
            assert ready.status == 503
            assert "locked" in (await ready.json())["registry"]

    run(scenario())
