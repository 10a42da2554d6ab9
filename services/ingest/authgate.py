"""Waiting for a token-lookup slot of a source address (the asyncio side of
:meth:`services.common.authlimit.AuthFailureLimit.begin`).

An address may have as many uncached token lookups in flight as it has failed
authentications left (20 by default). A lookup that finds them all in flight waits here for
one to end instead of being answered 429: devices joining together from one address (a
NAT, a gateway forwarding a fleet) are looked up a slot-full at a time and all get in,
while a guessing flood still has at most its budget in flight and is refused with 429 once
its failures spent it.

Waiters queue per address, first come first served. Every lookup that ends wakes one
waiter (its slot is free again; if the lookup failed, its failure also took a slot's worth
of budget, and the woken waiter finds that out and waits again); once the address has no
failure left, every waiter is woken and refused. A waiter only ever waits while a lookup of
its address is in flight, and lookups end within ``registry_timeout_s``, so no wait is
unbounded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

from services.common.authlimit import GO, WAIT, AuthFailureLimit


class AddressBlocked(Exception):
    """The address has no failed authentication left: answer 429 with ``retry_after``."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"address over its failed-authentication budget ({retry_after} s)")
        self.retry_after = retry_after


class LookupGate:
    """Slots for token lookups per source address, with a FIFO queue of waiters each."""

    def __init__(self, limit: AuthFailureLimit) -> None:
        self.limit = limit
        self._waiters: dict[str, collections.deque[asyncio.Future[None]]] = {}

    def waiting(self, source: str) -> int:
        """Lookups of ``source`` waiting for a slot."""
        return len(self._waiters.get(source, ()))

    async def enter(self, source: str) -> None:
        """Hold a lookup slot of ``source`` (give it back with :meth:`leave`), waiting while
        all are held; :class:`AddressBlocked` once the address has no failure left."""
        first = True
        while True:
            admission = self.limit.begin(source)
            if admission == GO:
                return
            if admission != WAIT:
                assert isinstance(admission, int)
                raise AddressBlocked(admission)
            future = asyncio.get_running_loop().create_future()
            queue = self._waiters.setdefault(source, collections.deque())
            # A waiter woken but beaten to the slot goes back to the front: it came first.
            if first:
                queue.append(future)
            else:
                queue.appendleft(future)
            first = False
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._wake(source, all_of_them=False)  # the wake-up was ours: pass it on
                else:
                    self._discard(source, future)
                raise

    def leave(self, source: str, failed: bool) -> None:
        """Give back the slot :meth:`enter` held; ``failed``: the token did not
        authenticate (one failure counted)."""
        self.limit.end(source, failed)
        self._wake(source, all_of_them=self.limit.over_budget(source) is not None)

    def _wake(self, source: str, all_of_them: bool) -> None:
        queue = self._waiters.get(source)
        while queue:
            future = queue.popleft()
            if not future.done():
                future.set_result(None)
                if not all_of_them:
                    break
        if queue is not None and not queue:
            del self._waiters[source]

    def _discard(self, source: str, future: asyncio.Future[None]) -> None:
        queue = self._waiters.get(source)
        if queue is None:
            return
        with contextlib.suppress(ValueError):  # woken meanwhile: no longer queued
            queue.remove(future)
        if not queue:
            del self._waiters[source]
