"""RFC 9457 problem documents (``application/problem+json``): every refusal of the ingest
service, from a handler or from aiohttp's own HTTP parser, is one of these."""

from __future__ import annotations

from aiohttp import web

from services.ingest.schemas import PROBLEM_TYPE_PREFIX
from services.ingest.validation import FieldError

PROBLEM_CONTENT_TYPE = "application/problem+json"

TITLES = {
    400: "Malformed request",
    401: "Unauthenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Invalid packet",
    429: "Rate limit exceeded",
    431: "Request header fields too large",
    500: "Internal server error",
    503: "Service unavailable",
    504: "Gateway timeout",
}


def problem_response(
    status: int,
    reason: str,
    detail: str,
    errors: tuple[FieldError, ...] = (),
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {
        "type": PROBLEM_TYPE_PREFIX + reason,
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "reason": reason,
        "errors": [{"field": e.field, "message": e.message, "reason": e.reason} for e in errors],
    }
    return web.json_response(
        body, status=status, content_type=PROBLEM_CONTENT_TYPE, headers=headers
    )
