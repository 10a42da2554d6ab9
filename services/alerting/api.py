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
_ACTOR = re.compile(r"^[\w.@+:-][\w .@+:-]{0,127}$")


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
        raise _BadRequest(f"{name} must be one of {allowed}, not {value!r}") from None


class _BadRequest(Exception):
    pass


async def _actor(request: web.Request) -> str:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _BadRequest('body must be JSON like {"by": "nurse-ana"}') from None
    by = body.get("by") if isinstance(body, dict) else None
    if not isinstance(by, str) or not _ACTOR.match(by):
        raise _BadRequest('"by" must name who acts: 1-128 letters, digits, spaces or . @ + : - _')
    return by


def create_app(backend: AlertingBackend) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/v1/alerts")
    async def list_alerts(request: web.Request) -> web.Response:
        try:
            state = _enum_param(request, "state", AlertState)
            kind = _enum_param(request, "type", AlertType)
            raw_limit = request.query.get("limit", "100")
            if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
                raise _BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}")
        except _BadRequest as exc:
            return problem(400, "Bad query parameter", str(exc))
        device_id = request.query.get("device_id") or None
        alerts = await backend.list_alerts(state, kind, device_id, int(raw_limit))
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
            by = await _actor(request)
        except _BadRequest as exc:
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
