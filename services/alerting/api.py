"""HTTP API of the alerting service (aiohttp).

* ``GET /v1/alerts?state=open|acknowledged|resolved&type=FALL_SUSPECTED&device_id=&limit=100``
  newest first, ``{"alerts": [...]}``
* ``GET /v1/alerts/{alert_id}``
* ``POST /v1/alerts/{alert_id}/ack`` body ``{"by": "nurse-ana"}``: 200 with the alert
  (acknowledging twice is a no-op), 404 unknown, 409 already resolved
* ``POST /v1/alerts/{alert_id}/resolve`` body ``{"by": "nurse-ana"}``: 200, 404, 409
* ``GET /healthz`` (process up), ``GET /readyz`` (consumer has partitions and the store
  answers), ``GET /metrics`` (Prometheus)

Errors are ``application/problem+json`` (RFC 9457).
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from services.alerting.lifecycle import AlertNotFoundError, InvalidTransitionError
from shared.errors import HarstreamError
from shared.messages import Alert, AlertState, AlertType

MAX_LIMIT = 1000
#: Matched with fullmatch: ``$`` would also accept a trailing newline.
_ACTOR = re.compile(r"[\w.@+:-][\w .@+:-]{0,127}")
#: ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
_LIMIT = re.compile(r"[0-9]{1,6}")


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

    async def acknowledge(self, alert_id: str, by: str) -> Alert:
        """Raises AlertNotFoundError or InvalidTransitionError."""

    async def resolve(self, alert_id: str, by: str) -> Alert:
        """Raises AlertNotFoundError or InvalidTransitionError."""

    async def readiness(self) -> dict[str, bool]: ...


def problem(status: int, title: str, detail: str) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(
            {"type": "about:blank", "title": title, "status": status, "detail": detail}
        ),
        content_type="application/problem+json",
    )


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


def parse_actor(body: bytes) -> str:
    """Who acts, from an ack/resolve body ``{"by": "nurse-ana"}``, or :class:`BadRequestError`."""
    try:
        # json.loads detects UTF-8/16/32 itself; the request's charset is not trusted.
        doc = json.loads(body)
    except (ValueError, RecursionError):  # bad JSON or encoding; deeply nested arrays
        raise BadRequestError('body must be JSON like {"by": "nurse-ana"}') from None
    by = doc.get("by") if isinstance(doc, dict) else None
    if not isinstance(by, str) or not _ACTOR.fullmatch(by):
        raise BadRequestError(
            '"by" must name who acts: 1-128 letters, digits, spaces or . @ + : - _'
        )
    return by


def create_app(backend: AlertingBackend) -> web.Application:
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

    async def _act(request: web.Request, action: str) -> web.Response:
        alert_id = request.match_info["alert_id"]
        try:
            by = parse_actor(await request.read())
        except BadRequestError as exc:
            return problem(400, "Bad request body", str(exc))
        try:
            if action == "ack":
                alert = await backend.acknowledge(alert_id, by)
            else:
                alert = await backend.resolve(alert_id, by)
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

    @routes.get("/healthz")
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    @routes.get("/readyz")
    async def readyz(_: web.Request) -> web.Response:
        checks = await backend.readiness()
        ready = all(checks.values())
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status=200 if ready else 503,
        )

    @routes.get("/metrics")
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(backend.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    @web.middleware
    async def unavailable(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except HarstreamError as exc:
            if not exc.retriable:
                raise
            return problem(503, "Temporarily unavailable", str(exc))
        return response

    app = web.Application(middlewares=[unavailable])
    app.add_routes(routes)
    return app
