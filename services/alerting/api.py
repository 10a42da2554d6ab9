"""HTTP API of the alerting service (aiohttp).

Every ``/v1`` endpoint needs an operator (:mod:`services.common.operators`):
``Authorization: Bearer hso_...`` (an API key from ``harstream operators add``) or HTTP Basic
``name:password``. No or a bad credential: 401 with ``WWW-Authenticate`` (the same answer
for an unknown operator and a wrong secret); a role without the permission: 403.

* ``GET /v1/alerts?state=open|acknowledged|resolved&type=FALL_SUSPECTED&device_id=&limit=100``
  newest first, ``{"alerts": [...]}`` (viewer)
* ``GET /v1/alerts/{alert_id}`` (viewer)
* ``GET /v1/alerts/{alert_id}/history``: ``{"alert_id", "events": [{"event", "at",
  "operator", "note"}]}``, oldest first; ``operator`` is null for the rules' own steps (viewer)
* ``POST /v1/alerts/{alert_id}/ack``, optional body ``{"note": "on my way"}``: 200 with the
  alert, ``acknowledged_by`` = the authenticated operator (acknowledging twice is a no-op),
  404 unknown, 409 already resolved (carer)
* ``POST /v1/alerts/{alert_id}/resolve``, optional ``{"note": ...}``: 200, 404, 409 (carer)
* ``GET /healthz`` (process up), ``GET /readyz`` (consumer has partitions and the store
  answers): open, for orchestrators.
* ``GET /metrics``: open, for Prometheus. It holds counts only (no alert contents, no device
  ids); keep it off public networks (k8s NetworkPolicy: from Prometheus only).

Failed authentications are limited per source address (:mod:`services.common.authlimit`):
past ``auth_failure_burst`` (refilled at ``auth_failure_rate_per_s``) an address gets 429
with ``Retry-After`` before its credential is looked at, so a password-guessing flood costs
no scrypt (~70 ms of CPU each) past its budget; valid credentials cost no budget. Bodies over
``max_body_bytes`` get 413 before they are read; the listener's own limits (header and body
deadlines, connection cap) are :mod:`services.common.http_server`'s.

Who acts is the authenticated operator. A ``by`` field in the body (the pre-authentication
API) is refused with 400 rather than ignored: a client that believes it records a name must
learn that it does not.

Errors are ``application/problem+json`` (RFC 9457).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry

from services.alerting.lifecycle import AlertNotFoundError, InvalidTransitionError
from services.alerting.store import HistoryEntry
from services.common.authlimit import AuthFailureLimit
from services.common.http_server import LimitHook, ListenerLimits, ProblemAppRunner, auth_screen
from services.common.operator_auth import (
    AUTH_RATE_LIMITED_TITLE,
    OPERATOR,
    operator_middleware,
    route_permission,
)
from services.common.operators import Identity, Permission
from services.common.probes import add_probe_routes
from shared.errors import HarstreamError
from shared.messages import Alert, AlertState, AlertType

logger = logging.getLogger(__name__)

MAX_LIMIT = 1000
MAX_NOTE = 500
#: ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
_LIMIT = re.compile(r"[0-9]{1,6}")
#: Open to anyone who reaches the port: orchestrator probes and Prometheus.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
#: The web console (services.console): its own sessions and CSRF checks; ``/`` redirects
#: to it.
CONSOLE_PREFIX = "/console"
#: What each endpoint needs; a route missing here needs admin (deny by default).
PERMISSIONS: dict[tuple[str, str], Permission] = {
    ("GET", "/v1/alerts"): Permission.ALERTS_READ,
    ("GET", "/v1/alerts/{alert_id}"): Permission.ALERTS_READ,
    ("GET", "/v1/alerts/{alert_id}/history"): Permission.ALERTS_READ,
    ("POST", "/v1/alerts/{alert_id}/ack"): Permission.ALERTS_ACT,
    ("POST", "/v1/alerts/{alert_id}/resolve"): Permission.ALERTS_ACT,
}
_PERMISSION_WORDS = {
    Permission.ALERTS_READ: "read alerts",
    Permission.ALERTS_ACT: "acknowledge or resolve alerts",
}


class AlertingBackend(Protocol):
    registry: CollectorRegistry

    async def list_alerts(
        self,
        state: AlertState | None,
        kind: AlertType | None,
        device_id: str | None,
        limit: int,
    ) -> list[Alert]: ...

    async def get_alert(self, alert_id: str) -> Alert | None: ...

    async def history(self, alert_id: str) -> list[HistoryEntry]: ...

    async def acknowledge(self, alert_id: str, operator: str, note: str | None) -> Alert:
        """Raises AlertNotFoundError or InvalidTransitionError."""

    async def resolve(self, alert_id: str, operator: str, note: str | None) -> Alert:
        """Raises AlertNotFoundError or InvalidTransitionError."""

    async def authenticate(
        self, authorization: str | None, before_hashing: Callable[[], None]
    ) -> Identity | None:
        """The operator the ``Authorization`` header proves, or None. ``before_hashing`` is
        called (and what it raises propagates) right before a password's scrypt."""

    async def readiness(self) -> dict[str, bool]: ...


#: The reason the listener's screen at accept answers such an address with.
AUTH_RATE_LIMITED = "auth_rate_limited"


def problem_document(status: int, title: str, detail: str) -> dict[str, object]:
    return {"type": "about:blank", "title": title, "status": status, "detail": detail}


def problem(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(problem_document(status, title, detail)),
        content_type="application/problem+json",
        headers=headers,
    )


def listener_problem(status: int, reason: str, detail: str) -> dict[str, object]:
    """The document of an answer the listener writes itself (a parser refusal, a deadline,
    the connection cap, a blocked address at accept): :data:`ProblemDocument` of
    :mod:`services.common.http_server`, in this API's format."""
    title = AUTH_RATE_LIMITED_TITLE if reason == AUTH_RATE_LIMITED else HTTPStatus(status).phrase
    return problem_document(status, title, detail)


def _too_large(limit: int) -> web.Response:
    response = problem(
        413, "Request body too large", f"the request body exceeds the limit of {limit} bytes"
    )
    # The rest of the body is not read: the connection cannot carry another request.
    response.force_close()
    return response


def _enum_param(request: web.Request, name: str, enum: Any) -> Any:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise BadRequestError(f"{name} must be one of {allowed}, not {value!r}") from None


class BadRequestError(HarstreamError):
    """A client error in a query parameter or request body (answered 400)."""


def parse_limit(raw: str | None) -> int:
    """The ``limit`` query parameter (default 100), or :class:`BadRequestError`."""
    if raw is None:
        return 100
    if not _LIMIT.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequestError(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def parse_note(body: bytes) -> str | None:
    """The optional note of an ack/resolve body (empty, ``{}`` or ``{"note": "..."}``), or
    :class:`BadRequestError`."""
    if not body.strip():
        return None
    try:
        # json.loads detects UTF-8/16/32 itself; the request's charset is not trusted.
        doc = json.loads(body)
    except (ValueError, RecursionError):  # bad JSON or encoding; deeply nested arrays
        raise BadRequestError('body must be empty or JSON like {"note": "on my way"}') from None
    if not isinstance(doc, dict):
        raise BadRequestError('body must be empty or JSON like {"note": "on my way"}')
    if "by" in doc:
        raise BadRequestError(
            '"by" is not accepted: the operator who acts is the one who authenticated'
        )
    unknown = sorted(k for k in doc if k != "note")
    if unknown:
        raise BadRequestError(f"unknown field {unknown[0]!r}: the body may only carry note")
    note = doc.get("note")
    if note is None:
        return None
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise BadRequestError(f"note must be a string of at most {MAX_NOTE} characters")
    if any(not c.isprintable() and c not in "\n\t" for c in note):
        raise BadRequestError("note must not contain control characters")
    return note or None


def _required(request: web.Request) -> Permission | None:
    """The permission ``request``'s route needs; None for the open paths and for requests
    no route matches (aiohttp answers those 404/405 itself)."""
    path = request.path
    if path in ("/", CONSOLE_PREFIX) or path.startswith(f"{CONSOLE_PREFIX}/"):
        return None
    return route_permission(request, PERMISSIONS, OPEN_PATHS)


def create_app(
    backend: AlertingBackend, auth_limit: AuthFailureLimit, max_body_bytes: int
) -> web.Application:
    """The API app; serve it with :class:`services.common.http_server.ProblemAppRunner`
    (document :func:`listener_problem`) for the listener's limits."""
    routes = web.RouteTableDef()

    @routes.get("/v1/alerts")
    async def list_alerts(request: web.Request) -> web.Response:
        try:
            state = _enum_param(request, "state", AlertState)
            kind = _enum_param(request, "type", AlertType)
            limit = parse_limit(request.query.get("limit"))
        except BadRequestError as exc:
            return problem(400, "Bad query parameter", str(exc))
        device_id = request.query.get("device_id") or None
        alerts = await backend.list_alerts(state, kind, device_id, limit)
        return web.json_response({"alerts": [a.to_dict() for a in alerts]})

    @routes.get("/v1/alerts/{alert_id}")
    async def get_alert(request: web.Request) -> web.Response:
        alert_id = request.match_info["alert_id"]
        alert = await backend.get_alert(alert_id)
        if alert is None:
            return problem(404, "Alert not found", f"no alert {alert_id!r}")
        return web.json_response(alert.to_dict())

    @routes.get("/v1/alerts/{alert_id}/history")
    async def history(request: web.Request) -> web.Response:
        alert_id = request.match_info["alert_id"]
        events = await backend.history(alert_id)
        if not events:
            return problem(404, "Alert not found", f"no alert {alert_id!r}")
        return web.json_response({"alert_id": alert_id, "events": [e.to_dict() for e in events]})

    async def _act(request: web.Request, action: str) -> web.Response:
        alert_id = request.match_info["alert_id"]
        operator = request[OPERATOR].name
        try:
            note = parse_note(await request.read())
        except BadRequestError as exc:
            return problem(400, "Bad request body", str(exc))
        except web.HTTPRequestEntityTooLarge:  # a chunked body: no Content-Length to check
            return _too_large(max_body_bytes)
        except ConnectionError:
            # The connection ended mid-body (the body deadline closed it, or the client
            # went): nobody to answer, and no error of ours.
            logger.debug(
                "%s %s: connection lost before the body arrived", request.method, request.path
            )
            return problem(400, "Client disconnected", "the connection was lost mid-body")
        try:
            if action == "ack":
                alert = await backend.acknowledge(alert_id, operator, note)
            else:
                alert = await backend.resolve(alert_id, operator, note)
        except AlertNotFoundError:
            return problem(404, "Alert not found", f"no alert {alert_id!r}")
        except InvalidTransitionError as exc:
            return problem(409, "Alert already resolved", str(exc))
        return web.json_response(alert.to_dict())

    @routes.post("/v1/alerts/{alert_id}/ack")
    async def ack(request: web.Request) -> web.Response:
        return await _act(request, "ack")

    @routes.post("/v1/alerts/{alert_id}/resolve")
    async def resolve(request: web.Request) -> web.Response:
        return await _act(request, "resolve")

    add_probe_routes(routes, backend)

    @web.middleware
    async def problems(request: web.Request, handler: Any) -> web.StreamResponse:
        """Routing errors (404, 405) and unexpected exceptions as problem documents."""
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            return problem(exc.status, exc.reason, exc.reason, headers=headers)
        except Exception:
            logger.exception("unexpected error on %s %s", request.method, request.path)
            return problem(500, "Internal server error", "internal error; retry later")
        return response

    @web.middleware
    async def bounded(request: web.Request, handler: Any) -> web.StreamResponse:
        """A body declared over the limit is refused before anything else, unread."""
        length = request.content_length
        if length is not None and length > max_body_bytes:
            return _too_large(max_body_bytes)
        response: web.StreamResponse = await handler(request)
        return response

    @web.middleware
    async def unavailable(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except HarstreamError as exc:
            if not exc.retriable:
                raise
            return problem(503, "Temporarily unavailable", str(exc))
        return response

    # The middleware every operator API shares (services.common.operator_auth).
    authenticated = operator_middleware(
        backend.authenticate, auth_limit, _required, problem, _PERMISSION_WORDS
    )

    # problems outermost; then the size check (cheapest, before any credential); a store
    # that cannot authenticate is a 503 too.
    app = web.Application(
        middlewares=[problems, bounded, unavailable, authenticated],
        client_max_size=max_body_bytes,
    )
    app.add_routes(routes)
    return app


def operator_runner(
    app: web.Application,
    limits: ListenerLimits,
    auth_limit: AuthFailureLimit,
    on_limit: LimitHook | None = None,
) -> ProblemAppRunner:
    """The runner of an operator API (the alert API, the history API): header and body
    deadlines and a connection cap (``limits``), problem documents for the parser's own
    refusals, and an address over its failed-authentication budget refused at accept."""
    return ProblemAppRunner(
        app,
        document=listener_problem,
        limits=limits,
        screen=auth_screen(auth_limit, listener_problem, AUTH_RATE_LIMITED),
        on_limit=on_limit,
        access_log=None,
    )
