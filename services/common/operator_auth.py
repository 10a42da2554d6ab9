"""Operator authentication of an aiohttp API, as one middleware: the alert API's rules for
every other API that takes the same operators (the history API first).

The request's ``Authorization`` (``Bearer hso_...`` or Basic) is checked by the service's
``authenticate`` (:class:`services.alerting.auth.Authenticator` over the operator store);
an address over its failed-authentication budget gets 429 before its credential is looked
at (:mod:`services.common.authlimit`); no or a bad credential 401 with
``WWW-Authenticate`` (the same answer for an unknown operator and a wrong secret); a role
without the route's permission 403. Routes the ``required`` function maps to None are
open (probes, metrics). The authenticated :class:`Identity` is ``request[OPERATOR]``.

This is the alert API's middleware (``services.alerting.api.create_app``) made a
function of its permission map and problem format, so the two cannot drift apart.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

from services.common.authlimit import AuthFailureLimit, OverBudgetError
from services.common.operators import Identity, Permission

logger = logging.getLogger(__name__)

#: Both schemes the APIs take; clients pick one.
WWW_AUTHENTICATE = 'Bearer realm="harstream", Basic realm="harstream", charset="UTF-8"'
#: The authenticated operator of a request (set by the middleware).
OPERATOR = web.RequestKey("operator", Identity)
AUTH_RATE_LIMITED_TITLE = "Too many failed authentications"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: (status, title, detail, headers) → a problem+json response.
ProblemResponse = Callable[[int, str, str, dict[str, str] | None], web.Response]


class Authenticate(Protocol):
    async def __call__(
        self, authorization: str | None, before_hashing: Callable[[], None]
    ) -> Identity | None: ...


def route_permission(
    request: web.Request,
    permissions: Mapping[tuple[str, str], Permission],
    open_paths: frozenset[str],
) -> Permission | None:
    """What ``request``'s route needs: None for ``open_paths`` and for requests no route
    matches (aiohttp answers those 404/405 itself); a route missing from ``permissions``
    needs OPERATORS_MANAGE (deny by default)."""
    info = request.match_info
    if info.http_exception is not None or request.path in open_paths:
        return None
    method = "GET" if request.method == "HEAD" else request.method
    canonical = info.route.resource.canonical if info.route.resource is not None else ""
    return permissions.get((method, canonical), Permission.OPERATORS_MANAGE)


def operator_middleware(
    authenticate: Authenticate,
    auth_limit: AuthFailureLimit,
    required: Callable[[web.Request], Permission | None],
    problem: ProblemResponse,
    permission_words: Mapping[Permission, str],
) -> Middleware:
    """The middleware; place it inside the one that turns exceptions into problems."""

    @web.middleware
    async def authenticated(request: web.Request, handler: Handler) -> web.StreamResponse:
        needed = required(request)
        if needed is None:
            return await handler(request)
        source = auth_limit.source(request.remote, request.headers)
        try:
            auth_limit.check(source)
            identity = await authenticate(
                request.headers.get("Authorization"), lambda: auth_limit.check(source)
            )
        except OverBudgetError as over:
            logger.debug(
                "refused %s %s from %s: over its failed-authentication budget",
                request.method,
                request.path,
                request.remote,
            )
            response = problem(
                429,
                AUTH_RATE_LIMITED_TITLE,
                str(over),
                {"Retry-After": str(over.retry_after)},
            )
            # Its next connection is answered at accept, before any HTTP is parsed.
            response.force_close()
            return response
        if identity is None:
            auth_limit.failed(source)
            # The header is attacker-controlled: only whether there was one is logged.
            logger.info(
                "refused %s %s from %s: %s",
                request.method,
                request.path,
                request.remote,
                "bad credential" if "Authorization" in request.headers else "no credential",
            )
            return problem(
                401,
                "Unauthenticated",
                "an operator credential is required: Authorization: Bearer <API key> or Basic",
                {"WWW-Authenticate": WWW_AUTHENTICATE},
            )
        if not identity.can(needed):
            logger.info(
                "refused %s %s to operator %s (%s): needs %s",
                request.method,
                request.path,
                identity.name,
                identity.role.value,
                needed.value,
            )
            return problem(
                403,
                "Forbidden",
                f"operator {identity.name!r} ({identity.role.value}) may not "
                f"{permission_words.get(needed, needed.value)}",
                None,
            )
        request[OPERATOR] = identity
        return await handler(request)

    return authenticated
