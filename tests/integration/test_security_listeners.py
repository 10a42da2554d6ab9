"""Limits on every listener, against the real services: slowloris headers and bodies closed
within their timeout, connection caps, the failed-authentication limit isolating a flood
from a device with a valid token, the model server's body limit, and loopback binds by
default.

Waits are for events (a socket's end, a response) under a deadline. The only pauses are the
attacker's own pacing: a slowloris client *is* one that sends a byte now and then.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry, start_http_server

from services.common.broker import free_port
from services.common.processes import ServiceProcess
from services.ingest.registry import SqliteRegistry
from services.ingest.settings import IngestSettings
from services.modelserver.process import ModelServerProcess
from services.modelserver.settings import ModelServerSettings
from tests.integration.conftest import REPO_ROOT
from tests.integration.ingest_helpers import (
    auth,
    metric,
    packet,
    run,
    serve,
)

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]

#: A loaded 2-core CI machine: the broker's acknowledgement may take longer than the ingest
#: tests' default.
PRODUCE_TIMEOUT_S = 5.0
#: How late after its deadline a connection may be closed (a loaded 2-core CI machine).
SLACK_S = 2.0
#: The flooding client's address: another loopback address than the device's 127.0.0.1.
FLOOD_ADDRESS = "127.0.0.2"
#: Connections closed or refused by a listener limit, by limit.
LIMITS = "harstream_ingest_connection_limits_total"


def address(client: Client) -> tuple[str, int]:
    server = client.server
    assert server.port is not None
    return str(server.host), server.port


def open_connections(client: Client) -> int:
    runner = client.server.runner
    assert runner is not None and runner.server is not None
    return len(runner.server.connections)


async def until_closed(reader: asyncio.StreamReader, deadline_s: float) -> bytes:
    """Everything the server sends until it closes the connection; fails past the deadline."""
    data = b""
    async with asyncio.timeout(deadline_s):
        while chunk := await reader.read(65536):
            data += chunk
    return data


async def trickle(writer: asyncio.StreamWriter, pieces: list[bytes], every_s: float) -> None:
    """Send ``pieces`` one at a time, ``every_s`` apart, until the server hangs up."""
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(every_s)  # the attack's own pacing, not a wait for an event
    except ConnectionError:
        pass


# -- ingest: slowloris --------------------------------------------------------------------------


def test_idle_and_trickling_sockets_are_closed_within_the_header_timeout(
    make_settings: Callable[..., IngestSettings], registry: SqliteRegistry
) -> None:
    settings = make_settings(
        produce_timeout_s=PRODUCE_TIMEOUT_S, header_timeout_s=1.0, keepalive_timeout_s=1.0
    )

    async def one(host: str, port: int, trickling: bool) -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        opened = time.monotonic()
        feeder = None
        if trickling:  # headers that never end: one header line every 0.2 s
            pieces = [b"POST /v1/packets HTTP/1.1\r\nHost: x\r\n"] + [b"X-a: b\r\n"] * 500
            feeder = asyncio.create_task(trickle(writer, pieces, 0.2))
        data = await until_closed(reader, settings.header_timeout_s + SLACK_S)
        closed_after = time.monotonic() - opened
        if feeder is not None:
            feeder.cancel()
        writer.close()
        return closed_after, data

    async def scenario() -> None:
        async with serve(settings, registry) as client:
            host, port = address(client)
            results = await asyncio.gather(
                *(one(host, port, trickling=i % 2 == 1) for i in range(100))
            )
            for closed_after, data in results:
                # closed by the header timeout: not before it, and not long after
                assert closed_after >= settings.header_timeout_s - 0.1, closed_after
                assert data.startswith(b"HTTP/1.1 408 "), data[:80]
                assert b"application/problem+json" in data and b"header_timeout" in data
            assert metric(client, LIMITS, limit="header_timeout") == 100
            # nothing is left open on the server's side either
            deadline = time.monotonic() + SLACK_S
            while open_connections(client) > 0:
                assert time.monotonic() < deadline, open_connections(client)
                await asyncio.sleep(0.05)

    run(scenario())


def test_slow_bodies_are_answered_408_and_closed_within_the_body_timeout(
    make_settings: Callable[..., IngestSettings], registry: SqliteRegistry
) -> None:
    settings = make_settings(produce_timeout_s=PRODUCE_TIMEOUT_S, body_timeout_s=1.5)
    _, token = registry.add("dev")
    body = json.dumps(packet("dev")).encode()
    head = (
        f"POST /v1/packets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()

    async def one(host: str, port: int) -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(head)
        await writer.drain()
        sent_head = time.monotonic()
        pieces = [body[i : i + 10] for i in range(0, len(body), 10)]
        feeder = asyncio.create_task(trickle(writer, pieces, 0.2))
        data = await until_closed(reader, settings.body_timeout_s + SLACK_S)
        closed_after = time.monotonic() - sent_head
        feeder.cancel()
        writer.close()
        return closed_after, data

    async def scenario() -> None:
        async with serve(settings, registry) as client:
            host, port = address(client)
            results = await asyncio.gather(*(one(host, port) for _ in range(50)))
            for closed_after, data in results:
                assert closed_after >= settings.body_timeout_s - 0.1, closed_after
                assert data.startswith(b"HTTP/1.1 408 "), data[:80]
                assert b"body_timeout" in data
            assert metric(client, LIMITS, limit="body_timeout") == 50
            # an honest device on the same server is unaffected
            response = await client.post("/v1/packets", json=packet("dev"), headers=auth(token))
            assert response.status == 202, await response.text()

    run(scenario())


def test_idle_keepalive_connection_is_closed_after_its_timeout(
    make_settings: Callable[..., IngestSettings], registry: SqliteRegistry
) -> None:
    settings = make_settings(
        produce_timeout_s=PRODUCE_TIMEOUT_S, keepalive_timeout_s=1.0, header_timeout_s=5.0
    )

    async def scenario() -> None:
        async with serve(settings, registry) as client:
            host, port = address(client)
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            answered = time.monotonic()
            data = await until_closed(reader, settings.keepalive_timeout_s + SLACK_S)
            assert time.monotonic() - answered >= settings.keepalive_timeout_s - 0.1
            assert data.startswith(b"HTTP/1.1 200 ") and b"408" not in data
            assert metric(client, LIMITS, limit="idle_timeout") >= 1  # (the test client idles too)
            writer.close()

    run(scenario())


# -- ingest: connection cap ---------------------------------------------------------------------


def test_connections_past_the_cap_get_503_unread_and_capacity_returns(
    make_settings: Callable[..., IngestSettings], registry: SqliteRegistry
) -> None:
    settings = make_settings(
        produce_timeout_s=PRODUCE_TIMEOUT_S, max_connections=5, header_timeout_s=30.0
    )

    async def scenario() -> None:
        async with serve(settings, registry) as client:
            host, port = address(client)
            held = [await asyncio.open_connection(host, port) for _ in range(5)]
            deadline = time.monotonic() + 5
            while open_connections(client) < 5:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            started = time.monotonic()
            reader, writer = await asyncio.open_connection(host, port)
            data = await until_closed(reader, SLACK_S)  # answered without sending anything
            assert time.monotonic() - started < SLACK_S
            writer.close()
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in head
            problem = json.loads(body)
            assert problem["status"] == 503 and problem["reason"] == "over_capacity"
            assert metric(client, LIMITS, limit="over_capacity") >= 1
            # one held connection goes away: the next one is served
            held[0][1].close()
            deadline = time.monotonic() + 5
            while open_connections(client) > 4:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert (await until_closed(reader, 5)).startswith(b"HTTP/1.1 200 ")
            writer.close()
            for _, w in held[1:]:
                w.close()

    run(scenario())


# -- ingest: failed-authentication flood ------------------------------------------------------


def test_token_guessing_flood_gets_429_while_a_valid_device_keeps_getting_202(
    make_settings: Callable[..., IngestSettings], registry: SqliteRegistry
) -> None:
    settings = make_settings(
        produce_timeout_s=PRODUCE_TIMEOUT_S, auth_failure_burst=5, auth_failure_rate_per_s=1.0
    )
    _, token = registry.add("dev")

    async def flood(url: str, requests: int) -> list[tuple[int, str | None, str]]:
        connector = aiohttp.TCPConnector(local_addr=(FLOOD_ADDRESS, 0), limit=8)
        results: list[tuple[int, str | None, str]] = []
        async with aiohttp.ClientSession(connector=connector) as session:

            async def guess() -> None:
                headers = auth(secrets.token_urlsafe(32))
                try:
                    async with session.post(url, json=packet("dev"), headers=headers) as response:
                        problem = await response.json(content_type=None)
                        results.append(
                            (
                                response.status,
                                response.headers.get("Retry-After"),
                                problem["reason"],
                            )
                        )
                except aiohttp.ClientConnectionError:
                    # A blocked address's new connection is answered 429 and closed at once;
                    # a request already on its way then meets a reset instead of the answer.
                    results.append((0, None, "reset"))

            await asyncio.gather(*(guess() for _ in range(requests)))
        return results

    async def scenario() -> None:
        async with serve(settings, registry) as client:
            host, port = address(client)
            url = f"http://{host}:{port}/v1/packets"
            started = time.monotonic()
            flooding = asyncio.create_task(flood(url, 400))
            statuses = []
            seq = 0
            while not flooding.done():
                response = await client.post(
                    "/v1/packets", json=packet("dev", seq=seq), headers=auth(token)
                )
                statuses.append(response.status)
                seq += 1
            results = await flooding
            elapsed = time.monotonic() - started
            assert statuses and all(s == 202 for s in statuses), statuses
            refused = [r for r in results if r[0] == 401]
            limited = [r for r in results if r[0] == 429]
            reset = [r for r in results if r[0] == 0]
            assert len(refused) + len(limited) + len(reset) == 400, results
            assert len(limited) > len(reset)
            # the burst, plus what the bucket refilled while the flood ran
            assert len(refused) <= 5 + elapsed * 1.0 + 1, (len(refused), elapsed)
            assert all(reason == "auth_rate_limited" and retry for _, retry, reason in limited)
            # the device still gets in after the flood
            response = await client.post(
                "/v1/packets", json=packet("dev", seq=seq), headers=auth(token)
            )
            assert response.status == 202

    run(scenario())


# -- ingest: /metrics on its own listener -------------------------------------------------------


def test_ingest_serves_metrics_only_on_its_metrics_listener_bound_to_loopback(
    make_settings: Callable[..., IngestSettings], registry: SqliteRegistry, tmp_path: Path
) -> None:
    """`harstream ingest` as deployed: /metrics on the device port is a 404 problem; the
    metrics listener (no HARSTREAM_INGEST_METRICS_HOST: the default) listens on loopback
    only and serves the counters of the device port's traffic."""
    settings = make_settings(produce_timeout_s=PRODUCE_TIMEOUT_S)
    _, token = registry.add("dev")
    port, metrics_port = free_port(), free_port()
    env = {
        "HARSTREAM_INGEST_HOST": "127.0.0.1",
        "HARSTREAM_INGEST_PORT": str(port),
        "HARSTREAM_INGEST_METRICS_PORT": str(metrics_port),
        "HARSTREAM_INGEST_REGISTRY_URL": settings.registry_url,
        "HARSTREAM_INGEST_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "HARSTREAM_INGEST_KAFKA_PROFILE": "tansu",
        "HARSTREAM_INGEST_TOPIC_PREFIX": settings.topic_prefix,
    }
    ingest = ServiceProcess.harstream("ingest", ["ingest"], env, tmp_path)
    ingest.start()
    try:
        ingest.wait_http(f"http://127.0.0.1:{port}/readyz", 60)
        base = f"http://127.0.0.1:{port}"
        body = json.dumps(packet("dev")).encode()
        request = urllib.request.Request(
            f"{base}/v1/packets",
            data=body,
            headers={**auth(token), "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
        with pytest.raises(urllib.error.HTTPError) as public:
            urllib.request.urlopen(f"{base}/metrics", timeout=10)
        assert public.value.code == 404
        assert public.value.headers["Content-Type"].startswith("application/problem+json")
        assert json.loads(public.value.read())["status"] == 404
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        assert "harstream_ingest_packets_total 1.0" in text
        assert 'harstream_ingest_request_seconds_count{outcome="accepted"} 1.0' in text
        bound = _listening(metrics_port)
        assert bound and all(a.is_loopback for a in bound), bound
        # the metrics listener answers nothing else
        with pytest.raises(urllib.error.HTTPError) as other:
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/v1/packets", timeout=10)
        assert other.value.code in (404, 405)
    finally:
        ingest.stop()


# -- model server -------------------------------------------------------------------------------


def raw_exchange(host: str, port: int, request: bytes, timeout_s: float) -> bytes:
    """Send ``request`` and read until the server closes or ``timeout_s`` passes (a socket
    timeout here means the server kept waiting: the failure the tests look for)."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def test_model_server_refuses_a_200_mb_body_unread(model_server: ModelServerProcess) -> None:
    host, port = "127.0.0.1", model_server.rest_port
    # Only the headers are sent: a server that tried to read the 200 MB would never answer.
    head = (
        b"POST /v1/models/har:predict HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 200000000\r\n\r\n"
    )
    data = raw_exchange(host, port, head, timeout_s=10)
    header, _, body = data.partition(b"\r\n\r\n")
    assert header.startswith(b"HTTP/1.1 413 "), header
    assert b"application/problem+json" in header
    problem = json.loads(body)
    assert problem["status"] == 413 and "200000000" in problem["error"]
    status = raw_exchange(
        host, port, b"GET /v1/models/har HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 10
    )
    assert status.startswith(b"HTTP/1.1 200 ")


def _listening(port: int) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Local addresses of the listening TCP sockets on ``port`` (from /proc/net/tcp{,6}).

    Read from the kernel's table rather than by connecting to this machine's non-loopback
    address: that address is a private-range one, and tests send nothing outside loopback.
    """
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            address_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address_hex)
            # the kernel prints each 32-bit word in host (little-endian) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address = ipaddress.ip_address(words)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped  # gRPC listens on ::ffff:127.0.0.1
            found.add(address)
    return found


def test_bind_defaults_are_loopback() -> None:
    from services.alerting.settings import AlertingSettings
    from services.inference.settings import InferenceSettings
    from services.preprocess.settings import PreprocessSettings

    assert ModelServerSettings().host == "127.0.0.1"
    assert AlertingSettings().host == "127.0.0.1"  # the alert API: operators only
    assert InferenceSettings().metrics_host == "127.0.0.1"
    assert PreprocessSettings().metrics_host == "127.0.0.1"
    assert IngestSettings().host == "0.0.0.0"  # the device-facing door stays public
    assert IngestSettings().metrics_host == "127.0.0.1"  # ...but not its /metrics
    for settings in (InferenceSettings(), PreprocessSettings()):
        server, thread = start_http_server(0, settings.metrics_host, CollectorRegistry())
        try:
            port = server.server_address[1]
            bound = _listening(port)
            assert bound and all(a.is_loopback for a in bound), bound
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)


def test_model_server_defaults_and_rest_limits(tmp_path: Path) -> None:
    base = tmp_path / "har"
    shutil.copytree(REPO_ROOT / "models" / "har" / "1", base / "1")
    limits = {
        "HARSTREAM_MODELSERVER_REST_HEADER_TIMEOUT_S": "3",
        "HARSTREAM_MODELSERVER_REST_BODY_TIMEOUT_S": "2",
        "HARSTREAM_MODELSERVER_REST_MAX_CONNECTIONS": "3",
    }
    with ModelServerProcess(
        base, "har", log_path=tmp_path / "log", host=None, extra_env=limits
    ) as server:
        # no HARSTREAM_MODELSERVER_HOST: both APIs listen on loopback only
        for port in (server.grpc_port, server.rest_port):
            bound = _listening(port)
            assert bound and all(a.is_loopback for a in bound), (port, bound)
        host, port = "127.0.0.1", server.rest_port

        # headers trickled: the connection ends at the header deadline, not at the next byte
        sock = socket.create_connection((host, port), timeout=10)
        started = time.monotonic()
        sock.sendall(b"POST /v1/models/har:predict HTTP/1.1\r\n")
        closed = False
        while not closed and time.monotonic() - started < 3 + SLACK_S:
            try:
                sock.sendall(b"X-a: b\r\n")
                sock.settimeout(0.5)  # the trickle's pace: a header line every 0.5 s
                closed = sock.recv(1024) == b""
            except TimeoutError:
                continue
            except ConnectionError:
                closed = True
        sock.close()
        assert closed and time.monotonic() - started >= 3 - 0.1

        # a body that never completes: 408 at the body deadline
        started = time.monotonic()
        data = raw_exchange(
            host,
            port,
            b"POST /v1/models/har:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
            timeout_s=2 + SLACK_S + 3,
        )
        assert data.startswith(b"HTTP/1.1 408 "), data[:80]
        assert time.monotonic() - started >= 2 - 0.1

        # three connections held: a fourth is answered 503 without sending anything
        held = [socket.create_connection((host, port), timeout=10) for _ in range(3)]
        try:
            with socket.create_connection((host, port), timeout=5) as extra:
                extra.settimeout(5)
                answer = b""
                while chunk := extra.recv(4096):
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 503 "), answer[:80]
            assert json.loads(answer.partition(b"\r\n\r\n")[2])["status"] == 503
        finally:
            for s in held:
                s.close()
