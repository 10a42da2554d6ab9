"""What the CLI commands of the long-running Kafka workers (alerting, history) share: build
the settings from the environment and the command's options, create the topics, run the
worker until SIGTERM/SIGINT with a bounded stop, exit 1 if it failed; and the workers' own
``run``/``request_stop`` (:class:`RunUntilStopped`)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Protocol, TypeVar

from services.common import eventloop
from shared.settings import EventLoopKind, StreamSettings

S = TypeVar("S", bound=StreamSettings)


class Worker(Protocol):
    #: Set when the worker stopped because it failed (the command exits non-zero).
    failure: BaseException | None

    def request_stop(self) -> None: ...

    async def run(self) -> None: ...


class RunUntilStopped:
    """Mixin: ``await run()`` = ``start()``, wait for :meth:`request_stop` (or the worker's
    own ``_stop`` event, set when it fails), then ``stop()``, also after an error."""

    _stop: asyncio.Event

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        try:
            await self.start()
            await self._stop.wait()
        finally:
            await self.stop()


def worker_settings(settings_class: type[S], create_topics: bool, **overrides: object | None) -> S:
    """``settings_class`` from the environment, with the command's options that were given
    (None: not given); then the missing harstream topics created if ``create_topics``."""
    given = {name: value for name, value in overrides.items() if value is not None}
    settings = settings_class(**given)  # type: ignore[arg-type]
    if create_topics:
        from services.common.kafka.topics import create_topics as create  # noqa: PLC0415

        create(settings)
    return settings


def run_worker(
    build: Callable[[], Worker],
    name: str,
    shutdown_timeout_s: float,
    event_loop: EventLoopKind,
) -> None:
    """Run ``build()`` until SIGTERM/SIGINT; ``SystemExit(1)`` if the worker failed.

    ``build`` imports the worker's module, so that ``--help`` stays fast. Stopping can hang
    on a broker or store that is gone (client stop, commit): a watchdog armed by the signal
    ends the process after ``shutdown_timeout_s``."""
    if not eventloop.run(_serve(build, name, shutdown_timeout_s), event_loop):
        raise SystemExit(1)


async def _serve(build: Callable[[], Worker], name: str, shutdown_timeout_s: float) -> bool:
    """Run until SIGTERM/SIGINT; False if the worker stopped because it failed."""
    from services.common.shutdown import ShutdownWatchdog  # noqa: PLC0415

    service = build()
    watchdog = ShutdownWatchdog(name, shutdown_timeout_s)

    def on_signal() -> None:
        watchdog.arm()
        service.request_stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await service.run()
    return service.failure is None
