"""A raw-socket HTTP/1.1 client for requests no HTTP library would send: broken request
lines, oversized or non-UTF-8 headers, bad chunked encoding, bodies cut off mid-way."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RawResponse:
    status: int
    #: Header names lower-cased; the last value wins.
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


class NoResponse(Exception):
    """The server closed the connection (or timed out) without a complete response."""


def exchange(
    host: str, port: int, data: bytes, timeout_s: float = 10.0, half_close: bool = False
) -> RawResponse:
    """Send ``data`` as is and read one response (the server closes or Content-Length ends
    it). ``half_close`` shuts our sending side after ``data``: an asyncio server (aiohttp)
    then closes the connection, so it is for testing exactly that."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError) as exc:
                if received:
                    break
                raise NoResponse(f"{type(exc).__name__}: {exc}") from exc
            if not chunk:
                break
            received += chunk
            parsed = _parse(received)
            if parsed is not None:
                return parsed
    parsed = _parse(received, complete=True)
    if parsed is None:
        raise NoResponse(f"incomplete response: {received[:200]!r}")
    return parsed


async def fetch(host: str, port: int, data: bytes, timeout_s: float = 30.0) -> RawResponse:
    """:func:`exchange` on asyncio streams. Sending and reading overlap, so a server that
    answers before reading a large body (413 from Content-Length) is heard, not reset."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port)

        async def send() -> None:
            with contextlib.suppress(ConnectionError):
                writer.write(data)
                await writer.drain()

        sending = asyncio.create_task(send())
        try:
            received = b""
            while True:
                try:
                    chunk = await reader.read(65536)
                except ConnectionError as exc:
                    if received:
                        break
                    raise NoResponse(f"{type(exc).__name__}: {exc}") from exc
                if not chunk:
                    break
                received += chunk
                parsed = _parse(received)
                if parsed is not None:
                    return parsed
        finally:
            sending.cancel()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    parsed = _parse(received, complete=True)
    if parsed is None:
        raise NoResponse(f"incomplete response: {received[:200]!r}")
    return parsed


async def send_and_abandon(host: str, port: int, data: bytes) -> None:
    """Send ``data`` and close the connection at once (a client that gives up mid-request)."""
    _reader, writer = await asyncio.open_connection(host, port)
    with contextlib.suppress(ConnectionError):
        writer.write(data)
        await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


def send_and_close(host: str, port: int, data: bytes, timeout_s: float = 5.0) -> None:
    """Send ``data`` and close the connection without reading (a client that gives up)."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(data)


def _parse(data: bytes, complete: bool = False) -> RawResponse | None:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise NoResponse(f"not an HTTP response: {lines[0][:100]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    if length is not None and length.isdigit():
        if len(body) < int(length):
            return None
        body = body[: int(length)]
    elif not complete:
        return None
    return RawResponse(int(parts[1]), headers, body)


def request_bytes(
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    content_length: bool = True,
) -> bytes:
    """An HTTP/1.1 request; header names and values are bytes, sent as given."""
    lines = [f"{method} {path} HTTP/1.1".encode("latin-1"), b"Host: ingest"]
    lines += [name + b": " + value for name, value in headers]
    if content_length:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
