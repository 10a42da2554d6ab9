"""The limit on failed authentications per source address, for every HTTP service that
authenticates (ingest's devices, the alert API's operators). Pure: the clock is injected.

A credential check must not start once its address is over budget, and concurrent guesses
must not overrun the budget while their checks are in flight. Two ways to get there, for
two kinds of check:

* Reserve (ingest: token lookups in a small registry pool, valid tokens mostly cached and
  never gated)::

      wait = limit.admit(source)      # takes one attempt; 429 (Retry-After: wait) if none
      ... look the credential up ...
      valid, or our failure: limit.refund(source); invalid: keep it

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
        self.limiter = RateLimiter(rate_per_s, burst, clock)
        self._header = client_ip_header
        self._trusted = parse_networks(trusted_proxies)

    def source(self, peer: str | None, headers: Mapping[str, str]) -> str:
        """The bucket key of a request from ``peer`` with ``headers``."""
        forwarded = headers.get(self._header) if self._header else None
        return limit_key(client_address(peer, forwarded, self._trusted))

    def admit(self, source: str) -> int | None:
        """Take one attempt from ``source``'s bucket: None if it had one, else the
        Retry-After (seconds) to answer 429 with (nothing is taken then)."""
        gate = self.limiter.acquire(source, 1)
        return None if gate.allowed else retry_after_s(gate.retry_after_s)

    def check(self, source: str) -> None:
        """:class:`OverBudgetError` if ``source`` has no failure left; takes nothing."""
        wait = self.limiter.wait_s(source)
        if wait > 0:
            raise OverBudgetError(retry_after_s(wait))

    def failed(self, source: str) -> None:
        """Count a failure (one that did not pass :meth:`admit`); an empty bucket stays
        empty, it owes nothing."""
        self.limiter.acquire(source, 1)

    def refund(self, source: str) -> None:
        """Give back what :meth:`admit` took: the credential was valid, or the check failed
        for a reason of ours."""
        self.limiter.refund(source, 1)

    def blocked_for(self, peer: str) -> int | None:
        """At accept, before anything is read: the Retry-After for a new connection from
        ``peer`` if its address is over budget, else None (serve it). Takes nothing. Behind a
        proxy (``client_ip_header`` set) always None: the peer is the proxy, whose clients
        are told apart per request."""
        if self._header:
            return None
        wait = self.limiter.wait_s(limit_key(peer))
        return None if wait <= 0 else retry_after_s(wait)
