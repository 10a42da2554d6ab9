"""Webhook delivery from the store's outbox, in the background, at least once.

Each alert event is POSTed to every configured URL as
``{"event": "opened|acknowledged|resolved", "alert": {...}}`` with the header
``Idempotency-Key: <alert_id>:<event>``, identical on every retry, so receivers can drop
repeats. Network errors, timeouts, 408, 429 and 5xx are retried with exponential backoff and
jitter (a server's ``Retry-After`` wins, capped at the backoff maximum); other 4xx answers and
running out of attempts mark the delivery ``failed``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from email.utils import parsedate_to_datetime
from enum import StrEnum

import aiohttp

from services.alerting.metrics import AlertingMetrics
from services.alerting.store import AlertStore, Delivery, StoreError
from services.common.kafka.backoff import BackoffPolicy

logger = logging.getLogger(__name__)

RETRIABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"


def classify(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status in RETRIABLE_STATUS or status >= 500:
        return Outcome.RETRY
    return Outcome.FAILED


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


class WebhookDispatcher:
    """Claims due deliveries from the outbox and POSTs them, never blocking the consumer."""

    def __init__(
        self,
        store: AlertStore,
        metrics: AlertingMetrics,
        *,
        timeout_s: float,
        give_up_after_s: float,
        backoff_base_s: float,
        backoff_max_s: float,
        concurrency: int,
        poll_interval_s: float,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._give_up_after_s = give_up_after_s
        # Doubling from base to max with "equal jitter" (a random half to all of each
        # delay): a fleet of alerts does not retry in lock-step against a receiver that just
        # came back, yet never retries at once.
        self._backoff = BackoffPolicy(
            initial_s=min(backoff_base_s, backoff_max_s), max_s=backoff_max_s, jitter=0.5
        )
        self._rng = random.Random()
        self._concurrency = concurrency
        self._poll_interval_s = poll_interval_s
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """New deliveries were recorded: look now rather than at the next poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        # A claim hides a delivery from other claims until the POST has surely finished.
        lease_s = self._timeout_s + 10.0
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                while not stop.is_set():
                    free = self._concurrency - len(self._tasks)
                    if free > 0:
                        try:
                            due = await asyncio.to_thread(
                                self._store.claim_deliveries, time.time(), free, lease_s
                            )
                        except StoreError as exc:
                            logger.warning("webhook outbox unavailable: %s", exc)
                            due = []
                        for delivery in due:
                            task = asyncio.create_task(self._deliver(session, delivery))
                            self._tasks.add(task)
                            task.add_done_callback(self._done)
                        if len(due) == free:
                            await asyncio.sleep(0)
                            continue  # more may be due
                    self._wake.clear()
                    waits = [
                        asyncio.ensure_future(self._wake.wait()),
                        asyncio.ensure_future(stop.wait()),
                    ]
                    try:
                        await asyncio.wait(
                            waits,
                            timeout=self._poll_interval_s,
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                    finally:
                        for waiter in waits:
                            waiter.cancel()
            finally:
                # Let POSTs in flight finish briefly; unfinished ones are retried after restart.
                if self._tasks:
                    await asyncio.wait(set(self._tasks), timeout=self._timeout_s)
                for task in list(self._tasks):
                    task.cancel()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("webhook delivery crashed", exc_info=task.exception())

    async def _deliver(self, session: aiohttp.ClientSession, delivery: Delivery) -> None:
        attempts = delivery.attempts + 1
        started = time.perf_counter()
        retry_after: float | None = None
        try:
            async with session.post(
                delivery.url,
                data=delivery.body.encode(),
                headers={
                    "Content-Type": "application/json",
                    "Idempotency-Key": delivery.idempotency_key,
                    "User-Agent": "harstream-alerting",
                },
            ) as response:
                await response.read()
                outcome = classify(response.status)
                error = f"HTTP {response.status}"
                if outcome is Outcome.RETRY:
                    retry_after = parse_retry_after(
                        response.headers.get("Retry-After"), time.time()
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome, error = Outcome.RETRY, f"{type(exc).__name__}: {exc}"
        self._metrics.webhook_delivery_seconds.observe(time.perf_counter() - started)
        # Retries are bounded by time, not by a count: a count runs out during a receiver
        # outage of a few minutes (8 attempts took 78 s), and a care team must get the alert
        # when its receiver is back; only a delivery older than give_up_after_s is failed.
        age_s = time.time() - delivery.created_at
        if outcome is Outcome.RETRY and age_s >= self._give_up_after_s:
            outcome = Outcome.FAILED
            error = f"gave up after {attempts} attempts over {age_s:.0f} s: {error}"
        try:
            if outcome is Outcome.RETRY:
                delay = self._backoff.delay_or_retry_after(attempts, self._rng, retry_after)
                await asyncio.to_thread(
                    self._store.delivery_retry, delivery.id, attempts, time.time() + delay, error
                )
                self._metrics.webhook_deliveries.labels("retried").inc()
                logger.info(
                    "webhook %s to %s: %s, retry %d in %.1f s",
                    delivery.idempotency_key,
                    delivery.url,
                    error,
                    attempts,
                    delay,
                )
            elif outcome is Outcome.DELIVERED:
                await asyncio.to_thread(
                    self._store.delivery_done, delivery.id, attempts, "delivered", ""
                )
                self._metrics.webhook_deliveries.labels("delivered").inc()
            else:
                await asyncio.to_thread(
                    self._store.delivery_done, delivery.id, attempts, "failed", error
                )
                self._metrics.webhook_deliveries.labels("failed").inc()
                logger.error(
                    "webhook %s to %s failed: %s", delivery.idempotency_key, delivery.url, error
                )
        except StoreError as exc:
            # The lease runs out and the delivery is claimed again: at least once.
            logger.warning("cannot record webhook outcome of %s: %s", delivery.id, exc)
