"""A TLS and SASL/SCRAM front for the development broker.

The embedded Tansu 0.6.0 build cannot secure its listener: its ``--cert``/``--key`` options
are mutually exclusive on the command line and its TLS acceptor is never used, and its only
storage engine (dynostore) keeps no SCRAM credentials, so with ``--authentication`` every
user is unknown (both checked in its source at the wheel's commit, 510f3e2, and by running
it). To run harstream's real clients over SASL_SSL locally, this gateway listens where the
clients connect, speaks TLS (Python's ``ssl``, i.e. OpenSSL) and performs the SASL handshake
the way a Kafka broker does (SaslHandshake v1, SaslAuthenticate v0-v2, SCRAM-SHA-256/512),
then relays bytes to Tansu unchanged. Before authentication only ApiVersions (relayed) and
the SASL requests are served; anything else closes the connection, as Apache Kafka does.

Development and tests only: Tansu itself still listens in plaintext on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
import threading
from collections.abc import Mapping

from services.common.scram import (
    HASHES,
    ScramCredential,
    ScramError,
    ScramServerSession,
    credential,
)

logger = logging.getLogger(__name__)

API_VERSIONS = 18
SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
SASL_AUTHENTICATION_FAILED = 58
#: Requests before authentication are tiny; a bigger frame is refused unread.
MAX_UNAUTHENTICATED_FRAME = 64 * 1024
RELAY_CHUNK = 64 * 1024


class _Refused(Exception):
    """Close the connection (after an optional last response)."""


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise _Refused("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise _Refused("varint too long")


def _put_uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _skip_tags(data: bytes, pos: int) -> int:
    count, pos = _uvarint(data, pos)
    for _ in range(count):
        _, pos = _uvarint(data, pos)
        size, pos = _uvarint(data, pos)
        pos += size
    return pos


def _request_body(frame: bytes, flexible: bool) -> bytes:
    """The body after the request header (v1, or v2 when ``flexible``)."""
    (client_id_len,) = struct.unpack_from(">h", frame, 8)
    pos = 10 + max(client_id_len, 0)
    if flexible:
        pos = _skip_tags(frame, pos)
    return frame[pos:]


def _authenticate_response(
    correlation_id: int, version: int, error: int, message: str | None, auth_bytes: bytes
) -> bytes:
    encoded = message.encode() if message is not None else None
    if version >= 2:  # flexible: compact types and tagged fields
        body = struct.pack(">ib", correlation_id, 0) + struct.pack(">h", error)
        body += _put_uvarint(0 if encoded is None else len(encoded) + 1) + (encoded or b"")
        body += _put_uvarint(len(auth_bytes) + 1) + auth_bytes
        body += struct.pack(">q", 0) + b"\x00"
    else:
        body = struct.pack(">ih", correlation_id, error)
        body += struct.pack(">h", -1) if encoded is None else struct.pack(">h", len(encoded))
        body += encoded or b""
        body += struct.pack(">i", len(auth_bytes)) + auth_bytes
        if version >= 1:
            body += struct.pack(">q", 0)
    return struct.pack(">i", len(body)) + body


def _handshake_response(correlation_id: int, error: int, mechanisms: list[str]) -> bytes:
    body = struct.pack(">ihi", correlation_id, error, len(mechanisms))
    for name in mechanisms:
        body += struct.pack(">h", len(name)) + name.encode()
    return struct.pack(">i", len(body)) + body


async def _read_frame(reader: asyncio.StreamReader, limit: int) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    if not 8 <= size <= limit:
        raise _Refused(f"frame of {size} bytes before authentication")
    return await reader.readexactly(size)


class SecurityGateway:
    """Listens on ``127.0.0.1:port`` with TLS (``tls``) and/or SCRAM (``users``) and relays
    authenticated connections to ``127.0.0.1:upstream_port``. Runs its own event loop in a
    thread, so synchronous tests and fixtures can start and stop it."""

    def __init__(
        self,
        port: int,
        upstream_port: int,
        tls: ssl.SSLContext | None = None,
        credentials: Mapping[str, Mapping[str, ScramCredential]] | None = None,
    ) -> None:
        """``credentials``: mechanism -> user -> stored credential; None: no SASL."""
        self.port = port
        self.upstream_port = upstream_port
        self._tls = tls
        self._credentials = credentials
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        #: Strong references: a handler waiting on its relays must not be collected.
        self._connections: set[asyncio.Task[None]] = set()
        #: Users authenticated so far and refusals, for tests (thread-safe enough: ints).
        self.authenticated: list[str] = []
        self.refused = 0

    def start(self, timeout_s: float = 10.0) -> SecurityGateway:
        self._thread = threading.Thread(target=self._run, name="kafka-gateway", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._error is not None:
            raise RuntimeError(f"security gateway did not start: {self._error}")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self._tls)
            )
        except OSError as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.get_running_loop().stop()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        thread.join(timeout=10.0)
        self._loop = self._thread = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        try:
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            if self._credentials is not None:
                await self._authenticate(reader, writer, up_reader, upstream)
            # Kafka needs no half-closed connections: when either side ends, both close.
            relays = [
                asyncio.ensure_future(_relay(reader, upstream)),
                asyncio.ensure_future(_relay(up_reader, writer)),
            ]
            try:
                await asyncio.wait(relays, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for relay in relays:
                    relay.cancel()
        except (_Refused, ScramError) as exc:
            self.refused += 1
            logger.info("gateway refused a connection: %s", exc)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            logger.debug("gateway connection ended: %s", exc)
        except asyncio.CancelledError:
            pass  # the gateway is stopping: end quietly (asyncio logs a cancelled handler)
        finally:
            for w in (writer, upstream):
                if w is not None:
                    w.close()

    async def _authenticate(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
    ) -> None:
        assert self._credentials is not None
        mechanisms = sorted(self._credentials)
        session: ScramServerSession | None = None
        steps = 0
        while True:
            frame = await _read_frame(reader, MAX_UNAUTHENTICATED_FRAME)
            api_key, version, correlation_id = struct.unpack_from(">hhi", frame)
            if api_key == API_VERSIONS:
                upstream.write(struct.pack(">i", len(frame)) + frame)
                await upstream.drain()
                (size,) = struct.unpack(">i", await up_reader.readexactly(4))
                writer.write(struct.pack(">i", size) + await up_reader.readexactly(size))
                await writer.drain()
            elif api_key == SASL_HANDSHAKE:
                if version < 1:
                    raise _Refused("SaslHandshake v0 (unframed tokens) is not supported")
                body = _request_body(frame, flexible=False)
                (length,) = struct.unpack_from(">h", body)
                mechanism = body[2 : 2 + length].decode(errors="replace")
                ok = mechanism in self._credentials
                error = 0 if ok else UNSUPPORTED_SASL_MECHANISM
                writer.write(_handshake_response(correlation_id, error, mechanisms))
                await writer.drain()
                if not ok:
                    raise _Refused(f"mechanism {mechanism!r} not enabled")
                session = ScramServerSession(mechanism, self._credentials[mechanism])
            elif api_key == SASL_AUTHENTICATE and session is not None:
                body = _request_body(frame, flexible=version >= 2)
                if version >= 2:
                    length, pos = _uvarint(body, 0)
                    token = body[pos : pos + length - 1]
                else:
                    (length,) = struct.unpack_from(">i", body)
                    token = body[4 : 4 + length]
                try:
                    answer = session.first(token) if steps == 0 else session.final(token)
                except ScramError:
                    message = (
                        "Authentication failed during authentication due to invalid credentials"
                    )
                    writer.write(
                        _authenticate_response(
                            correlation_id, version, SASL_AUTHENTICATION_FAILED, message, b""
                        )
                    )
                    await writer.drain()
                    raise
                steps += 1
                writer.write(_authenticate_response(correlation_id, version, 0, None, answer))
                await writer.drain()
                if session.username is not None:
                    self.authenticated.append(session.username)
                    return
            else:
                raise _Refused(f"request {api_key} before SASL authentication")

    def __enter__(self) -> SecurityGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ssl.SSLError):
        while data := await reader.read(RELAY_CHUNK):
            writer.write(data)
            await writer.drain()


def scram_credentials(
    users: Mapping[str, str], mechanisms: tuple[str, ...] = tuple(HASHES)
) -> dict[str, dict[str, ScramCredential]]:
    """Stored credentials (mechanism -> user -> credential) of ``users`` (name -> password)."""
    return {m: {u: credential(m, p) for u, p in users.items()} for m in mechanisms}
