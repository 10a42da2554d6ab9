"""One micro-batch through the model: retries while the model server is down, bisection of
batches it rejects, predictions and dead letters out. No Kafka, gRPC or Prometheus here:
the model is a :class:`ModelIO`, metrics an :class:`BatchObserver`."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from services.common.kafka.backoff import BackoffPolicy
from services.inference.batching import Queued
from services.inference.errors import InferenceError, ModelResponseError, ModelServerError
from services.inference.model import ModelIO, ModelOutput, check_output
from services.inference.results import batch_predictions, validate_window
from services.inference.retry import concerns_whole_model
from shared.errors import SchemaError
from shared.messages import Prediction, WindowMessage
from shared.messages.codec import check_key

logger = logging.getLogger(__name__)


class BatchAbandonedError(InferenceError):
    """Stop was requested while the batch waited to be retried; nothing of it is committed."""


@dataclass(frozen=True)
class Consumed:
    """One record of the windows topic: decoded, or with the reason it could not be."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    window: WindowMessage | None
    error: Exception | None = None


def decode(
    topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
) -> Consumed:
    """Decode and validate a windows-topic record; failures are kept, not raised."""
    try:
        if value is None:
            raise SchemaError("empty record (no value)")
        window = WindowMessage.from_bytes(value)
        check_key(key, window.device_id)
        validate_window(window)
    except (SchemaError, InferenceError) as exc:
        return Consumed(topic, partition, offset, key, value, None, exc)
    return Consumed(topic, partition, offset, key, value, window)


class BatchObserver(Protocol):
    """Where a batch's measurements go (Prometheus in the worker, lists in tests)."""

    def predicted(self, batch_size: int, seconds: float, version: int) -> None: ...

    def retried(self, code: str) -> None: ...


@dataclass
class BatchResult:
    """What to produce for a batch, and the offsets to commit once it is acknowledged."""

    predictions: list[tuple[Consumed, Prediction]] = field(default_factory=list)
    dead_letters: list[tuple[Consumed, Exception]] = field(default_factory=list)
    #: The candidate's predictions in shadow mode (services.inference.rollout): for the
    #: shadow topic, best effort, never part of what is committed.
    shadow: list[Prediction] = field(default_factory=list)
    #: (topic, partition) → next offset to read, i.e. highest offset of the batch + 1.
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)


class WindowProcessor(Protocol):
    """What the worker runs a batch through: :class:`BatchProcessor`, or the rollout
    (:class:`services.inference.rollout.RolloutProcessor`) around one."""

    async def process(self, batch: Sequence[Queued[Consumed]]) -> BatchResult: ...

    def request_stop(self) -> None: ...


def next_offsets(entries: Sequence[Consumed]) -> dict[tuple[str, int], int]:
    offsets: dict[tuple[str, int], int] = {}
    for e in entries:
        tp = (e.topic, e.partition)
        offsets[tp] = max(offsets.get(tp, 0), e.offset + 1)
    return offsets


class BatchProcessor:
    """Turns a batch of consumed windows into predictions and dead letters.

    A model-server failure that concerns the model or server as a whole (every gRPC status
    but INVALID_ARGUMENT: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, and also
    NOT_FOUND during a rollout, FAILED_PRECONDITION, INTERNAL, UNKNOWN, ...) retries the same
    batch with backoff for as long as the worker runs: an outage or a broken server delays
    predictions but loses none. Only INVALID_ARGUMENT and answers of the wrong shape bisect
    the batch, and the windows that still fail alone go to the dead-letter topic.
    :meth:`request_stop` abandons a batch waiting to be retried.
    """

    def __init__(
        self,
        model: ModelIO,
        model_name: str,
        backoff: BackoffPolicy,
        observer: BatchObserver,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        model_label: str = "",
    ) -> None:
        """``model_label``: the version label ``model`` addresses ("" for none), carried by
        the predictions."""
        self._model = model
        self._model_name = model_name
        self._model_label = model_label
        self._backoff = backoff
        self._observer = observer
        self._clock = clock
        self._wall = wall_clock
        self._rng = rng or random.Random()
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def process(self, batch: Sequence[Queued[Consumed]]) -> BatchResult:
        taken_at = self._clock()
        result = BatchResult(offsets=next_offsets([q.item for q in batch]))
        good: list[tuple[Consumed, float]] = []
        for queued in batch:
            entry = queued.item
            if entry.window is None:
                assert entry.error is not None
                result.dead_letters.append((entry, entry.error))
            else:
                good.append((entry, taken_at - queued.enqueued_at))
        if good:
            await self._predict(good, result)
        return result

    async def _predict(self, items: list[tuple[Consumed, float]], result: BatchResult) -> None:
        windows = [entry.window for entry, _ in items]
        assert all(w is not None for w in windows)
        batch = np.stack([w.data for w in windows if w is not None]).astype(np.float32)
        try:
            output, seconds = await self._predict_with_retry(batch)
        except (ModelServerError, ModelResponseError) as exc:
            # Only errors about the request reach here (see _predict_with_retry).
            if len(items) > 1:
                half = len(items) // 2
                logger.warning(
                    "Predict of %d windows failed (%s); bisecting to isolate the bad ones",
                    len(items),
                    exc,
                )
                await self._predict(items[:half], result)
                await self._predict(items[half:], result)
                return
            logger.warning("Predict of %d windows failed for good: %s", len(items), exc)
            result.dead_letters.extend((entry, exc) for entry, _ in items)
            return
        outcomes = batch_predictions(
            [w for w in windows if w is not None],
            [wait for _, wait in items],
            output,
            self._model_name,
            self._wall(),  # provisional: the worker stamps produced_at when it produces
            seconds,
            self._model_label,
        )
        for (entry, _), outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, Prediction):
                result.predictions.append((entry, outcome))
            else:
                result.dead_letters.append((entry, outcome))

    async def _predict_with_retry(self, batch: np.ndarray) -> tuple[ModelOutput, float]:
        attempt = 0
        while True:
            if self._stop.is_set():
                raise BatchAbandonedError("stopping; batch abandoned before Predict")
            started = self._clock()
            try:
                output = await self._model.predict(batch)
            except ModelServerError as exc:
                if not (exc.retriable or concerns_whole_model(exc.code)):
                    raise
                attempt += 1
                delay = self._backoff.delay(attempt, self._rng)
                self._observer.retried(exc.code)
                # A transient outage is a warning; a server that answers NOT_FOUND, INTERNAL,
                # ... needs an operator.
                logger.log(
                    logging.WARNING if exc.retriable else logging.ERROR,
                    "Predict of %d windows on %s failed (%s): retry %d in %.2f s",
                    len(batch),
                    self._model.target,
                    exc,
                    attempt,
                    delay,
                )
                await self._wait(delay)
                continue
            seconds = self._clock() - started
            check_output(output, len(batch))
            self._observer.predicted(len(batch), seconds, output.version)
            if attempt:
                logger.info("Predict succeeded after %d retries", attempt)
            return output, seconds

    async def _wait(self, delay: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
        except TimeoutError:
            return
        raise BatchAbandonedError("stopping; batch abandoned while waiting to retry")
