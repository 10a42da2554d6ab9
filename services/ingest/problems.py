"""RFC 9457 problem documents (``application/problem+json``): every refusal of the ingest
service, from a handler or from aiohttp's own HTTP parser, is one of these."""

from __future__ import annotations

from aiohttp import web

from services.ingest.schemas import TITLES, problem_fields
from services.ingest.validation import FieldError

__all__ = ["PROBLEM_CONTENT_TYPE", "TITLES", "problem_response"]

PROBLEM_CONTENT_TYPE = "application/problem+json"


def problem_response(
    status: int,
    reason: str,
    detail: str,
    errors: tuple[FieldError, ...] = (),
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.json_response(
        problem_fields(status, reason, detail, errors),
        status=status,
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )
