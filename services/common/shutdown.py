"""Bounded shutdown: a watchdog that ends the process when a graceful stop hangs, and the
hard exit the workers use when finishing a batch is impossible.

A stop can hang on I/O that never completes (a Kafka client flushing, leaving its group or
committing towards a broker that is gone). Every worker is at-least-once: offsets are
committed only after the work they cover is delivered, so ending the process without
finishing is a crash, and a crash only costs a replay. Better that than a process that
ignores SIGTERM until the orchestrator's SIGKILL, or forever when nothing sends one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import NoReturn

logger = logging.getLogger(__name__)

#: Exit status of a stop that did not finish within its time bound.
EXIT_STOP_TIMEOUT = 1


def flush_logs() -> None:
    """Flush every handler of the root logger and the standard streams: ``os._exit`` skips
    the interpreter's clean-up, which would otherwise flush them."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def hard_exit(status: int) -> NoReturn:
    """Flush the logs and end the process now: no ``finally`` blocks, no atexit handlers, no
    async-generator finalisation (which could acknowledge unfinished work)."""
    flush_logs()
    os._exit(status)


class ShutdownWatchdog:
    """Ends the process if it is still alive ``timeout_s`` after :meth:`arm`.

    Call :meth:`arm` when the stop signal arrives. The timer runs on a daemon thread, so it
    fires even when the event loop is blocked, and it never keeps a process alive that
    exits normally.
    """

    def __init__(
        self,
        service: str,
        timeout_s: float,
        exit_status: int = EXIT_STOP_TIMEOUT,
        exit: Callable[[int], None] = hard_exit,
    ) -> None:
        self.service = service
        self.timeout_s = timeout_s
        self.exit_status = exit_status
        self._exit = exit
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def arm(self) -> None:
        """Start the countdown; a second call (a second signal) does not restart it."""
        with self._lock:
            if self._timer is not None:
                return
            self._timer = threading.Timer(self.timeout_s, self._expire)
            self._timer.daemon = True
            self._timer.name = f"{self.service}-shutdown-watchdog"
            self._timer.start()
        logger.info(
            "%s stopping; forced exit if not stopped within %.0f s", self.service, self.timeout_s
        )

    def disarm(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _expire(self) -> None:
        logger.error(
            "%s did not stop within %.0f s of the stop signal (Kafka or another dependency "
            "unreachable?): exiting with status %d; uncommitted work is read again after the "
            "restart (at-least-once)",
            self.service,
            self.timeout_s,
            self.exit_status,
        )
        self._exit(self.exit_status)


async def stop_quietly(name: str, stop: Callable[[], Awaitable[object]]) -> None:
    """Await ``stop()`` (a client's ``stop``/``close``), logging instead of raising what it
    fails with, so that the clients after it are stopped too.

    With the broker gone, aiokafka's consumer ``stop()`` raises the ``CancelledError`` of
    its own fetch task (aiokafka 0.14, ``Fetcher.close``): swallowed unless the task running
    this is itself being cancelled.
    """
    try:
        await stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        logger.warning("stopping %s: interrupted by a cancelled internal task", name)
    except Exception as exc:
        logger.warning("stopping %s: %s: %s", name, type(exc).__name__, exc)
