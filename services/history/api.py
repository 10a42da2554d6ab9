"""HTTP API of the history service (aiohttp).

Every ``/v1`` endpoint needs an operator of the alert API (the same store, the same
``Authorization: Bearer hso_...`` API keys or Basic passwords; ``viewer`` is enough):
401 without a valid one, 403 for a role without ``devices:read``, 429 for an address
over its failed-authentication budget (:mod:`services.common.operator_auth`).

* ``GET /v1/devices``: ``{"devices": [device, ...]}`` by id: every registered device and
  every device with history.
* ``GET /v1/devices/{id}``: one device (404 unknown)::

    {"device_id", "label", "timezone", "registered", "revoked",
     "last_seen": unix s | null, "last_seen_at": ISO 8601 | null,
     "current": {"activity", "confidence", "model_version", "since", "since_at"} | null,
     "open_alerts": [{"alert_id", "type", "severity", "state", "opened_at",
                      "opened_at_iso", "reason"}, ...] | null}

  ``last_seen`` is the end of the newest predicted window (device clock); ``current`` is
  that window's activity, ``since`` when its segment started. ``open_alerts``: the
  device's unresolved alerts (open or acknowledged), newest first, from the alert store;
  null if the store cannot answer (and in the list of all devices).
* ``GET /v1/devices/{id}/activity?from=&to=``: segments overlapping ``[from, to)``, oldest
  first; ISO 8601 instants with an offset or ``Z`` (default: the last 24 h; at most
  ``max_range_days``)::

    {"device_id", "from", "to", "segments": [{"start", "end", "start_at", "end_at",
     "activity", "mean_confidence", "model_version", "windows"}]}

* ``GET /v1/devices/{id}/summary?date=YYYY-MM-DD``: the wearer's local day (default
  today in the device's time zone), :meth:`services.history.summary.DailySummary.to_dict`.
  A known device without data that day gets zeros (coverage 0), not 404.
* ``GET /healthz``, ``GET /readyz``, ``GET /metrics``: open.

Errors are ``application/problem+json`` (RFC 9457), the alert API's format.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry

from services.alerting.api import problem
from services.common.authlimit import AuthFailureLimit
from services.common.operator_auth import operator_middleware, route_permission
from services.common.operators import Identity, Permission
from services.common.probes import add_probe_routes
from services.history.segments import Segment
from services.history.summary import DailySummary
from shared.errors import HarstreamError

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
PERMISSIONS: dict[tuple[str, str], Permission] = {
    ("GET", "/v1/devices"): Permission.DEVICES_READ,
    ("GET", "/v1/devices/{device_id}"): Permission.DEVICES_READ,
    ("GET", "/v1/devices/{device_id}/activity"): Permission.DEVICES_READ,
    ("GET", "/v1/devices/{device_id}/summary"): Permission.DEVICES_READ,
}
_PERMISSION_WORDS = {Permission.DEVICES_READ: "read devices and their history"}
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
MIN_YEAR, MAX_YEAR = 1970, 9000
#: Longest ISO 8601 text taken (anything longer is not an instant).
_MAX_INSTANT = 40


class BadRequestError(HarstreamError):
    """A query parameter the API cannot use (answered 400)."""


class HistoryBackend(Protocol):
    registry: CollectorRegistry

    async def list_devices(self) -> list[dict[str, Any]]: ...

    async def device(self, device_id: str) -> dict[str, Any] | None:
        """The device document, or None if neither registered nor seen."""

    async def activity(self, device_id: str, start: float, end: float) -> list[Segment] | None:
        """Segments overlapping ``[start, end)``; None for an unknown device."""

    async def summary(self, device_id: str, day: date | None) -> DailySummary | None:
        """``day`` (None: today in the device's zone); None for an unknown device."""

    async def authenticate(
        self, authorization: str | None, before_hashing: Callable[[], None]
    ) -> Identity | None: ...

    async def readiness(self) -> dict[str, bool]: ...


def iso(t: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC (``...Z``, milliseconds)."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_instant(name: str, raw: str) -> float:
    """An ISO 8601 instant with an offset (``2026-11-30T08:00:00Z``,
    ``...+01:00``) as Unix seconds, or :class:`BadRequestError`. A time without an offset
    is refused: whose 08:00 it means is exactly what a care team must not guess."""
    if len(raw) > _MAX_INSTANT:
        raise BadRequestError(f"{name} is not an ISO 8601 instant")
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise BadRequestError(
            f"{name} must be an ISO 8601 instant such as 2026-11-30T08:00:00Z, not {raw!r}"
        ) from None
    if parsed.tzinfo is None:
        raise BadRequestError(f"{name} needs a UTC offset or Z (e.g. {raw}Z)")
    return parsed.timestamp()


def parse_day(raw: str | None) -> date | None:
    if raw is None or raw == "":
        return None
    if not _DATE.fullmatch(raw):
        raise BadRequestError(f"date must be YYYY-MM-DD, not {raw!r}")
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise BadRequestError(f"date {raw!r} does not exist") from None
    # Local midnights of year 1 or 9999 ± a time zone leave datetime's range.
    if not MIN_YEAR <= day.year <= MAX_YEAR:
        raise BadRequestError(f"date must be in the years {MIN_YEAR} to {MAX_YEAR}")
    return day


def parse_range(
    raw_from: str | None, raw_to: str | None, now: float, max_range_days: float
) -> tuple[float, float]:
    """``from``/``to`` of the activity query (defaults: the 24 h up to ``now``)."""
    end = now if raw_to is None or raw_to == "" else parse_instant("to", raw_to)
    start = (
        end - 86_400.0 if raw_from is None or raw_from == "" else parse_instant("from", raw_from)
    )
    if start >= end:
        raise BadRequestError("from must be before to")
    if end - start > max_range_days * 86_400.0:
        raise BadRequestError(f"from-to spans at most {max_range_days:g} days")
    return start, end


def segment_document(segment: Segment) -> dict[str, Any]:
    return {
        "start": segment.start,
        "end": segment.end,
        "start_at": iso(segment.start),
        "end_at": iso(segment.end),
        "activity": segment.activity,
        "mean_confidence": round(segment.mean_confidence, 4),
        "model_version": segment.model_version,
        "windows": segment.windows,
    }


def _problem(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    return problem(status, title, detail, headers)


def create_app(
    backend: HistoryBackend,
    auth_limit: AuthFailureLimit,
    max_body_bytes: int,
    max_range_days: float,
    clock: Callable[[], float],
) -> web.Application:
    """The API app; serve it with :class:`services.common.http_server.ProblemAppRunner`."""
    routes = web.RouteTableDef()

    def not_found(device_id: str) -> web.Response:
        return _problem(404, "Device not found", f"no device {device_id!r}")

    @routes.get("/v1/devices")
    async def list_devices(_: web.Request) -> web.Response:
        return web.json_response({"devices": await backend.list_devices()})

    @routes.get("/v1/devices/{device_id}")
    async def get_device(request: web.Request) -> web.Response:
        device_id = request.match_info["device_id"]
        document = await backend.device(device_id)
        if document is None:
            return not_found(device_id)
        return web.json_response(document)

    @routes.get("/v1/devices/{device_id}/activity")
    async def activity(request: web.Request) -> web.Response:
        device_id = request.match_info["device_id"]
        try:
            start, end = parse_range(
                request.query.get("from"), request.query.get("to"), clock(), max_range_days
            )
        except BadRequestError as exc:
            return _problem(400, "Bad query parameter", str(exc))
        segments = await backend.activity(device_id, start, end)
        if segments is None:
            return not_found(device_id)
        return web.json_response(
            {
                "device_id": device_id,
                "from": iso(start),
                "to": iso(end),
                "segments": [segment_document(s) for s in segments],
            }
        )

    @routes.get("/v1/devices/{device_id}/summary")
    async def summary(request: web.Request) -> web.Response:
        device_id = request.match_info["device_id"]
        try:
            day = parse_day(request.query.get("date"))
        except BadRequestError as exc:
            return _problem(400, "Bad query parameter", str(exc))
        result = await backend.summary(device_id, day)
        if result is None:
            return not_found(device_id)
        return web.json_response(result.to_dict())

    add_probe_routes(routes, backend)

    @web.middleware
    async def problems(request: web.Request, handler: Any) -> web.StreamResponse:
        """Routing errors (404, 405), bodies over the limit, a store that is away (503)
        and unexpected exceptions as problem documents."""
        length = request.content_length
        if length is not None and length > max_body_bytes:
            response = _problem(
                413, "Request body too large", f"the request body exceeds {max_body_bytes} bytes"
            )
            response.force_close()
            return response
        try:
            result: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            return _problem(exc.status, exc.reason, exc.reason, headers)
        except HarstreamError as exc:
            if not exc.retriable:
                logger.exception("unexpected error on %s %s", request.method, request.path)
                return _problem(500, "Internal server error", "internal error; retry later")
            return _problem(503, "Temporarily unavailable", str(exc))
        except Exception:
            logger.exception("unexpected error on %s %s", request.method, request.path)
            return _problem(500, "Internal server error", "internal error; retry later")
        return result

    authenticated = operator_middleware(
        backend.authenticate,
        auth_limit,
        lambda request: route_permission(request, PERMISSIONS, OPEN_PATHS),
        _problem,
        _PERMISSION_WORDS,
    )
    app = web.Application(middlewares=[problems, authenticated], client_max_size=max_body_bytes)
    app.add_routes(routes)
    return app
