"""Serving an aiohttp app with bounded connections and problem documents: what every
harstream HTTP listener (ingest's device API, the alert API) is served with.

aiohttp answers a request its parser cannot read (bad Content-Length, a header line over
8 KB, broken chunked encoding, an unknown method) before any handler or middleware runs,
with ``RequestHandler.handle_error``: a ``text/plain`` 400 echoing the parser's message, and
the parser's traceback logged at ERROR. aiohttp 3.14 has no public hook for it (aio-libs/
aiohttp#3287 is open), so :class:`ProblemRequestHandler` overrides ``handle_error`` and
:class:`ProblemAppRunner` serves the app with it. The override relies on two internals of
``web.Server`` (``_loop`` and ``_kwargs``, the arguments it builds its ``RequestHandler``
with); ``tests/integration/test_ingest_service.py::test_parser_refusals_are_problems``
sends each kind of garbage over a raw socket and fails if an aiohttp upgrade changes them.

The same handler bounds every connection before authentication, which aiohttp itself does
not (its only clock is the keep-alive timeout, and a request whose headers or body trickle
in holds a socket and a task forever): see :class:`ListenerLimits`. The phase tracking reads
two more internals, ``_messages`` (the parsed requests waiting for the handler) and
``_request_count``; ``tests/integration/test_security_listeners.py`` trickles headers and
bodies (into ingest and the alert API) and fails if they stop meaning what they mean here.

Each service keeps its own problem format (ingest's carry a ``reason`` and field errors,
the alert API's are plain RFC 9457): the runner takes a :data:`ProblemDocument` that builds
the JSON of every answer written here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError

from services.common.authlimit import AuthFailureLimit, blocked_detail

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"

#: Builds the JSON of a problem answered by the listener itself: (status, reason, detail)
#: → document. ``reason`` is a short token (``header_timeout``, ``over_capacity``,
#: ``malformed``, ``too_large``, ``internal``, or the service's own for a screened address).
ProblemDocument = Callable[[int, str, str], Mapping[str, object]]
#: Called with the problem's reason each time the parser's refusal is answered.
RefusalHook = Callable[[str], None]
#: Called with the limit's name each time a connection is closed or refused by a limit
#: (``header_timeout``, ``body_timeout``, ``idle_timeout``, ``over_capacity``).
LimitHook = Callable[[str], None]
#: Called with a new connection's peer address before anything is read from it: bytes to
#: answer and close with (the address is refused), or None to serve it.
ScreenHook = Callable[[str], bytes | None]

#: The names :data:`LimitHook` is called with.
LIMIT_REASONS = ("header_timeout", "body_timeout", "idle_timeout", "over_capacity")
#: The reasons :data:`RefusalHook` is called with.
REFUSAL_REASONS = ("malformed", "too_large", "internal")

#: Longest parser message quoted in a problem's detail (it can quote the offending line).
MAX_DETAIL_CHARS = 160


@dataclass(frozen=True)
class ListenerLimits:
    """What one connection may hold before (and between) requests.

    - ``header_timeout_s``: from the connection's start, or from the first byte of a later
      request, until its headers are complete (slowloris: headers sent a byte at a time);
    - ``body_timeout_s``: from the end of the headers until the whole body has arrived (a
      slow body holds a handler and a socket just as long);
    - ``keepalive_timeout_s``: how long a connection may sit idle between requests;
    - ``max_connections``: connections served at once; one more is answered 503 at once,
      without reading it, and closed (file descriptors stay bounded under a flood).

    The time a handler spends on a complete request (waiting for Kafka, say) is not
    limited here: the handler has its own timeouts. The body's size is the app's
    ``client_max_size`` (or the handler's own streaming limit).
    """

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 15.0
    max_connections: int = 1000


def raw_problem(
    document: ProblemDocument,
    status: int,
    reason: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """A complete HTTP/1.1 problem response that closes the connection, as bytes: written
    straight to a transport when no handler runs (over capacity, a request timed out, an
    address screened at accept)."""
    doc = document(status, reason, detail)
    body = json.dumps(doc).encode()
    lines = [
        f"HTTP/1.1 {status} {_reason_phrase(str(doc.get('title', 'Error')))}",
        f"Content-Type: {PROBLEM_CONTENT_TYPE}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def _reason_phrase(title: str) -> str:
    # A reason phrase is one line of printable ASCII (RFC 9112); titles are ours, but a
    # stray character must not break the response.
    return "".join(c for c in title if " " <= c <= "~") or "Error"


def problem_response(
    document: ProblemDocument,
    status: int,
    reason: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """The same document as an aiohttp response (for ``handle_error`` and middlewares)."""
    return web.Response(
        status=status,
        text=json.dumps(document(status, reason, detail)),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def over_capacity_answer(document: ProblemDocument) -> bytes:
    return raw_problem(
        document,
        503,
        "over_capacity",
        "the server has too many open connections; retry later",
        {"Retry-After": "1"},
    )


def auth_screen(
    limit: AuthFailureLimit,
    document: ProblemDocument,
    reason: str,
    on_blocked: Callable[[], None] = lambda: None,
) -> ScreenHook:
    """A :data:`ScreenHook` answering a new connection from an address over its
    failed-authentication budget with a canned 429 (before any HTTP is parsed), and calling
    ``on_blocked`` each time. The answers are built once per Retry-After value."""
    answers: dict[int, bytes] = {}

    def screen(peer: str) -> bytes | None:
        retry_after = limit.blocked_for(peer)
        if retry_after is None:
            return None
        on_blocked()
        answer = answers.get(retry_after)
        if answer is None:
            answer = raw_problem(
                document,
                429,
                reason,
                blocked_detail(retry_after),
                {"Retry-After": str(retry_after)},
            )
            answers[retry_after] = answer
        return answer

    return screen


def _summary(exc: BaseException | None, message: str | None) -> str:
    text = exc.message if isinstance(exc, HttpProcessingError) and exc.message else message
    first = (text or "unreadable request").strip().splitlines()[0].rstrip(":")
    return first[:MAX_DETAIL_CHARS]


class ProblemRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering its own refusals with problem documents and
    holding each connection to :class:`ListenerLimits`.

    A connection is in one of three phases: ``head`` (waiting for a request's headers, or
    idle between requests), ``body`` (headers read, body still arriving) or ``busy`` (a
    complete request with the handler). One timer per connection closes it when the
    deadline of its phase passes; ``busy`` has none.
    """

    def __init__(
        self,
        manager: web.Server,
        *,
        document: ProblemDocument,
        over_capacity: bytes,
        on_refusal: RefusalHook | None = None,
        limits: ListenerLimits | None = None,
        on_limit: LimitHook | None = None,
        screen: ScreenHook | None = None,
        **kwargs: Any,
    ) -> None:
        limits = limits or ListenerLimits()
        # aiohttp's own keep-alive timer stays as a backstop that never fires first (at the
        # same instant it would close silently, racing the 408 of our header timeout).
        kwargs["keepalive_timeout"] = limits.keepalive_timeout_s + limits.header_timeout_s
        super().__init__(manager, **kwargs)
        self._document = document
        self._over_capacity_answer = over_capacity
        self._on_refusal = on_refusal or (lambda _reason: None)
        self._limits = limits
        self._on_limit = on_limit or (lambda _reason: None)
        self._screen = screen
        self._over_capacity = False  # refused at connection_made (capacity or screen)
        self._phase = "head"
        self._head_started = False  # a byte of the awaited request has arrived
        self._served = 0  # requests answered on this connection
        self._body: Any = None  # the payload (StreamReader) of the request in ``body``
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # -- limits ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        answer = None
        if self._screen is not None:
            peer = transport.get_extra_info("peername")
            answer = self._screen(str(peer[0])) if peer else None
        if answer is None and (
            manager is not None and len(manager.connections) >= self._limits.max_connections
        ):
            answer = self._over_capacity_answer
            self._on_limit("over_capacity")
        if answer is not None:
            # Not registered with the manager, no parser fed, no task started: the answer
            # costs one write, and the file descriptor goes as soon as it is flushed.
            self._over_capacity = True
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(answer)
            transport.close()
            return
        super().connection_made(transport)
        self._arm(self._loop.time() + self._limits.header_timeout_s)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._over_capacity:
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._over_capacity:
            return
        before = self._request_count
        super().data_received(data)
        if self._phase == "body" and self._body is not None and self._body.is_eof():
            self._busy()
        if self._phase != "head":
            return
        if self._request_count > before and self._messages:
            self._start(self._messages[-1][1])
        elif data and not self._head_started:
            self._head_started = True
            self._arm(min(self._deadline, self._loop.time() + self._limits.header_timeout_s))

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        self._served += 1
        if self._messages:  # pipelined: the next request is parsed already
            self._start(self._messages[0][1])
        else:
            self._phase = "head"
            self._head_started = False
            self._arm(self._loop.time() + self._limits.keepalive_timeout_s)
        return result

    def _start(self, payload: Any) -> None:
        """A request's headers are complete: its body has ``body_timeout_s`` to arrive."""
        if payload.is_eof():
            self._busy()
            return
        self._phase = "body"
        self._body = payload
        self._arm(self._loop.time() + self._limits.body_timeout_s)

    def _busy(self) -> None:
        self._phase = "busy"
        self._body = None
        self._disarm()

    def _arm(self, deadline: float) -> None:
        self._disarm()
        self._deadline = deadline
        self._timer = self._loop.call_at(deadline, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self._phase == "busy" or self.transport is None:
            return
        if self._phase == "body":
            reason, detail = (
                "body_timeout",
                (f"the request body did not arrive within {self._limits.body_timeout_s:g} s"),
            )
        elif self._head_started or self._served == 0:
            reason, detail = (
                "header_timeout",
                (f"the request headers did not arrive within {self._limits.header_timeout_s:g} s"),
            )
        else:
            reason, detail = "idle_timeout", ""
        logger.debug("closing a connection from %s: %s", self.peername, reason)
        self._on_limit(reason)
        if detail:
            # Nothing has been written for this request yet (its handler, if any, is still
            # waiting for the body): a 408 tells an honest slow client what happened.
            self.transport.write(raw_problem(self._document, 408, reason, detail))
        self.force_close()

    # -- aiohttp's own refusals -----------------------------------------------------------------

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
        response = problem_response(self._document, status, reason, detail)
        response.force_close()
        return response


class _ProblemServer(web.Server):
    def __init__(self, *args: Any, handler_options: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handler_options = handler_options

    def __call__(self) -> web.RequestHandler:
        return ProblemRequestHandler(self, loop=self._loop, **self._handler_options, **self._kwargs)


class ProblemAppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections are :class:`ProblemRequestHandler`s: problem
    documents built by ``document`` for aiohttp's own refusals and the listener's limits."""

    def __init__(
        self,
        app: web.Application,
        *,
        document: ProblemDocument,
        on_refusal: RefusalHook | None = None,
        limits: ListenerLimits | None = None,
        on_limit: LimitHook | None = None,
        screen: ScreenHook | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._handler_options: dict[str, Any] = {
            "document": document,
            "over_capacity": over_capacity_answer(document),
            "on_refusal": on_refusal,
            "limits": limits or ListenerLimits(),
            "on_limit": on_limit,
            "screen": screen,
        }

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # starts the app; builds aiohttp's server
        kwargs = dict(server._kwargs)  # private: see the module docstring
        kwargs.pop("keepalive_timeout", None)  # the limits set it
        return _ProblemServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=asyncio.get_running_loop(),
            handler_options=self._handler_options,
            **kwargs,
        )


class Listener(NamedTuple):
    """A runner and the address it serves on."""

    runner: web.AppRunner
    host: str
    port: int


async def serve_until_signalled(
    listeners: Sequence[Listener], on_signal: Callable[[], None]
) -> None:
    """Serve every listener until SIGTERM or SIGINT, call ``on_signal`` (it starts the
    shutdown clock), then stop them in order: no new connections, in-flight requests finish
    (up to each runner's shutdown_timeout), the apps' cleanup runs."""
    started: list[web.AppRunner] = []
    try:
        for listener in listeners:
            await listener.runner.setup()
            started.append(listener.runner)
            await web.TCPSite(listener.runner, listener.host, listener.port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        on_signal()
    finally:
        for runner in started:
            await runner.cleanup()


async def serve_on(runner: web.AppRunner, host: str, port: int) -> int:
    """Set ``runner`` up and serve it on ``host:port``; returns the bound port (``port`` 0:
    the one the system chose). The caller cleans ``runner`` up, also when this raised."""
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return int(runner.addresses[0][1])
