"""Bad input that used to give 500s, plain-text 400s with tracebacks, or lost data (issue 8,
item 7), against the real broker: every refusal is a problem document, nothing refused
reaches Kafka, and a client's clock correction loses nothing."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from services.fuzz.rawhttp import RawResponse, exchange, request_bytes, send_and_close
from services.ingest.app import SERVICE_KEY, create_app
from services.ingest.registry import SqliteRegistry
from services.ingest.settings import IngestSettings
from shared.messages.raw import RawPacket
from tests.integration.ingest_helpers import IngestTestServer, auth, packet, read_raw

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def registry(tmp_path: Path) -> SqliteRegistry:
    return SqliteRegistry(tmp_path / "devices.db")


@pytest.fixture
def settings(stream_settings: Callable[..., Any], registry: SqliteRegistry) -> IngestSettings:
    made: IngestSettings = stream_settings(
        IngestSettings, registry_url=f"sqlite:///{registry.path}", produce_timeout_s=2.0
    )
    return made


@asynccontextmanager
async def serve(settings: IngestSettings, registry: SqliteRegistry) -> AsyncIterator[Client]:
    app = create_app(settings, registry=registry, metrics_registry=CollectorRegistry())
    async with TestClient(IngestTestServer(app)) as client:
        deadline = time.monotonic() + 15
        while (await client.get("/readyz")).status != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        yield client


def metric(client: Client, name: str, **labels: str) -> float:
    service = client.server.app[SERVICE_KEY]  # type: ignore[attr-defined]
    value = service.metrics_registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def raw(client: Client, data: bytes) -> RawResponse:
    port = client.server.port
    assert port is not None
    return await asyncio.to_thread(exchange, "127.0.0.1", port, data)


def assert_problem(response: RawResponse, status: int, reason: str) -> dict[str, Any]:
    assert response.status == status, response
    assert response.content_type == "application/problem+json", response
    problem: dict[str, Any] = json.loads(response.body)
    assert (problem["status"], problem["reason"]) == (status, reason), problem
    assert "Traceback" not in problem["detail"]
    return problem


def post(token: str, body: bytes, *extra: tuple[bytes, bytes]) -> bytes:
    headers = [
        (b"Authorization", b"Bearer " + token.encode()),
        (b"Content-Type", b"application/json"),
        *extra,
    ]
    return request_bytes("POST", "/v1/packets", headers, body)


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not loud, [r.getMessage() for r in loud]


def test_parser_refusals_are_problems_without_tracebacks(
    settings: IngestSettings, registry: SqliteRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    _, token = registry.add("dev")
    garbage = {
        "bad Content-Length": (
            b"POST /v1/packets HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"
        ),
        "8 KB+ header line": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
        + b"a" * 9000
        + b"\r\n\r\n",
        "bad chunk size": request_bytes(
            "POST",
            "/v1/packets",
            [(b"Authorization", b"Bearer " + token.encode()), (b"Transfer-Encoding", b"chunked")],
            b"zz\r\nabc\r\n0\r\n\r\n",
            content_length=False,
        ),
        "method FOO": b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n",
        "not HTTP at all": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),
    }

    async def scenario() -> None:
        async with serve(settings, registry) as client:
            caplog.clear()
            with caplog.at_level(logging.DEBUG):
                for name, data in garbage.items():
                    problem = assert_problem(await raw(client, data), 400, "malformed")
                    assert problem["detail"].startswith("unreadable HTTP request"), name
            no_errors_logged(caplog)
            refused = metric(client, "harstream_ingest_http_refusals_total", reason="malformed")
            assert refused == len(garbage)
            assert (await client.get("/healthz")).status == 200

    asyncio.run(scenario())


def test_lone_surrogates_and_non_utf8_headers_are_4xx_not_500(
    settings: IngestSettings, registry: SqliteRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    _, token = registry.add("dev")
    valid = json.dumps(packet("dev")).encode()

    async def scenario() -> None:
        async with serve(settings, registry) as client:
            caplog.clear()
            # "\ud800" is valid JSON for a lone surrogate: the device id is invalid (422)
            escaped = valid.replace(b'"dev"', b'"\\ud800"')
            problem = assert_problem(await raw(client, post(token, escaped)), 422, "invalid_field")
            assert problem["errors"][0]["field"] == "device_id"
            # the same surrogate UTF-8-encoded (ED A0 80) is not UTF-8 at all (400)
            encoded = valid.replace(b'"dev"', b'"\xed\xa0\x80"')
            problem = assert_problem(await raw(client, post(token, encoded)), 400, "malformed")
            assert "UTF-8" in problem["detail"]
            # a surrogate in another device's id position inside a valid token's request
            other = valid.replace(b'"dev"', b'"dev\\udfff"')
            assert_problem(await raw(client, post(token, other)), 422, "invalid_field")
            # non-UTF-8 bytes in the Authorization header: 401, not a crash hashing it
            bad_auth = request_bytes(
                "POST",
                "/v1/packets",
                [
                    (b"Authorization", b"Bearer \xff\xfe" + token.encode()),
                    (b"Content-Type", b"application/json"),
                ],
                valid,
            )
            assert_problem(await raw(client, bad_auth), 401, "unauthenticated")
            latin = request_bytes(
                "POST",
                "/v1/packets",
                [(b"Authorization", b"Bearer caf\xe9" * 3), (b"Content-Type", b"application/json")],
                valid,
            )
            assert_problem(await raw(client, latin), 401, "unauthenticated")
            assert metric(client, "harstream_ingest_rejections_total", reason="internal") == 0
            no_errors_logged(caplog)
            ok = await client.post("/v1/packets", json=packet("dev", seq=1), headers=auth(token))
            assert ok.status == 202

    asyncio.run(scenario())
    assert [RawPacket.from_bytes(r.value).seq for r in read_raw(settings, expected=1)] == [1]


def test_a_client_leaving_mid_body_is_not_an_internal_error(
    settings: IngestSettings, registry: SqliteRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    _, token = registry.add("dev")
    body = json.dumps(packet("dev")).encode()
    cut = post(token, body)[: -len(body) // 2]  # Content-Length promises the whole body

    async def scenario() -> None:
        async with serve(settings, registry) as client:
            port = client.server.port
            assert port is not None
            caplog.clear()
            with caplog.at_level(logging.DEBUG):
                await asyncio.to_thread(send_and_close, "127.0.0.1", port, cut)
                deadline = time.monotonic() + 5
                while not metric(
                    client, "harstream_ingest_rejections_total", reason="client_disconnected"
                ):
                    assert time.monotonic() < deadline, "disconnect not counted"
                    await asyncio.sleep(0.02)
            assert metric(client, "harstream_ingest_rejections_total", reason="internal") == 0
            no_errors_logged(caplog)

    asyncio.run(scenario())


def test_gzip_members_are_joined_and_trailing_junk_is_refused(
    settings: IngestSettings, registry: SqliteRegistry
) -> None:
    _, token = registry.add("dev")
    gz = (b"Content-Encoding", b"gzip")

    async def scenario() -> None:
        async with serve(settings, registry) as client:
            # RFC 1952: a gzip body is a series of members
            body = json.dumps(packet("dev", seq=0)).encode()
            half = len(body) // 2
            members = gzip.compress(body[:half]) + gzip.compress(body[half:])
            accepted = await raw(client, post(token, members, gz))
            assert accepted.status == 202, accepted
            junk = gzip.compress(json.dumps(packet("dev", seq=1)).encode()) + b"JUNK"
            problem = assert_problem(await raw(client, post(token, junk, gz)), 400, "malformed")
            assert "not another gzip member" in problem["detail"]
            # the bomb limit holds across members too
            bomb = gzip.compress(b" " * settings.max_body_bytes) * 2
            assert_problem(await raw(client, post(token, bomb, gz)), 413, "too_large")

    asyncio.run(scenario())
    # exactly the accepted packet reached Kafka
    records = read_raw(settings, expected=2, timeout_s=3.0)
    assert [RawPacket.from_bytes(r.value).seq for r in records] == [0]


def test_a_device_clock_set_back_loses_no_packet(
    settings: IngestSettings, registry: SqliteRegistry
) -> None:
    _, token = registry.add("dev")
    now = time.time()
    # The clock ran 200 s fast (within the 300 s skew allowed), then NTP corrected it.
    sent = [(seq, now + 200 + seq) for seq in range(3)] + [(seq, now + seq) for seq in range(3, 6)]

    async def scenario() -> None:
        async with serve(settings, registry) as client:
            for seq, first in sent:
                response = await client.post(
                    "/v1/packets", json=packet("dev", seq=seq, first=first), headers=auth(token)
                )
                assert response.status == 202, await response.text()
            assert metric(client, "harstream_ingest_clock_corrections_total") == 1

    asyncio.run(scenario())
    records = read_raw(settings, expected=len(sent))
    got = sorted(
        (p.seq, p.first_sample_time) for p in map(RawPacket.from_bytes, (r.value for r in records))
    )
    assert got == sent
