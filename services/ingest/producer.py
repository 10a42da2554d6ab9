"""The raw-topic producer: kafka-python's idempotent producer (acks=all) bridged to asyncio.

aiokafka's idempotent producer fails against the local Tansu broker (see the Tansu notes),
kafka-python's works, and it works on Apache Kafka alike. kafka-python is thread-based: its
calls run on a one-thread executor (``send`` can block on metadata) and its delivery
callbacks come from its I/O thread, so they are handed to the event loop with
``call_soon_threadsafe``. The producer is created in the background and re-tried until the
broker answers: the service starts (and answers 503) while Kafka is down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from kafka import KafkaAdminClient, KafkaProducer  # type: ignore[import-untyped]
from kafka.errors import KafkaError  # type: ignore[import-untyped]

from services.common.kafka import BrokerUnavailableError
from services.ingest.settings import IngestSettings

logger = logging.getLogger(__name__)

#: Readiness answers are reused this long, so probes do not hammer the broker.
PROBE_CACHE_S = 1.0


class PacketSink(Protocol):
    """Where accepted packets go (the raw topic)."""

    async def start(self) -> None: ...

    async def send(self, key: bytes, value: bytes) -> float:
        """Deliver one record; returns the seconds Kafka took to acknowledge it, or raises
        :class:`BrokerUnavailableError` (nothing acknowledged)."""
        ...

    async def check(self) -> str | None:
        """None if the topic is writable, else why not."""
        ...

    async def close(self) -> None: ...


def _resolve(future: asyncio.Future[float], value: float) -> None:
    if not future.done():  # the request may have timed out and gone already
        future.set_result(value)


def _reject(future: asyncio.Future[float], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class KafkaPacketSink:
    def __init__(
        self,
        settings: IngestSettings,
        producer_factory: Callable[..., Any] = KafkaProducer,
        admin_factory: Callable[..., Any] = KafkaAdminClient,
    ) -> None:
        self.settings = settings
        self.topic = settings.topics.raw
        self._producer_factory = producer_factory
        self._admin_factory = admin_factory
        self._producer: Any = None
        self._admin: Any = None
        self._last_error = "not connected yet"
        self._connect_task: asyncio.Task[None] | None = None
        # One thread for the producer (creation, send, flush, close) and one for probes, so
        # a slow readiness probe never delays a send.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ingest-producer")
        self._probe_pool = ThreadPoolExecutor(1, thread_name_prefix="ingest-probe")
        self._probe: tuple[float, str | None] | None = None

    @property
    def connected(self) -> bool:
        return self._producer is not None

    def _config(self) -> dict[str, Any]:
        timeout_ms = int(self.settings.produce_timeout_s * 1000)
        return {
            "bootstrap_servers": self.settings.bootstrap_servers,
            "client_id": "harstream-ingest",
            "acks": "all",
            "enable_idempotence": True,
            # A request waits at most produce_timeout_s; send() must not block the producer
            # thread much longer than that when metadata is missing.
            "max_block_ms": timeout_ms,
            "request_timeout_ms": max(timeout_ms, 10_000),
            # Records a client was already told failed (503) may still be delivered if Kafka
            # recovers within this: the client's retry then duplicates them, and the preprocess
            # worker drops duplicates by seq. Bounded so the buffer does not grow for minutes.
            "delivery_timeout_ms": max(2 * timeout_ms + 10_000, 30_000),
            "bootstrap_timeout_ms": 3000,
            # Topics are created by operators (or `create_topics`) with chosen partitions.
            "allow_auto_create_topics": False,
            # No linger: concurrent requests batch up by themselves while a produce request is
            # in flight, and a lone packet is not held back (1 ms linger measured 4× the latency).
            "linger_ms": 0,
        }

    def _create(self) -> Any:
        producer = self._producer_factory(**self._config())
        try:  # warm the topic metadata so the first send does not wait for it
            producer.partitions_for(self.topic)
        except KafkaError as exc:
            logger.warning("raw topic %s not available yet: %s", self.topic, exc)
        return producer

    async def start(self) -> None:
        if self._connect_task is None:
            self._connect_task = asyncio.create_task(self._connect_loop(), name="kafka-connect")

    async def _connect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.5
        attempts = 0
        while self._producer is None:
            attempts += 1
            try:
                self._producer = await loop.run_in_executor(self._pool, self._create)
            except (KafkaError, OSError, ValueError) as exc:
                self._last_error = (
                    f"cannot connect to {self.settings.kafka_bootstrap_servers}: {exc}"
                )
                if attempts == 1 or attempts % 10 == 0:
                    logger.warning("%s (attempt %d; retrying)", self._last_error, attempts)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        logger.info(
            "Kafka producer connected to %s (idempotent, acks=all)",
            self.settings.kafka_bootstrap_servers,
        )

    async def send(self, key: bytes, value: bytes) -> float:
        producer = self._producer
        if producer is None:
            raise BrokerUnavailableError(f"Kafka producer {self._last_error}")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[float] = loop.create_future()
        started = time.perf_counter()

        def acked(_metadata: Any) -> None:
            loop.call_soon_threadsafe(_resolve, done, time.perf_counter() - started)

        def failed(exc: BaseException) -> None:
            loop.call_soon_threadsafe(_reject, done, exc)

        def submit() -> None:
            future = producer.send(self.topic, key=key, value=value)
            future.add_callback(acked)
            future.add_errback(failed)

        try:
            async with asyncio.timeout(self.settings.produce_timeout_s):
                await loop.run_in_executor(self._pool, submit)
                return await done
        except TimeoutError as exc:
            raise BrokerUnavailableError(
                f"Kafka did not acknowledge within {self.settings.produce_timeout_s:g} s"
            ) from exc
        except KafkaError as exc:
            raise BrokerUnavailableError(f"Kafka refused the record: {exc}") from exc

    def _list_topics(self) -> set[str]:
        if self._admin is None:
            self._admin = self._admin_factory(
                bootstrap_servers=self.settings.bootstrap_servers,
                client_id="harstream-ingest-probe",
                request_timeout_ms=int(self.settings.readiness_timeout_s * 1000),
                bootstrap_timeout_ms=int(self.settings.readiness_timeout_s * 1000),
            )
        return set(self._admin.list_topics())

    async def check(self) -> str | None:
        if self._producer is None:
            return f"producer {self._last_error}"
        now = time.monotonic()
        if self._probe is not None and now - self._probe[0] < PROBE_CACHE_S:
            return self._probe[1]
        loop = asyncio.get_running_loop()
        try:
            topics = await asyncio.wait_for(
                loop.run_in_executor(self._probe_pool, self._list_topics),
                self.settings.readiness_timeout_s + 1.0,
            )
            problem = None if self.topic in topics else f"topic {self.topic} does not exist"
        except (KafkaError, OSError, TimeoutError) as exc:
            problem = f"broker metadata request failed: {type(exc).__name__}: {exc}"
        self._probe = (time.monotonic(), problem)
        return problem

    async def close(self) -> None:
        if self._connect_task is not None:
            self._connect_task.cancel()
            await asyncio.gather(self._connect_task, return_exceptions=True)
        loop = asyncio.get_running_loop()
        timeout_s = self.settings.shutdown_timeout_s
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                await loop.run_in_executor(self._pool, producer.flush, timeout_s)
            except KafkaError as exc:
                logger.warning("producer flush incomplete: %s", exc)
            await loop.run_in_executor(self._pool, producer.close, timeout_s)
        if self._admin is not None:
            await loop.run_in_executor(self._probe_pool, self._admin.close)
            self._admin = None
        self._pool.shutdown(wait=False)
        self._probe_pool.shutdown(wait=False)
