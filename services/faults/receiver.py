"""The suite's own webhook receiver: records every alert notification (its Idempotency-Key
and body) and can go down, as a receiver's outage would look to alerting: nothing listens
on the port and open connections are dropped.

Its port is bound from the start, and again while it is down, without listening: alerting
is configured with the URL before the pipeline starts (~30 s on a loaded machine), and a
port merely picked as free was taken meanwhile by another process's connection ("address
already in use" when the receiver came up). A bound socket that does not listen refuses
connections, as nothing listening would."""

from __future__ import annotations

import logging
import socket
import time

from aiohttp import web

from services.faults.records import DeliveryRecord, delivery_record
from shared.errors import SchemaError

logger = logging.getLogger(__name__)

PATH = "/hook"


class WebhookReceiver:
    """``async with WebhookReceiver() as r:`` listens on ``r.url``; :meth:`down` and
    :meth:`up` take it away and bring it back on the same port."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self._socket: socket.socket | None = _reserve(host, port or 0)
        self.port: int = self._socket.getsockname()[1]
        self.deliveries: list[DeliveryRecord] = []
        #: POSTs that were not an alert notification (kept for the report).
        self.malformed: list[str] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{PATH}"

    @property
    def listening(self) -> bool:
        return self._runner is not None

    async def up(self) -> None:
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_post(PATH, self._handle)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        sock, self._socket = self._socket or _reserve(self.host, self.port), None
        await web.SockSite(runner, sock).start()  # listens on the reserved socket
        self._runner = runner
        logger.info("webhook receiver listening on %s", self.url)

    async def down(self) -> None:
        """Stop listening and drop every connection (keep-alive ones included)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()  # closes the listening socket
            self._socket = _reserve(self.host, self.port)  # the port stays ours
            logger.info("webhook receiver down")

    def close(self) -> None:
        """Give the port back (after :meth:`down`)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def __aenter__(self) -> WebhookReceiver:
        await self.up()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.down()
        self.close()

    async def _handle(self, request: web.Request) -> web.Response:
        if self._runner is None:
            # Going down while this request was in flight: a dead receiver answers nothing.
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=503)
        body = await request.read()
        key = request.headers.get("Idempotency-Key", "")
        try:
            self.deliveries.append(delivery_record(time.time(), key, body))
        except SchemaError as exc:
            self.malformed.append(f"{key or '(no key)'}: {exc}")
        return web.Response(status=204)


def _reserve(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: a free port), not listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # The port may sit in TIME_WAIT after the receiver went down.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
