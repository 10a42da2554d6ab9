"""The event loop a service runs on: uvloop where it is installed, asyncio's own on request.

uvloop is libuv's loop written in Cython. Measured side by side with asyncio's at 750 live
devices, it took ~5-10 % off preprocess's CPU and ~3 % off the pipeline's; ingest's CPU,
spent in aiohttp's handlers and kafka-python's threads, did not measurably change (figures
in ``reports/performance.md``). ``event_loop =
"asyncio"`` (``HARSTREAM_<SERVICE>_EVENT_LOOP=asyncio``) runs the standard loop, e.g. for
asyncio's debug mode; so does a machine where uvloop is not installed, with a warning.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from shared.settings import EventLoopKind

logger = logging.getLogger(__name__)

T = TypeVar("T")


def loop_factory(kind: EventLoopKind) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of the loop ``kind`` names; ``None`` means asyncio's default loop."""
    if kind == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 (optional: a service runs without it)
    except ImportError:
        logger.warning("uvloop is not installed: running on asyncio's own event loop")
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], kind: EventLoopKind) -> T:
    """``asyncio.run(main)`` on a loop of ``kind``."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(main)


def install_policy(kind: EventLoopKind) -> None:
    """Make every loop asyncio creates from now on a loop of ``kind``: for faust, whose
    worker creates its loop itself (what ``mode.loop.use("uvloop")`` does)."""
    factory = loop_factory(kind)
    if factory is None:
        return
    import uvloop  # noqa: PLC0415 (installed: loop_factory found it)

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
