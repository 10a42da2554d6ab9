"""Writing shadow predictions to their topic, apart from the live ones.

Best effort on purpose. The live predictions of a batch are acknowledged before its offsets
are committed (at-least-once); the shadow ones are handed to this publisher and never
waited for: a shadow topic that is missing, refused by an ACL or slow must not hold up the
predictions alerting depends on. So a shadow prediction can be lost (the worker stops or
crashes with it queued, Kafka refuses it, the queue is full because the shadow producer
fell behind) or repeated (its batch is read again after a crash); each loss is counted in
``harstream_inference_shadow_dropped_total``. For evaluating a candidate (agreement,
accuracy over thousands of windows) that is what a mirror gives, and what it should.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from services.common.kafka.backoff import BackoffPolicy
from services.common.kafka.send import Producer, Record, send_acked
from shared.messages import Prediction

logger = logging.getLogger(__name__)

#: Batches of shadow predictions waiting for the producer: two batches of slack (one being
#: sent, one waiting) absorb a slow ack; beyond that the shadow is behind and drops.
MAX_QUEUED_BATCHES = 4
#: Longest one batch of shadow predictions may take to be acknowledged (seconds): bounded,
#: so a topic that does not exist (aiokafka waits for its metadata) drops a batch instead
#: of filling the queue for the request timeout.
SEND_TIMEOUT_S = 5.0


class ShadowPublisher:
    """A bounded queue of shadow-prediction batches and the task that produces them.

    ``dropped(reason, count)`` is told of every prediction that was not written.
    """

    def __init__(
        self,
        producer: Producer,
        topic: str,
        dropped: Callable[[str, int], None],
        backoff: BackoffPolicy,
        max_queued: int = MAX_QUEUED_BATCHES,
        send_timeout_s: float = SEND_TIMEOUT_S,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._dropped = dropped
        self._backoff = backoff
        self._timeout_s = send_timeout_s
        self._queue: asyncio.Queue[list[Prediction] | None] = asyncio.Queue(maxsize=max_queued)
        self._rng = random.Random()
        self._task: asyncio.Future[None] | None = None
        self.sent = 0

    def start(self) -> ShadowPublisher:
        self._task = asyncio.ensure_future(self._run())
        return self

    def offer(self, predictions: Sequence[Prediction]) -> None:
        """Queue a batch without waiting; a full queue drops it (counted)."""
        if not predictions:
            return
        try:
            self._queue.put_nowait(list(predictions))
        except asyncio.QueueFull:
            self._dropped("backlog", len(predictions))

    async def close(self, grace_s: float) -> None:
        """Send what is queued for up to ``grace_s`` seconds, then give up on the rest."""
        if self._task is None:
            return
        # A full queue gets no end marker: the grace below bounds the wait, then it is
        # cancelled.
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)
        await asyncio.wait({self._task}, timeout=grace_s)
        if not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while not self._queue.empty():
            left = self._queue.get_nowait()
            if left:
                self._dropped("stopped", len(left))

    async def _run(self) -> None:
        while (batch := await self._queue.get()) is not None:
            await self._send(batch)

    async def _send(self, batch: list[Prediction]) -> None:
        def record(prediction: Prediction) -> Record:
            stamped = replace(prediction, produced_at=time.time())
            return Record(self._topic, stamped.to_bytes(), prediction.device_id.encode())

        try:
            await asyncio.wait_for(
                send_acked(
                    self._producer,
                    [record(p) for p in batch],
                    backoff=self._backoff,
                    attempts=1,
                    rng=self._rng,
                    what="shadow predictions",
                ),
                self._timeout_s,
            )
        except asyncio.CancelledError:
            self._dropped("stopped", len(batch))
            raise
        except TimeoutError:
            self._dropped("timeout", len(batch))
            logger.warning("%d shadow predictions not acknowledged in time", len(batch))
        except Exception as exc:
            # Whatever Kafka says, the live predictions must not notice.
            self._dropped(type(exc).__name__, len(batch))
            logger.warning("%d shadow predictions dropped: %s", len(batch), exc)
        else:
            self.sent += len(batch)
