"""The alert API's listener limits, against the real alerting service (store, broker):
trickled headers and slow bodies closed at their deadline, the connection cap, the body
limit, problem documents for what the parser refuses, and the per-address limit on failed
authentications (a Basic-auth guessing flood from one address gets 429 before any scrypt
while an operator on another address keeps getting 200).

Waits are for events (a socket's end, a response) under a deadline. The only pauses are the
attacker's own pacing: a slowloris client *is* one that sends a byte now and then.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from services.alerting.app import AlertingService
from services.alerting.auth import PASSWORD_CHECKS, create_operator
from services.alerting.settings import AlertingSettings
from services.alerting.store import open_store
from services.common.operators import Role
from tests.integration.test_security_listeners import (
    FLOOD_ADDRESS,
    SLACK_S,
    trickle,
    until_closed,
)

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


class Api:
    """The running service, its address, and an operator (carer: may acknowledge)."""

    def __init__(self, service: AlertingService, name: str, key: str) -> None:
        self.service = service
        self.host = "127.0.0.1"
        assert service.port is not None
        self.port = service.port
        self.base = f"http://{self.host}:{self.port}"
        self.name = name
        self.bearer = {"Authorization": f"Bearer {key}"}

    def open_connections(self) -> int:
        runner = self.service._runner
        assert runner is not None and runner.server is not None
        return len(runner.server.connections)


@pytest.fixture
def make_settings(
    stream_settings: Callable[..., Any], tmp_path: Path
) -> Callable[..., AlertingSettings]:
    def make(**overrides: Any) -> AlertingSettings:
        values: dict[str, Any] = {
            "group_id": f"alerting-{uuid.uuid4().hex[:8]}",
            "host": "127.0.0.1",
            "port": 0,
            "store_url": f"sqlite:///{tmp_path / 'alerts.db'}",
        }
        values.update(overrides)
        settings: AlertingSettings = stream_settings(AlertingSettings, **values)
        return settings

    return make


@asynccontextmanager
async def serve(settings: AlertingSettings) -> AsyncIterator[Api]:
    store = open_store(settings.store_url)
    try:
        name = f"carer-{uuid.uuid4().hex[:6]}"
        _, key = create_operator(store, name, Role.CARER, PASSWORD)
    finally:
        store.close()
    service = AlertingService(settings, CollectorRegistry())
    await service.start()
    try:
        yield Api(service, name, key.get_secret_value())
    finally:
        await service.stop()


def head_and_problem(data: bytes) -> tuple[bytes, dict[str, Any]]:
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"application/problem+json" in head, head
    problem: dict[str, Any] = json.loads(body)
    return head, problem


# -- slowloris ----------------------------------------------------------------------------------


def test_trickled_headers_and_slow_bodies_are_closed_at_their_deadlines(
    make_settings: Callable[..., AlertingSettings],
) -> None:
    settings = make_settings(header_timeout_s=1.0, body_timeout_s=1.5)

    async def trickled_headers(api: Api) -> tuple[float, bytes]:
        # Stamped before: the server's clock starts when it accepts, which is not earlier.
        opened = time.monotonic()
        reader, writer = await asyncio.open_connection(api.host, api.port)
        pieces = [b"GET /v1/alerts HTTP/1.1\r\nHost: x\r\n"] + [b"X-a: b\r\n"] * 500
        feeder = asyncio.create_task(trickle(writer, pieces, 0.2))
        data = await until_closed(reader, settings.header_timeout_s + SLACK_S)
        closed_after = time.monotonic() - opened
        feeder.cancel()
        writer.close()
        return closed_after, data

    async def slow_body(api: Api) -> tuple[float, bytes]:
        # An operator's credential, so the handler really waits for the body (without one
        # the request is answered 401 before its body matters).
        body = json.dumps({"note": "on my way " + "x" * 100}).encode()
        head = (
            f"POST /v1/alerts/some-alert/ack HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {api.bearer['Authorization']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        reader, writer = await asyncio.open_connection(api.host, api.port)
        sent_head = time.monotonic()  # before: the body's clock starts when the head arrives
        writer.write(head)
        await writer.drain()
        pieces = [body[i : i + 5] for i in range(0, len(body), 5)]
        feeder = asyncio.create_task(trickle(writer, pieces, 0.2))
        data = await until_closed(reader, settings.body_timeout_s + SLACK_S)
        closed_after = time.monotonic() - sent_head
        feeder.cancel()
        writer.close()
        return closed_after, data

    async def scenario() -> None:
        async with serve(settings) as api:
            results = await asyncio.gather(
                *(trickled_headers(api) for _ in range(30)), *(slow_body(api) for _ in range(30))
            )
            for i, (closed_after, data) in enumerate(results):
                deadline = settings.header_timeout_s if i < 30 else settings.body_timeout_s
                # closed by its deadline: not before it, and not long after
                assert closed_after >= deadline - 0.1, (i, closed_after, data)
                assert data.startswith(b"HTTP/1.1 408 "), data[:80]
                _, problem = head_and_problem(data)
                assert problem["status"] == 408 and problem["type"] == "about:blank"
                word = "headers" if i < 30 else "body"
                assert word in problem["detail"], problem
            # nothing is left open on the server's side either
            deadline_at = time.monotonic() + SLACK_S
            while api.open_connections() > 0:
                assert time.monotonic() < deadline_at, api.open_connections()
                await asyncio.sleep(0.05)
            # an honest operator is unaffected
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{api.base}/v1/alerts", headers=api.bearer) as r,
            ):
                assert r.status == 200

    asyncio.run(scenario())


# -- connection cap -----------------------------------------------------------------------------


def test_connections_past_the_cap_get_503_unread_and_capacity_returns(
    make_settings: Callable[..., AlertingSettings],
) -> None:
    settings = make_settings(max_connections=5, header_timeout_s=30.0)

    async def scenario() -> None:
        async with serve(settings) as api:
            held = [await asyncio.open_connection(api.host, api.port) for _ in range(5)]
            deadline = time.monotonic() + 5
            while api.open_connections() < 5:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            started = time.monotonic()
            reader, writer = await asyncio.open_connection(api.host, api.port)
            data = await until_closed(reader, SLACK_S)  # answered without sending anything
            assert time.monotonic() - started < SLACK_S
            writer.close()
            head, problem = head_and_problem(data)
            assert head.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in head
            assert problem["status"] == 503 and problem["type"] == "about:blank"
            held[0][1].close()
            deadline = time.monotonic() + 5
            while api.open_connections() > 4:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            reader, writer = await asyncio.open_connection(api.host, api.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert (await until_closed(reader, 5)).startswith(b"HTTP/1.1 200 ")
            writer.close()
            for _, w in held[1:]:
                w.close()

    asyncio.run(scenario())


# -- body limit, parser refusals, unknown paths -------------------------------------------------


def test_bodies_over_the_limit_get_413_and_garbage_gets_problem_documents(
    make_settings: Callable[..., AlertingSettings],
) -> None:
    settings = make_settings()
    assert settings.max_body_bytes == 64 * 1024  # the default under test

    async def scenario() -> None:
        async with serve(settings) as api:
            # Declared too large: refused from the headers, before any credential or body.
            reader, writer = await asyncio.open_connection(api.host, api.port)
            writer.write(
                b"POST /v1/alerts/a/ack HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 200000000\r\n\r\n"
            )
            await writer.drain()
            async with asyncio.timeout(5):  # answered at once, without a byte of the body
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
            writer.close()
            head, problem = head_and_problem(head + body)
            assert head.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in head, head
            assert problem["status"] == 413 and "65536" in problem["detail"]

            async with aiohttp.ClientSession() as http:
                # Chunked (no Content-Length): refused once the limit is passed.
                async def chunks() -> AsyncIterator[bytes]:
                    yield b'{"note": "'
                    for _ in range(100):
                        yield b"x" * 1024
                    yield b'"}'

                async with http.post(
                    f"{api.base}/v1/alerts/a/ack",
                    data=chunks(),
                    headers={**api.bearer, "Content-Type": "application/json"},
                ) as r:
                    assert r.status == 413
                    assert r.content_type == "application/problem+json"
                    assert (await r.json())["status"] == 413
                # Unknown paths and methods: problem documents too.
                async with http.get(f"{api.base}/nope") as r:
                    assert r.status == 404 and r.content_type == "application/problem+json"
                async with http.delete(f"{api.base}/v1/alerts", headers=api.bearer) as r:
                    assert r.status == 405 and r.content_type == "application/problem+json"
                    assert "GET" in r.headers["Allow"]
                # A note of 500 characters still passes (the alert does not exist: 404).
                async with http.post(
                    f"{api.base}/v1/alerts/missing/ack",
                    json={"note": "n" * 500},
                    headers=api.bearer,
                ) as r:
                    assert r.status == 404, await r.text()

            # What aiohttp's parser refuses is a problem document, not text/plain.
            reader, writer = await asyncio.open_connection(api.host, api.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
            await writer.drain()
            data = await until_closed(reader, 5)
            writer.close()
            head, problem = head_and_problem(data)
            # (aiohttp answers HTTP/1.0 when it could not read the request's version)
            assert head.split(b" ")[1] == b"400" and problem["status"] == 400

    asyncio.run(scenario())


# -- failed-authentication flood ----------------------------------------------------------------


def test_basic_auth_guessing_flood_gets_429_while_an_operator_keeps_getting_200(
    make_settings: Callable[..., AlertingSettings],
) -> None:
    # A slow refill, so the flooding address is still over budget when the flood ends.
    settings = make_settings(auth_failure_burst=5, auth_failure_rate_per_s=0.1)

    async def flood(api: Api, requests: int) -> list[tuple[int, str | None, str]]:
        connector = aiohttp.TCPConnector(local_addr=(FLOOD_ADDRESS, 0), limit=8)
        results: list[tuple[int, str | None, str]] = []
        async with aiohttp.ClientSession(connector=connector) as session:

            async def guess() -> None:
                headers = basic(api.name, secrets.token_urlsafe(12))
                try:
                    async with session.get(f"{api.base}/v1/alerts", headers=headers) as r:
                        problem = await r.json(content_type=None)
                        results.append((r.status, r.headers.get("Retry-After"), problem["title"]))
                except aiohttp.ClientConnectionError:
                    # A blocked address's new connection is answered 429 and closed at once;
                    # a request already on its way then meets a reset instead of the answer.
                    results.append((0, None, "reset"))

            await asyncio.gather(*(guess() for _ in range(requests)))
        return results

    async def successful_logins_cost_nothing(api: Api) -> None:
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
        async with aiohttp.ClientSession(connector=connector) as http:
            for _ in range(3 * settings.auth_failure_burst):
                headers = basic(api.name, PASSWORD)
                async with http.get(f"{api.base}/v1/alerts", headers=headers) as r:
                    assert r.status == 200
            # the whole budget is still there: a typo is a 401, not a 429
            for _ in range(settings.auth_failure_burst):
                headers = basic(api.name, "typo")
                async with http.get(f"{api.base}/v1/alerts", headers=headers) as r:
                    assert r.status == 401
            async with http.get(f"{api.base}/v1/alerts", headers=basic(api.name, "typo")) as r:
                assert r.status == 429

    async def scenario() -> None:
        async with serve(settings) as api:
            await successful_logins_cost_nothing(api)
            started = time.monotonic()
            flooding = asyncio.create_task(flood(api, 300))
            statuses = []
            async with aiohttp.ClientSession() as http:
                # The operator logs in with Basic too, through the flood and past it.
                while not flooding.done() or len(statuses) < 3 * settings.auth_failure_burst:
                    async with http.get(
                        f"{api.base}/v1/alerts", headers=basic(api.name, PASSWORD)
                    ) as r:
                        statuses.append(r.status)
                results = await flooding
                elapsed = time.monotonic() - started
                assert statuses and all(s == 200 for s in statuses), statuses
                refused = [r for r in results if r[0] == 401]
                limited = [r for r in results if r[0] == 429]
                reset = [r for r in results if r[0] == 0]
                assert len(refused) + len(limited) + len(reset) == 300, results
                assert len(limited) > len(reset)
                # Only the burst, plus what refilled while the flood ran, reached scrypt (and
                # the checks already in a scrypt slot when the budget ran out).
                overrun = PASSWORD_CHECKS
                assert len(refused) <= 5 + elapsed * 0.1 + overrun, (len(refused), elapsed)
                assert all(
                    title == "Too many failed authentications" and retry
                    for _, retry, title in limited
                )
                # The flooding address itself is still refused, with an API key too.
                connector = aiohttp.TCPConnector(local_addr=(FLOOD_ADDRESS, 0))
                async with (
                    aiohttp.ClientSession(connector=connector) as blocked,
                    blocked.get(f"{api.base}/v1/alerts", headers=api.bearer) as r,
                ):
                    assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
                    assert r.content_type == "application/problem+json"
                # ... and the operator's own address is not.
                async with http.get(f"{api.base}/v1/alerts", headers=api.bearer) as r:
                    assert r.status == 200

    asyncio.run(scenario())
