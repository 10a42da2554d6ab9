"""The console's HTTP routes: an aiohttp sub-application mounted at ``/console`` by the
alerting service (:func:`mount`).

* ``GET /console/`` the page (static HTML, CSS and plain JavaScript from ``static/``);
* ``POST /console/api/login`` ``{"name", "password"}``: one password check (the alert API's
  operators, the same failed-authentication limit per address), then a session cookie
  (HttpOnly, SameSite=Strict, Secure over TLS) and the session's CSRF token;
* ``POST /console/api/logout``; ``GET /console/api/session``;
* ``GET /console/api/fleet``, ``/alerts``, ``/alerts/{id}/history``, ``/devices/{id}``,
  ``/pipeline``; ``GET /console/api/events``: server-sent events (device changes, alert
  changes, counts), pushed every ``update_interval_s``;
* ``POST /console/api/alerts/{id}/ack`` and ``/resolve`` ``{"note"}`` (carer).

Every state-changing request needs the session's CSRF token in ``X-CSRF-Token``, a JSON
body (a cross-site form cannot send one without a CORS preflight, which is never granted)
and, when the browser sends one, an ``Origin`` of this host. The operator is looked up in
the store on every request: a revoked operator's sessions end at once, a changed role
applies at once. Errors are problem documents, like the alert API's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from services.alerting.api import MAX_NOTE, BadRequestError, parse_limit, problem
from services.alerting.lifecycle import AlertNotFoundError, InvalidTransitionError
from services.alerting.store import HistoryEntry
from services.common.authlimit import AuthFailureLimit, OverBudgetError
from services.common.operators import (
    MAX_PASSWORD_LENGTH,
    Identity,
    OperatorRecord,
    Permission,
)
from services.console import pipeline as pipeline_figures
from services.console.fleet import FleetView, alert_order
from services.console.history import HistoryClient, HistoryUnavailableError
from services.console.sessions import Session, SessionStore
from services.console.settings import ConsoleSettings
from shared.messages import Alert, AlertState, AlertType

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
COOKIE = "harstream_console"
PREFIX = "/console"
CSRF_HEADER = "X-CSRF-Token"
#: Scripts, styles and connections from this origin only; no frames, no plugins.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; media-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
#: Live connections send a comment this often so proxies keep them open (seconds).
KEEPALIVE_S = 15.0
#: How often a live connection checks that its operator still exists and is not revoked.
RECHECK_S = 10.0

SESSION = web.RequestKey("console_session", Session)
SESSION_ID = web.RequestKey("console_session_id", str)


class ConsoleBackend(Protocol):
    """What the alerting service gives the console."""

    registry: CollectorRegistry

    async def list_alerts(
        self, state: AlertState | None, kind: AlertType | None, device_id: str | None, limit: int
    ) -> list[Alert]: ...

    async def get_alert(self, alert_id: str) -> Alert | None: ...

    async def history(self, alert_id: str) -> list[HistoryEntry]: ...

    async def acknowledge(self, alert_id: str, operator: str, note: str | None) -> Alert: ...

    async def resolve(self, alert_id: str, operator: str, note: str | None) -> Alert: ...

    async def authenticate(
        self, authorization: str | None, before_hashing: Callable[[], None]
    ) -> Identity | None: ...

    async def operator_record(self, name: str) -> OperatorRecord | None: ...


#: Reads the consumer lag of the pipeline's groups (services.console.lag.LagReader).
LagSource = Callable[[], Awaitable[dict[str, dict[str, int | None]]]]
#: Reads the raw signal behind an alert (services.console.raw.RawReader), or None.
RawWindow = Callable[[Alert], Awaitable[dict[str, Any] | None]]


def _basic(name: str, password: str) -> str:
    """The login as an HTTP Basic credential, so it is checked exactly as the alert API checks
    one (same parsing, scrypt slots, constant-time failures)."""
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode("ascii")


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise BadRequestError("the body must be JSON (Content-Type: application/json)")
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequestError("the body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise BadRequestError("the body must be a JSON object")
    return doc


def _note(doc: dict[str, Any]) -> str | None:
    unknown = sorted(k for k in doc if k != "note")
    if unknown:
        raise BadRequestError(f"unknown field {unknown[0]!r}: the body may only carry note")
    note = doc.get("note")
    if note is None or note == "":
        return None
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise BadRequestError(f"note must be a string of at most {MAX_NOTE} characters")
    if any(not c.isprintable() and c not in "\n\t" for c in note):
        raise BadRequestError("note must not contain control characters")
    return note


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Console:
    def __init__(
        self,
        backend: ConsoleBackend,
        view: FleetView,
        settings: ConsoleSettings,
        auth_limit: AuthFailureLimit,
        raw_window: RawWindow | None = None,
        lag: LagSource | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.view = view
        self.settings = settings
        self.auth_limit = auth_limit
        self.raw_window = raw_window
        self.lag = lag
        self.clock = clock
        self.sessions = SessionStore(
            settings.session_idle_s, settings.session_max_s, settings.max_sessions, time.monotonic
        )
        self.history_client = HistoryClient(settings)
        self.closing = asyncio.Event()
        self._scrapes: dict[str, pipeline_figures.Scrape] = {}

    # -- sessions -------------------------------------------------------------------------

    def _cookie_secure(self, request: web.Request) -> bool:
        mode = self.settings.cookie_secure
        return mode == "always" or (mode == "auto" and request.secure)

    async def _current(self, request: web.Request) -> Session | None:
        """The request's live session, its identity refreshed from the store."""
        session_id = request.cookies.get(COOKIE)
        session = self.sessions.get(session_id)
        if session is None or session_id is None:
            return None
        if not await self._still_valid(session):
            return None
        request[SESSION] = session
        request[SESSION_ID] = session_id
        return session

    async def _still_valid(self, session: Session) -> bool:
        record = await self.backend.operator_record(session.identity.name)
        if record is None or record.revoked:
            ended = self.sessions.end_operator(session.identity.name)
            logger.info(
                "console: operator %s is gone or revoked; %d session(s) ended",
                session.identity.name,
                ended,
            )
            return False
        if record.role is not session.identity.role:
            session.identity = session.identity._replace(role=record.role)
        return True

    # -- middleware -----------------------------------------------------------------------

    @web.middleware
    async def guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Security headers on everything; the session and CSRF checks of the API."""
        path = request.path
        if path.startswith(f"{PREFIX}/api/"):
            if request.method not in ("GET", "HEAD"):
                origin = request.headers.get("Origin")
                if origin is not None and origin != f"{request.scheme}://{request.host}":
                    return problem(403, "Forbidden", "cross-origin request refused")
            if path != f"{PREFIX}/api/login":
                session = await self._current(request)
                if session is None:
                    return problem(401, "Unauthenticated", "log in to the console first")
                if request.method not in ("GET", "HEAD") and not session.csrf_ok(
                    request.headers.get(CSRF_HEADER)
                ):
                    return problem(
                        403, "Forbidden", f"missing or wrong {CSRF_HEADER}; reload the page"
                    )
        response = await handler(request)
        headers = response.headers
        headers.setdefault("Content-Security-Policy", CSP)
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "no-referrer")
        headers.setdefault("X-Frame-Options", "DENY")
        if path.startswith(f"{PREFIX}/api/"):
            headers.setdefault("Cache-Control", "no-store")
        return response

    @staticmethod
    def _needs(request: web.Request, permission: Permission) -> web.Response | None:
        identity = request[SESSION].identity
        if identity.can(permission):
            return None
        return problem(
            403,
            "Forbidden",
            f"operator {identity.name!r} ({identity.role.value}) may not do this "
            f"(needs {permission.value})",
        )

    # -- pages ----------------------------------------------------------------------------

    async def index(self, _: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    # -- session API ----------------------------------------------------------------------

    async def login(self, request: web.Request) -> web.Response:
        source = self.auth_limit.source(request.remote, request.headers)
        try:
            self.auth_limit.check(source)
            doc = await _json_body(request)
            name, password = doc.get("name"), doc.get("password")
            if not isinstance(name, str) or not isinstance(password, str):
                raise BadRequestError("name and password are required strings")
            if len(password) > MAX_PASSWORD_LENGTH or len(name) > 64:
                identity = None
            else:
                identity = await self.backend.authenticate(
                    _basic(name, password), lambda: self.auth_limit.check(source)
                )
        except OverBudgetError as over:
            return problem(
                429,
                "Too many failed authentications",
                str(over),
                headers={"Retry-After": str(over.retry_after)},
            )
        except BadRequestError as exc:
            return problem(400, "Bad request body", str(exc))
        if identity is None:
            self.auth_limit.failed(source)
            logger.info("console: failed login from %s", request.remote)
            return problem(401, "Unauthenticated", "wrong operator name or password")
        session_id, session = self.sessions.create(identity._replace(method="session"))
        logger.info("console: %s (%s) logged in", identity.name, identity.role.value)
        response = web.json_response(self._session_doc(session))
        response.set_cookie(
            COOKIE,
            session_id,
            path=f"{PREFIX}/",
            httponly=True,
            samesite="Strict",
            secure=self._cookie_secure(request),
            max_age=int(self.settings.session_max_s),
        )
        return response

    @staticmethod
    def _session_doc(session: Session) -> dict[str, Any]:
        identity = session.identity
        return {
            "name": identity.name,
            "role": identity.role.value,
            "csrf_token": session.csrf_token,
            "can_act": identity.can(Permission.ALERTS_ACT),
        }

    async def session(self, request: web.Request) -> web.Response:
        return web.json_response(self._session_doc(request[SESSION]))

    async def logout(self, request: web.Request) -> web.Response:
        self.sessions.end(request[SESSION_ID])
        response = web.json_response({"logged_out": True})
        response.del_cookie(COOKIE, path=f"{PREFIX}/")
        return response

    # -- fleet and alerts -----------------------------------------------------------------

    async def fleet(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "devices": self.view.rows(),
                "counts": self.view.counts(),
                "version": self.view.version,
                "event_seq": self.view.event_seq,
                "now": self.clock(),
            }
        )

    async def alerts(self, request: web.Request) -> web.Response:
        try:
            state = _optional_enum(request.query.get("state"), AlertState, "state")
            limit = parse_limit(request.query.get("limit"))
        except BadRequestError as exc:
            return problem(400, "Bad query parameter", str(exc))
        device_id = request.query.get("device_id") or None
        found = await self.backend.list_alerts(state, None, device_id, limit)
        found.sort(key=alert_order)
        return web.json_response({"alerts": [a.to_dict() for a in found]})

    async def alert_history(self, request: web.Request) -> web.Response:
        alert_id = request.match_info["alert_id"]
        events = await self.backend.history(alert_id)
        if not events:
            return problem(404, "Alert not found", f"no alert {alert_id!r}")
        return web.json_response({"alert_id": alert_id, "events": [e.to_dict() for e in events]})

    async def act(self, request: web.Request) -> web.Response:
        refused = self._needs(request, Permission.ALERTS_ACT)
        if refused is not None:
            return refused
        alert_id = request.match_info["alert_id"]
        action = request.match_info["action"]
        try:
            note = _note(await _json_body(request))
        except BadRequestError as exc:
            return problem(400, "Bad request body", str(exc))
        operator = request[SESSION].identity.name
        try:
            if action == "ack":
                alert = await self.backend.acknowledge(alert_id, operator, note)
            else:
                alert = await self.backend.resolve(alert_id, operator, note)
        except AlertNotFoundError:
            return problem(404, "Alert not found", f"no alert {alert_id!r}")
        except InvalidTransitionError as exc:
            return problem(409, "Alert already resolved", str(exc))
        logger.info("console: %s %s alert %s", operator, action, alert_id)
        return web.json_response(alert.to_dict())

    # -- device page ----------------------------------------------------------------------

    async def device(self, request: web.Request) -> web.Response:
        device_id = request.match_info["device_id"]
        try:
            offset = float(request.query.get("utc_offset_s", "0"))
            if not -14 * 3600 <= offset <= 14 * 3600:
                raise ValueError
        except ValueError:
            return problem(400, "Bad query parameter", "utc_offset_s must be -50400 to 50400")
        row = self.view.row(device_id)
        alerts = await self.backend.list_alerts(None, None, device_id, 200)
        if row is None and not alerts:
            return problem(404, "Device not found", f"this console knows no device {device_id!r}")
        alerts.sort(key=lambda a: -a.opened_at)
        history: dict[str, Any]
        try:
            history = {
                "available": True,
                **await self.history_client.device_history(device_id, self.clock(), offset),
            }
        except HistoryUnavailableError as exc:
            history = {"available": False, "reason": str(exc)}
        return web.json_response(
            {
                "device": row or {"device_id": device_id},
                "alerts": [a.to_dict() for a in alerts],
                "history": history,
            }
        )

    async def raw(self, request: web.Request) -> web.Response:
        device_id = request.match_info["device_id"]
        alert_id = request.query.get("alert_id", "")
        alert = await self.backend.get_alert(alert_id) if alert_id else None
        if alert is None or alert.device_id != device_id:
            return problem(404, "Alert not found", f"no alert {alert_id!r} of {device_id!r}")
        if self.raw_window is None:
            return web.json_response({"available": False, "reason": "raw data not reachable"})
        window = await self.raw_window(alert)
        if window is None:
            return web.json_response(
                {"available": False, "reason": "the raw topic no longer holds this window"}
            )
        return web.json_response({"available": True, **window})

    # -- pipeline page --------------------------------------------------------------------

    async def pipeline(self, _: web.Request) -> web.Response:
        now = self.clock()
        texts: dict[str, str | Exception] = {
            "alerting": generate_latest(self.backend.registry).decode()
        }
        urls = {k: v for k, v in self.settings.metrics_url_map.items() if k != "alerting"}
        timeout = aiohttp.ClientTimeout(total=self.settings.metrics_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as client:
            lag_task = asyncio.ensure_future(self.lag()) if self.lag is not None else None
            results = await asyncio.gather(
                *(_fetch_text(client, url) for url in urls.values()), return_exceptions=True
            )
            lag = await lag_task if lag_task is not None else {}
        for name, result in zip(urls, results, strict=True):
            texts[name] = result if isinstance(result, str | Exception) else Exception("?")
        services = []
        for name, text in texts.items():
            if isinstance(text, Exception):
                services.append(
                    pipeline_figures.unreachable(name, str(text) or type(text).__name__)
                )
                continue
            try:
                scrape = pipeline_figures.parse(text, now)
            except ValueError as exc:
                services.append(pipeline_figures.unreachable(name, f"not Prometheus text: {exc}"))
                continue
            figures = pipeline_figures.summarize(name, scrape, self._scrapes.get(name))
            if name in lag:
                figures["consumer_lag"] = lag[name]
            services.append(figures)
            self._scrapes[name] = scrape
        return web.json_response({"at": now, "services": services})

    # -- live updates ---------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        session = request[SESSION]
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
            }
        )
        await response.prepare(request)
        version, seq = self.view.version, self.view.event_seq
        await response.write(_sse("hello", {"version": version, "event_seq": seq}))
        last_write = last_check = time.monotonic()
        interval = self.settings.update_interval_s
        try:
            while not self.closing.is_set():
                try:
                    await asyncio.wait_for(self.closing.wait(), interval)
                    break
                except TimeoutError:
                    pass
                now = time.monotonic()
                if now - last_check >= RECHECK_S:
                    last_check = now
                    alive = self.sessions.get(request[SESSION_ID]) is session
                    if not alive or not await self._still_valid(session):
                        await response.write(_sse("logout", {}))
                        break
                changed = self.view.changed_since(version)
                events = self.view.events_since(seq)
                if events is None:
                    await response.write(_sse("resync", {}))
                    version, seq = self.view.version, self.view.event_seq
                    last_write = now
                    continue
                if changed or events:
                    version, seq = self.view.version, self.view.event_seq
                    await response.write(
                        _sse(
                            "update",
                            {
                                "devices": changed,
                                "alerts": events,
                                "counts": self.view.counts(),
                                "now": self.clock(),
                            },
                        )
                    )
                    last_write = now
                elif now - last_write >= KEEPALIVE_S:
                    await response.write(b": keep-alive\n\n")
                    last_write = now
        except (ConnectionResetError, ConnectionError):
            logger.debug("console: a live connection went away")
        return response

    async def on_shutdown(self, _: web.Application) -> None:
        self.closing.set()


async def _fetch_text(client: aiohttp.ClientSession, url: str) -> str:
    async with client.get(url) as response:
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        return await response.text()


def _optional_enum(value: str | None, enum: Any, name: str) -> Any:
    if not value:
        return None
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise BadRequestError(f"{name} must be one of {allowed}, not {value!r}") from None


def create_console_app(console: Console) -> web.Application:
    app = web.Application(middlewares=[console.guard])
    app.router.add_get("/", console.index)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    app.router.add_post("/api/login", console.login)
    app.router.add_post("/api/logout", console.logout)
    app.router.add_get("/api/session", console.session)
    app.router.add_get("/api/fleet", console.fleet)
    app.router.add_get("/api/events", console.events)
    app.router.add_get("/api/alerts", console.alerts)
    app.router.add_get("/api/alerts/{alert_id}/history", console.alert_history)
    app.router.add_post(r"/api/alerts/{alert_id}/{action:ack|resolve}", console.act)
    app.router.add_get("/api/devices/{device_id}", console.device)
    app.router.add_get("/api/devices/{device_id}/raw", console.raw)
    app.router.add_get("/api/pipeline", console.pipeline)
    app.on_shutdown.append(console.on_shutdown)
    return app


def mount(parent: web.Application, console: Console) -> None:
    """Serve the console under ``/console/`` of ``parent`` (the alert API's app), and
    redirect ``/`` and ``/console`` to it."""

    async def to_console(_: web.Request) -> web.Response:
        raise web.HTTPFound(f"{PREFIX}/")

    parent.router.add_get("/", to_console)
    parent.router.add_get(PREFIX, to_console)
    parent.add_subapp(f"{PREFIX}/", create_console_app(console))
