"""Limits of the REST listener (pure values; applied in :mod:`services.modelserver.rest`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RestLimits:
    """What one REST connection may hold.

    - ``max_body_bytes``: a larger Content-Length is answered 413 before the body is read;
    - ``header_timeout_s``: from the moment the server waits for a request (a new connection
      or after the previous answer) until its headers are complete: idle keep-alive time and
      slowloris headers alike;
    - ``body_timeout_s``: from the end of the headers until the whole body is read;
    - ``max_connections``: connections served at once (a thread each).
    """

    max_body_bytes: int = 16 * 1024 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 64
