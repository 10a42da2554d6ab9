"""The suite's own webhook receiver: records every alert notification (its Idempotency-Key
and body) and can go down, as a receiver's outage would look to alerting: nothing listens
on the port and open connections are dropped."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from services.common.broker import free_port
from services.faults.records import DeliveryRecord, delivery_record
from shared.errors import SchemaError

logger = logging.getLogger(__name__)

PATH = "/hook"


class WebhookReceiver:
    """``async with WebhookReceiver() as r:`` listens on ``r.url``; :meth:`down` and
    :meth:`up` take it away and bring it back on the same port."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port()
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
        # reuse_address: the port was ours a moment ago and may sit in TIME_WAIT.
        await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
        self._runner = runner
        logger.info("webhook receiver listening on %s", self.url)

    async def down(self) -> None:
        """Stop listening and drop every connection (keep-alive ones included)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            logger.info("webhook receiver down")

    async def __aenter__(self) -> WebhookReceiver:
        await self.up()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.down()

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
