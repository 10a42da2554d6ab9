"""The :class:`~services.common.http_server.ListenerLimits` of a service's settings.

Every service with an HTTP listener (ingest, alerting, history) declares the same four
fields, each with its own default and description (the README's configuration reference is
generated from them, per service): only building the limits from them is shared. A plain
mixin, not a pydantic model: fields declared here would come first in every settings
class, and the reference would change order.
"""

from __future__ import annotations

from typing import Protocol

from services.common.http_server import ListenerLimits


class _ListenerFields(Protocol):
    @property
    def header_timeout_s(self) -> float: ...

    @property
    def body_timeout_s(self) -> float: ...

    @property
    def keepalive_timeout_s(self) -> float: ...

    @property
    def max_connections(self) -> int: ...


class ListenerSettings:
    """Mixin for settings with ``header_timeout_s``, ``body_timeout_s``,
    ``keepalive_timeout_s`` and ``max_connections`` fields."""

    @property
    def listener_limits(self: _ListenerFields) -> ListenerLimits:
        return ListenerLimits(
            header_timeout_s=self.header_timeout_s,
            body_timeout_s=self.body_timeout_s,
            keepalive_timeout_s=self.keepalive_timeout_s,
            max_connections=self.max_connections,
        )
