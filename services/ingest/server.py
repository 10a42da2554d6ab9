"""Serving the ingest app: problem documents for requests aiohttp's HTTP parser refuses, and
a bounded shutdown on SIGTERM/SIGINT.

aiohttp answers a request its parser cannot read (bad Content-Length, a header line over
8 KB, broken chunked encoding, an unknown method) before any handler or middleware runs,
with ``RequestHandler.handle_error``: a ``text/plain`` 400 echoing the parser's message, and
the parser's traceback logged at ERROR. aiohttp 3.14 has no public hook for it (aio-libs/
aiohttp#3287 is open), so :class:`ProblemRequestHandler` overrides ``handle_error`` and
:class:`ProblemAppRunner` serves the app with it. The override relies on two internals of
``web.Server`` (``_loop`` and ``_kwargs``, the arguments it builds its ``RequestHandler``
with); ``tests/integration/test_ingest_service.py::test_parser_refusals_are_problems``
sends each kind of garbage over a raw socket and fails if an aiohttp upgrade changes them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError

from services.ingest.problems import problem_response

logger = logging.getLogger(__name__)

#: Called with the problem's reason each time the parser's refusal is answered.
RefusalHook = Callable[[str], None]

#: Longest parser message quoted in a problem's detail (it can quote the offending line).
MAX_DETAIL_CHARS = 160


def _summary(exc: BaseException | None, message: str | None) -> str:
    text = exc.message if isinstance(exc, HttpProcessingError) and exc.message else message
    first = (text or "unreadable request").strip().splitlines()[0].rstrip(":")
    return first[:MAX_DETAIL_CHARS]


class ProblemRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering its own refusals with problem documents."""

    def __init__(self, manager: web.Server, *, on_refusal: RefusalHook, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._on_refusal = on_refusal

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            # A handler error that escaped the app's middleware (it catches everything) or
            # a handler timeout: a bug worth a traceback.
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            reason, detail = "internal", "internal error; retry later"
        else:
            summary = _summary(exc, message)
            # Scanners and TLS clients on the plain-HTTP port send garbage all day: one line,
            # no traceback (the counter shows the rate).
            level = logging.DEBUG if isinstance(exc, BadHttpMethod) else logging.INFO
            logger.log(
                level, "refused an unreadable HTTP request from %s: %s", request.remote, summary
            )
            reason = "too_large" if status in (413, 431) else "malformed"
            detail = f"unreadable HTTP request: {summary}"
        if request.writer.output_size > 0:  # a response was already on its way
            raise ConnectionError("response already started; closing the connection")
        self._on_refusal(reason)
        response = problem_response(status, reason, detail)
        response.force_close()
        return response


class _ProblemServer(web.Server):
    def __init__(self, *args: Any, on_refusal: RefusalHook, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_refusal = on_refusal

    def __call__(self) -> web.RequestHandler:
        return ProblemRequestHandler(
            self, loop=self._loop, on_refusal=self._on_refusal, **self._kwargs
        )


class ProblemAppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections are :class:`ProblemRequestHandler`s."""

    def __init__(self, app: web.Application, *, on_refusal: RefusalHook, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._on_refusal = on_refusal

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # starts the app; builds aiohttp's server
        return _ProblemServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=asyncio.get_running_loop(),
            on_refusal=self._on_refusal,
            **server._kwargs,  # private: see the module docstring
        )


async def serve_until_signalled(
    runner: web.AppRunner, host: str, port: int, on_signal: Callable[[], None]
) -> None:
    """Serve on ``host:port`` until SIGTERM or SIGINT, call ``on_signal`` (it starts the
    shutdown clock), then stop: no new connections, in-flight requests finish (up to the
    runner's shutdown_timeout), the app's cleanup runs."""
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        on_signal()
    finally:
        await runner.cleanup()
