"""Console sessions: server-side, in this process's memory. Pure: the clock is injected.

A login (one password check) creates a session: a random id (the cookie's value, 256
bits) and a CSRF token (sent back to the page, which echoes it in ``X-CSRF-Token`` on every
state-changing request). Only the id's SHA-256 is kept as the key, so the table leaks no
usable cookie and a lookup's timing says nothing about stored ids. A session ends on logout,
after ``idle_s`` unused, or ``max_s`` after login, whatever its use.

Held in memory: a restart of the alerting process logs everyone out, and several alerting
workers behind one address need sticky sessions (each knows only its own logins).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from services.common.operators import Identity

_TOKEN_BYTES = 32


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class Session:
    identity: Identity
    csrf_token: str
    created_at: float
    last_used: float

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(
            token.encode("utf-8", "surrogatepass"), self.csrf_token.encode()
        )


class SessionStore:
    def __init__(
        self, idle_s: float, max_s: float, max_sessions: int, clock: Callable[[], float]
    ) -> None:
        self._idle_s = idle_s
        self._max_s = max_s
        self._max_sessions = max_sessions
        self._clock = clock
        #: Least recently used first.
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, identity: Identity) -> tuple[str, Session]:
        """A new session for ``identity``: (cookie value, session)."""
        now = self._clock()
        self._expire(now)
        while len(self._sessions) >= self._max_sessions:
            self._sessions.popitem(last=False)
        session_id = secrets.token_urlsafe(_TOKEN_BYTES)
        session = Session(identity, secrets.token_urlsafe(_TOKEN_BYTES), now, now)
        self._sessions[_key(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of a cookie value (its use counted), or None."""
        if not session_id or len(session_id) > 128:
            return None
        key = _key(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self._clock()
        if self._expired(session, now):
            del self._sessions[key]
            return None
        session.last_used = now
        self._sessions.move_to_end(key)
        return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(_key(session_id), None)

    def end_operator(self, name: str) -> int:
        """End every session of operator ``name`` (revoked); how many."""
        keys = [k for k, s in self._sessions.items() if s.identity.name == name]
        for key in keys:
            del self._sessions[key]
        return len(keys)

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.last_used > self._idle_s or now - session.created_at > self._max_s

    def _expire(self, now: float) -> None:
        # Least recently used first: the idle ones are at the front.
        for key in list(self._sessions):
            if self._expired(self._sessions[key], now):
                del self._sessions[key]
            elif now - self._sessions[key].last_used <= self._idle_s:
                break
