"""The limit on failed authentications per source address, for every HTTP service that
authenticates (ingest's devices, the alert API's operators). Pure: the clock is injected.

Only failures are counted: a credential that authenticates costs its address nothing, so
any number of valid clients behind one address (a NAT, a care-home gateway, a proxy) can
join at once. A credential check must still not start once its address is over budget,
and concurrent guesses must not overrun the budget while their checks are in flight. Two
ways to get there, for two kinds of check:

* Slots (ingest: token lookups in a small registry pool, valid tokens mostly cached and
  never gated)::

      admission = limit.begin(source)   # a slot, or WAIT, or 429 (Retry-After)
      ... look the credential up ...
      limit.end(source, failed=...)    # invalid: one failure counted; valid or ours: none

  Lookups in flight from one address are at most its failures left, so a guessing flood
  can never overrun the budget; a check that finds every slot taken by lookups in flight
  waits for one of them to end (:data:`WAIT`, see :mod:`services.ingest.authgate`)
  instead of being refused: a 429 always means failures exhausted the budget. (Reserving
  a failure per lookup and refunding it once valid, as before, answered 429 to the 21st
  of many valid devices joining together from one address.)

* Check at the expensive step (the alert API: a Basic password costs a 70 ms scrypt in one
  of a few slots, an API key a cheap lookup)::

      limit.check(source)             # OverBudgetError before anything else
      ... in the scrypt slot, just before hashing: limit.check(source) again ...
      invalid: limit.failed(source)

  Valid credentials take nothing, so operators sharing an address (a NAT, a proxy) never
  block each other however many requests they send at once; the overrun of a guessing
  flood is at most the number of slots.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Final, Literal

from services.common.clientaddr import client_address, limit_key, parse_networks
from services.common.ratelimit import RateLimiter

#: Longest Retry-After sent (seconds); an empty bucket refills well within it.
MAX_RETRY_AFTER_S = 3600


def retry_after_s(wait_s: float) -> int:
    """A Retry-After for a wait of ``wait_s`` seconds: whole seconds, 1 to an hour."""
    return max(1, math.ceil(min(wait_s, MAX_RETRY_AFTER_S)))


def blocked_detail(retry_after: int) -> str:
    """The detail of every 429 for failed authentications (one wording for all services)."""
    return f"too many failed authentications from this address; retry in {retry_after} s"


class OverBudgetError(Exception):
    """The source address has no failed authentication left: answer 429."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(blocked_detail(retry_after))
        #: Seconds until the address may try again (for Retry-After).
        self.retry_after = retry_after


#: :meth:`AuthFailureLimit.begin`'s answer when every lookup the address may have in flight
#: is in flight: wait for one of them to end, then ask again.
WAIT: Final = "wait"
#: :meth:`AuthFailureLimit.begin`'s answer when a lookup may start (it holds a slot).
GO: Final = "go"

#: What :meth:`AuthFailureLimit.begin` answers: :data:`GO`, :data:`WAIT`, or the
#: Retry-After (seconds) of a 429.
Admission = Literal["go", "wait"] | int


class AuthFailureLimit:
    """``burst`` failed authentications per source address at once, refilled at
    ``rate_per_s``. ``client_ip_header`` (e.g. ``X-Forwarded-For``) names the client's
    address when the peer is one of ``trusted_proxies`` (comma-separated networks): see
    :mod:`services.common.clientaddr`."""

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        clock: Callable[[], float],
        client_ip_header: str = "",
        trusted_proxies: str = "",
    ) -> None:
        #: Failures only: lookups in flight take nothing from it (see the module docstring).
        self.limiter = RateLimiter(rate_per_s, burst, clock)
        self._in_flight: dict[str, int] = {}
        self._header = client_ip_header
        self._trusted = parse_networks(trusted_proxies)

    def source(self, peer: str | None, headers: Mapping[str, str]) -> str:
        """The bucket key of a request from ``peer`` with ``headers``."""
        forwarded = headers.get(self._header) if self._header else None
        return limit_key(client_address(peer, forwarded, self._trusted))

    def begin(self, source: str) -> Admission:
        """Before a credential lookup from ``source``: :data:`GO` (the lookup holds a slot
        until :meth:`end`), :data:`WAIT` (every slot the address's failures left allow is
        held by a lookup in flight: ask again once one ends), or the Retry-After of a 429
        (the address has no failure left; nothing is held then)."""
        wait = self.limiter.wait_s(source)
        if wait > 0:
            return retry_after_s(wait)
        in_flight = self._in_flight.get(source, 0)
        # As many lookups in flight as failures left: if every one fails, the budget is
        # spent exactly, never overrun.
        if self.limiter.wait_s(source, in_flight + 1) > 0:
            return WAIT
        self._in_flight[source] = in_flight + 1
        return GO

    def end(self, source: str, failed: bool) -> None:
        """After a lookup :meth:`begin` let start: frees its slot, and counts one failure if
        the credential did not authenticate (a lookup that failed for a reason of ours,
        a store down, is no failure of the client's)."""
        left = self._in_flight.get(source, 0) - 1
        if left > 0:
            self._in_flight[source] = left
        else:
            self._in_flight.pop(source, None)
        if failed:
            self.limiter.acquire(source, 1)

    def in_flight(self, source: str) -> int:
        """Lookups from ``source`` between :meth:`begin` and :meth:`end`."""
        return self._in_flight.get(source, 0)

    def over_budget(self, source: str) -> int | None:
        """The Retry-After of a 429 if ``source`` has no failure left, else None; takes
        nothing."""
        wait = self.limiter.wait_s(source)
        return retry_after_s(wait) if wait > 0 else None

    def check(self, source: str) -> None:
        """:class:`OverBudgetError` if ``source`` has no failure left; takes nothing."""
        retry_after = self.over_budget(source)
        if retry_after is not None:
            raise OverBudgetError(retry_after)

    def failed(self, source: str) -> None:
        """Count a failure that took no slot (a missing credential, a token of another
        device); an empty bucket stays empty, it owes nothing."""
        self.limiter.acquire(source, 1)

    def blocked_for(self, peer: str) -> int | None:
        """At accept, before anything is read: the Retry-After for a new connection from
        ``peer`` if its address is over budget, else None (serve it). Takes nothing. Behind a
        proxy (``client_ip_header`` set) always None: the peer is the proxy, whose clients
        are told apart per request."""
        if self._header:
            return None
        wait = self.limiter.wait_s(limit_key(peer))
        return None if wait <= 0 else retry_after_s(wait)
