"""The raw-topic producer: kafka-python's idempotent producer (acks=all) bridged to asyncio,
watched and replaced when it stops getting acknowledgements.

aiokafka's idempotent producer fails against the local Tansu broker, kafka-python's works,
and it works on Apache Kafka alike (options:
:func:`~services.common.kafka.clients.kafka_python_producer_kwargs`). kafka-python is
thread-based: its blocking calls (creation, ``send`` when metadata or buffer space is
missing, ``close``) run on a worker thread of the producer's own, and its delivery callbacks
come from its I/O thread, so they are handed to the event loop with ``call_soon_threadsafe``.

A supervisor task creates the producer (retried with :data:`BACKOFF` while Kafka is down:
the service starts and answers 503 meanwhile), probes the broker while records wait for
acknowledgements, and replaces a producer that gets none while the broker answers (see
:mod:`services.ingest.health` for the kafka-python state that makes this necessary).

With ``raw_bundle_linger_ms`` set, packets bound for one raw partition go together as one
record (a bundle, :func:`shared.messages.raw.encode_bundle`), written to the partition
Kafka's default partitioner gives each packet's key: kafka-python's, the broker's and
preprocess's work per record is then paid once per bundle. Bundling is a group commit: a
packet for a partition with no bundle awaiting its acknowledgement goes at once (alone, so
a quiet fleet waits for nothing), and the packets that come while one is in flight go
together as soon as it is acknowledged, or when the first of them has waited the linger. So
a bundle holds what arrives during one acknowledgement, and grows with the load. Every
request of a bundle is answered when the bundle is acknowledged (its acknowledgement time
includes the wait), or refused with it.

Delivery is at-least-once: a record whose request was answered 503 (not acknowledged within
``produce_timeout_s``) may still be written by the producer that holds it, and the device
retries it; the preprocess worker drops duplicates by seq. Shutdown is bounded: outstanding
records get until the shutdown deadline to be acknowledged, then every producer is closed
with what is left of it, never with an unbounded ``flush``; worker threads are daemons, so
a call stuck on a dead broker cannot hold the process either.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import queue
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeVar

from kafka import KafkaProducer  # type: ignore[import-untyped]
from kafka.errors import KafkaError  # type: ignore[import-untyped]
from kafka.partitioner.default import murmur2  # type: ignore[import-untyped]

from services.common.kafka.admin import AdminClient
from services.common.kafka.backoff import BackoffPolicy
from services.common.kafka.clients import kafka_python_kwargs, kafka_python_producer_kwargs
from services.common.kafka.errors import BrokerUnavailableError
from services.ingest.health import ProducerHealth, Verdict
from services.ingest.settings import IngestSettings
from shared.messages import Heartbeat
from shared.messages.raw import encode_bundle

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Readiness answers are reused this long, so probes do not hammer the broker.
PROBE_CACHE_S = 1.0
#: One policy for connecting and for replacing a wedged producer: the n-th consecutive
#: failure (or replacement without an acknowledgement in between) waits ``BACKOFF.delay(n)``.
BACKOFF = BackoffPolicy(initial_s=0.5, max_s=10.0, multiplier=2.0, jitter=0.5)
#: A raw bundle goes at once when its packets reach this size, well below the record size
#: Kafka takes by default (1 MiB): ~100 packets of 50 samples.
BUNDLE_MAX_BYTES = 256 * 1024
#: How often the supervisor looks at the producer's health (seconds); probes are cached for
#: PROBE_CACHE_S, so this costs nothing while records are being acknowledged.
SUPERVISE_INTERVAL_S = 0.25


class PacketSink(Protocol):
    """Where accepted packets go (the raw topic)."""

    async def start(self) -> None: ...

    async def send(self, key: bytes, value: bytes) -> float:
        """Deliver one record; returns the seconds Kafka took to acknowledge it, or raises
        :class:`BrokerUnavailableError` (not acknowledged: it may still be written later)."""
        ...

    async def check(self) -> str | None:
        """None if records are being acknowledged and the topic is writable, else why not."""
        ...

    @property
    def replacements(self) -> int:
        """Producers replaced because they stopped getting acknowledgements."""
        ...

    async def close(self, deadline: float | None = None) -> None:
        """Stop by ``deadline`` (``time.monotonic()``; default: now + shutdown_timeout_s)."""
        ...


class _DaemonWorker(Executor):
    """One daemon thread running submitted calls in order.

    ``ThreadPoolExecutor`` threads are joined at interpreter exit: a ``send`` or ``close``
    blocked on a paused broker would then hold a stopping service past its deadline.
    """

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Future[Any] | None, Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put((future, lambda: fn(*args, **kwargs)))
        return future

    def call(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` in order with the submitted calls, without a future (``fn`` reports
        its own results; an exception it lets out is logged)."""
        self._queue.put((None, fn))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            future, call = item
            if future is None:
                try:
                    call()
                except Exception:
                    logger.exception("producer worker call failed")
                continue
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:  # handed to the waiting coroutine
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._queue.put(None)
        if wait:
            self._thread.join()


class _Outgoing(NamedTuple):
    """One record on its way to a producer."""

    topic: str
    key: bytes | None
    value: bytes
    partition: int | None
    #: Resolved with the seconds to the acknowledgement, or the delivery error.
    done: asyncio.Future[float]
    #: ``time.perf_counter()`` when the record was handed over.
    started: float


#: ``(kind, producer, record, detail)``: ``sent`` (detail: monotonic time), ``acked``
#: (seconds to the acknowledgement), ``failed`` / ``refused`` (the exception).
_Event = tuple[str, "_Producer", _Outgoing, Any]


@dataclass(eq=False)
class _Producer:
    """One producer instance, its worker thread and its health."""

    number: int
    client: Any
    worker: _DaemonWorker
    health: ProducerHealth
    #: Set while nothing is outstanding (shutdown and retirement wait for it).
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    #: Records waiting for the worker thread to hand them to ``client.send`` (appended by
    #: the event loop, taken by the worker: deque appends and pops are thread-safe).
    outbox: collections.deque[_Outgoing] = field(default_factory=collections.deque)
    #: Whether a call that empties :attr:`outbox` is queued on the worker.
    flush_queued: bool = False
    #: The raw topic's partitions when the producer was created (sorted; empty if the topic
    #: was not there yet: packets then go as single records).
    raw_partitions: tuple[int, ...] = ()
    #: Raw partition -> bundles handed to this producer and not yet acknowledged or failed.
    bundles_in_flight: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.drained.set()

    def sent(self, now: float) -> None:
        self.health.sent(now)
        self.drained.clear()

    def completed(self, now: float, acked: bool) -> None:
        if acked:
            self.health.acked(now)
        else:
            self.health.delivery_failed(now)
        if not self.health.outstanding:
            self.drained.set()


def _resolve(future: asyncio.Future[float], value: float) -> None:
    if not future.done():  # the request may have timed out and gone already
        future.set_result(value)


def _reject(future: asyncio.Future[float], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _close_client(client: Any, timeout_s: float) -> None:
    """Close a kafka-python producer within about ``timeout_s``.

    ``KafkaProducer.close(timeout)`` first flushes, and its flush raises KafkaTimeoutError
    when records are still incomplete, before stopping the I/O thread: a wedged producer
    (see :mod:`services.ingest.health`) would keep its thread and buffers for good. Its
    records can never be delivered, so the sender is force-closed: it fails them (their
    requests were answered 503 already) and exits. ``Sender.force_close`` is not public API;
    ``tests/integration/test_ingest_producer_health.py`` fails if it stops working.
    """
    try:
        client.close(timeout=timeout_s)
        return
    except KafkaError as exc:
        logger.info("closing a producer that cannot deliver its records: %s", exc)
    sender = getattr(client, "_sender", None)
    if sender is not None:
        sender.force_close()
        sender.join(max(timeout_s, 0.1))
    try:
        client.close(timeout=0)
    except KafkaError as exc:  # records still incomplete: the daemon thread goes with us
        logger.warning("producer did not close: %s", exc)


@dataclass(eq=False)
class _Bundle:
    """Packets of one raw partition waiting to go as one record."""

    #: The producer current when the bundle was started: if it is not at the flush (it
    #: was replaced), the packets are refused rather than handed to a retiring producer.
    producer: _Producer
    frames: list[bytes] = field(default_factory=list)
    #: Each packet's request future and when it was added (``time.perf_counter()``).
    waiters: list[tuple[asyncio.Future[float], float]] = field(default_factory=list)
    size: int = 0
    timer: asyncio.TimerHandle | None = None


@functools.lru_cache(maxsize=65536)
def _key_hash(key: bytes) -> int:
    """Kafka's default partitioner's hash of a record key (~5 µs in pure Python, so a
    device's is remembered)."""
    return int(murmur2(key)) & 0x7FFFFFFF


def _settle_bundle(
    record: asyncio.Future[float], waiters: list[tuple[asyncio.Future[float], float]]
) -> None:
    """Answer every packet of an acknowledged (or failed) bundle."""
    error = (
        BrokerUnavailableError("the bundle was cancelled")
        if record.cancelled()
        else record.exception()
    )
    if error is not None:
        for waiter, _ in waiters:
            _reject(waiter, error)
        return
    now = time.perf_counter()
    for waiter, added in waiters:
        _resolve(waiter, now - added)


class KafkaPacketSink:
    def __init__(
        self,
        settings: IngestSettings,
        producer_factory: Callable[..., Any] = KafkaProducer,
        admin_factory: Callable[..., Any] = AdminClient,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.topic = settings.topics.raw
        self._producer_factory = producer_factory
        self._admin_factory = admin_factory
        self._rng = rng or random.Random()
        self._current: _Producer | None = None
        self._retiring: dict[_Producer, asyncio.Task[None]] = {}
        self._created = 0
        self._replacements = 0
        #: Replacements since the current producer's last acknowledgement (backoff attempt).
        self._unproductive_replacements = 0
        self._replace_not_before = 0.0
        self._last_error = "not connected yet"
        self._supervisor: asyncio.Task[None] | None = None
        self._heartbeats: asyncio.Task[None] | None = None
        #: Heartbeats acknowledged, and heartbeat rounds that failed.
        self.heartbeats_sent = 0
        self.heartbeat_failures = 0
        self._admin: Any = None
        self._closed = False
        # Probes have a worker of their own, so a slow probe never delays a send.
        self._probe_worker = _DaemonWorker("ingest-probe")
        #: The last probe: when, whether the broker answered, and the problem (None: ok).
        self._probe: tuple[float, bool, str | None] | None = None
        self._probe_lock = asyncio.Lock()
        #: What the worker and I/O threads report to the event loop, in the order it
        #: happened (see :meth:`_submit`), and whether a call to drain it is scheduled.
        self._events: collections.deque[_Event] = collections.deque()
        self._events_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Raw bundles being filled, per partition (empty when bundling is off).
        self._bundle_linger_s = settings.raw_bundle_linger_ms / 1000.0
        self._bundles: dict[int, _Bundle] = {}

    @property
    def connected(self) -> bool:
        return self._current is not None

    @property
    def replacements(self) -> int:
        return self._replacements

    def _config(self) -> dict[str, Any]:
        return kafka_python_producer_kwargs(
            self.settings,
            produce_timeout_s=self.settings.produce_timeout_s,
            client_id="harstream-ingest",
            # Records of concurrent requests share a produce request (see the setting).
            linger_ms=self.settings.producer_linger_ms,
        )

    def _create_client(self) -> tuple[Any, tuple[int, ...]]:
        """A new client and the raw topic's partitions (its metadata warmed, so the first
        send does not wait for it; none if the topic is not there yet)."""
        client = self._producer_factory(**self._config())
        try:
            return client, tuple(sorted(client.partitions_for(self.topic) or ()))
        except KafkaError as exc:
            logger.warning("raw topic %s not available yet: %s", self.topic, exc)
        return client, ()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name="kafka-producer")
        if self._heartbeats is None and self.settings.heartbeat_interval_s > 0:
            self._heartbeats = asyncio.create_task(self._heartbeat_loop(), name="heartbeats")

    async def _heartbeat_loop(self) -> None:
        """One heartbeat per partition of the heartbeats topic every ``heartbeat_interval_s``,
        through the producer that sends packets: a heartbeat written proves packets could be
        written when it was stamped (see :mod:`shared.messages.heartbeat`).

        The next heartbeat is stamped only once the previous round is acknowledged or failed
        for good (or its producer was replaced): a round stuck in a paused broker is written
        when the broker resumes, and it must be the only one stamped before the outage —
        heartbeats stamped during it and written late would tell alerting that the pipeline
        could take data all along, and devices would look silent."""
        interval = self.settings.heartbeat_interval_s
        topic = self.settings.topics.heartbeats
        source = f"ingest@{socket.gethostname()}:{os.getpid()}"
        loop = asyncio.get_running_loop()
        partitions: tuple[_Producer, list[int]] | None = None
        next_at = time.monotonic()
        while True:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            producer = self._current
            if producer is None:
                continue
            try:
                if partitions is None or partitions[0] is not producer:
                    found = await loop.run_in_executor(
                        producer.worker, producer.client.partitions_for, topic
                    )
                    if not found:
                        raise BrokerUnavailableError(f"topic {topic} has no partitions (yet)")
                    partitions = (producer, sorted(found))
                value = Heartbeat(source, time.time()).to_bytes()
                round_ = [self._submit(producer, topic, None, value, p) for p in partitions[1]]
            except (BrokerUnavailableError, KafkaError) as exc:
                self.heartbeat_failures += 1
                logger.debug("heartbeat not written: %s", exc)
                continue
            pending: set[asyncio.Future[float]] = set(round_)
            while pending and self._current is producer:
                _, pending = await asyncio.wait(pending, timeout=SUPERVISE_INTERVAL_S)
            acked = sum(1 for f in round_ if f.done() and not f.cancelled() and not f.exception())
            self.heartbeats_sent += acked
            if acked < len(round_):
                # Packets meet the same outage and answer 503; the readiness probe says why.
                self.heartbeat_failures += 1
                logger.debug("heartbeats: %d of %d acknowledged", acked, len(round_))
            # A late round does not make up for lost time with a burst.
            next_at = max(next_at, time.monotonic())

    async def _supervise(self) -> None:
        failures = 0
        while True:
            current = self._current
            if current is None:
                if await self._connect():
                    failures = 0
                    continue
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    logger.warning("%s (attempt %d; retrying)", self._last_error, failures)
                await asyncio.sleep(BACKOFF.delay(failures, self._rng))
                continue
            if current.health.needs_probe():
                await self._probe_broker()
            now = time.monotonic()
            if current.health.verdict(now) is Verdict.WEDGED and now >= self._replace_not_before:
                self._replace(current, now)
                continue
            await asyncio.sleep(SUPERVISE_INTERVAL_S)

    async def _connect(self) -> bool:
        self._created += 1
        number = self._created
        worker = _DaemonWorker(f"ingest-producer-{number}")
        loop = asyncio.get_running_loop()
        try:
            client, raw_partitions = await loop.run_in_executor(worker, self._create_client)
        except (KafkaError, OSError, ValueError) as exc:
            worker.shutdown(wait=False)
            self._last_error = f"cannot connect to {self.settings.kafka_bootstrap_servers}: {exc}"
            return False
        self._current = _Producer(
            number,
            client,
            worker,
            ProducerHealth(self.settings.produce_timeout_s),
            raw_partitions=raw_partitions,
        )
        logger.info(
            "Kafka producer #%d connected to %s (idempotent, acks=all)",
            number,
            self.settings.kafka_bootstrap_servers,
        )
        return True

    def _replace(self, wedged: _Producer, now: float) -> None:
        """Retire a producer that gets no acknowledgements although the broker answers, and
        let the supervisor create a new one. Its records stay with it until it is closed:
        the ones it still delivers are at-least-once duplicates of requests answered 503."""
        self._replacements += 1
        self._unproductive_replacements += 1
        self._replace_not_before = now + BACKOFF.delay(self._unproductive_replacements, self._rng)
        logger.warning(
            "replacing Kafka producer #%d: %s (replacement %d)",
            wedged.number,
            wedged.health.problem(now),
            self._replacements,
        )
        self._current = None
        self._last_error = f"is being replaced (producer #{wedged.number} was wedged)"
        self._retiring[wedged] = asyncio.create_task(self._retire(wedged))

    async def _retire(self, producer: _Producer) -> None:
        # A healthy producer would finish its deliveries within the produce timeout; a wedged
        # one never does. Either way it is closed after that.
        await self._drain([producer], time.monotonic() + self.settings.produce_timeout_s)
        await self._close_producers([producer], time.monotonic() + self.settings.produce_timeout_s)
        self._retiring.pop(producer, None)

    async def _drain(self, producers: list[_Producer], deadline: float) -> None:
        waiting = asyncio.gather(*(p.drained.wait() for p in producers))
        # What is still outstanding at the deadline is reported and closed by the caller.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiting, max(0.0, deadline - time.monotonic()))

    async def _close_producers(self, producers: list[_Producer], deadline: float) -> None:
        loop = asyncio.get_running_loop()
        closing = []
        for producer in producers:
            timeout_s = max(0.0, deadline - time.monotonic())
            closing.append(
                loop.run_in_executor(producer.worker, _close_client, producer.client, timeout_s)
            )
            producer.worker.shutdown(wait=False)  # the thread ends after the close
        if not closing:
            return
        _, pending = await asyncio.wait(closing, timeout=max(0.0, deadline - time.monotonic()))
        if pending:
            logger.warning(
                "%d producer(s) still closing at the deadline; leaving them to their daemon "
                "threads",
                len(pending),
            )

    async def close(self, deadline: float | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        if deadline is None:
            deadline = time.monotonic() + self.settings.shutdown_timeout_s
        for partition in list(self._bundles):  # their requests wait: they go with the rest
            self._flush_bundle(partition)
        for task in (self._heartbeats, self._supervisor):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._heartbeats = self._supervisor = None
        for task in self._retiring.values():
            task.cancel()
        await asyncio.gather(*self._retiring.values(), return_exceptions=True)
        producers = list(self._retiring)
        self._retiring.clear()
        if self._current is not None:
            producers.append(self._current)
            self._current = None
        self._last_error = "is closed"
        # The probe client closes on its own worker while the records drain: no probe starts
        # once there is no current producer, one in flight finishes first, and a broker that
        # does not answer cannot leave the close no time (the drain may take the deadline).
        probe_closed = asyncio.get_running_loop().run_in_executor(
            self._probe_worker, self._drop_admin
        )
        self._probe_worker.shutdown(wait=False)
        await self._drain(producers, deadline)
        lost = sum(p.health.outstanding for p in producers)
        if lost:
            logger.warning(
                "%d record(s) not acknowledged by the shutdown deadline (their requests were "
                "answered 503; they may still appear on the topic)",
                lost,
            )
        await self._close_producers(producers, deadline)
        # What is left of the deadline: a probe stuck on a paused broker cannot hold shutdown.
        _, pending = await asyncio.wait(
            [probe_closed], timeout=max(0.0, deadline - time.monotonic())
        )
        if pending:
            logger.warning("the probe client was still closing at the deadline; leaving it")
        elif (error := probe_closed.exception()) is not None:
            logger.warning("closing the probe client failed: %r", error)

    # -- sending ------------------------------------------------------------------------------

    async def send(self, key: bytes, value: bytes) -> float:
        producer = self._current
        if producer is None:
            raise BrokerUnavailableError(f"Kafka producer {self._last_error}")
        if self._bundle_linger_s > 0 and producer.raw_partitions:
            done = self._bundled(producer, key, value)
        else:
            done = self._submit(producer, self.topic, key, value)
        return await self._acknowledged(done)

    async def _acknowledged(self, done: asyncio.Future[float]) -> float:
        """What ``done`` resolves with, or BrokerUnavailableError: not acknowledged within
        ``produce_timeout_s``, or refused."""
        # A timer on the record's own future rather than asyncio.timeout, which costs ~7 µs
        # a request (three running-loop look-ups and a task-cancelling timer) against ~2.
        timer = asyncio.get_running_loop().call_later(
            self.settings.produce_timeout_s, self._expire, done
        )
        try:
            return await done
        except KafkaError as exc:
            raise BrokerUnavailableError(f"Kafka refused the record: {exc}") from exc
        finally:
            timer.cancel()

    def _expire(self, done: asyncio.Future[float]) -> None:
        # The record stays with its producer and may still be written (at-least-once); a
        # worker that has not handed it over yet skips it (see _flush_outbox).
        _reject(
            done,
            BrokerUnavailableError(
                f"Kafka did not acknowledge within {self.settings.produce_timeout_s:g} s"
            ),
        )

    def _submit(
        self,
        producer: _Producer,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int | None = None,
    ) -> asyncio.Future[float]:
        """Hand one record to ``producer``; the future resolves with the seconds to its
        acknowledgement, or with the delivery error (a ``KafkaError`` too if the producer
        refuses it at once: metadata or buffer space missing within max_block_ms).

        Batched across concurrent requests, because the thread hand-offs cost more than
        the sending (py-spy under 1,000 live devices: ~20 % of ingest's CPU in executor
        futures, their locks and ``call_soon_threadsafe`` for one ``send`` each): records
        wait in the producer's outbox and one worker call sends all that are there; what
        happens to them (handed over, acknowledged, failed) comes back through one deque
        that one scheduled call drains. One deque keeps the order of the events, so the
        health sees a record handed over before it sees it acknowledged.
        """
        loop = asyncio.get_running_loop()
        self._loop = loop
        done: asyncio.Future[float] = loop.create_future()
        producer.outbox.append(_Outgoing(topic, key, value, partition, done, time.perf_counter()))
        if not producer.flush_queued:
            producer.flush_queued = True
            producer.worker.call(lambda: self._flush_outbox(producer))
        return done

    def _bundled(self, producer: _Producer, key: bytes, value: bytes) -> asyncio.Future[float]:
        """Add one packet to the bundle of its partition (see :mod:`shared.messages.raw`);
        the future resolves once the bundle is acknowledged. The bundle goes at once if no
        bundle of its partition awaits an acknowledgement, else when one is acknowledged or
        failed, after ``raw_bundle_linger_ms`` at the latest, or when it reaches
        :data:`BUNDLE_MAX_BYTES`."""
        loop = asyncio.get_running_loop()
        partitions = producer.raw_partitions
        # Kafka's default partitioner for the key (murmur2): each device's packets go where
        # its single records would, so its state and checkpoints stay in one partition.
        partition = partitions[_key_hash(key) % len(partitions)]
        bundle = self._bundles.get(partition)
        if bundle is not None and bundle.producer is not producer:
            self._flush_bundle(partition)  # refuses it: its producer was replaced
            bundle = None
        if bundle is None:
            bundle = self._bundles[partition] = _Bundle(producer)
        done: asyncio.Future[float] = loop.create_future()
        bundle.frames.append(value)
        bundle.waiters.append((done, time.perf_counter()))
        bundle.size += len(value) + 4
        if bundle.size >= BUNDLE_MAX_BYTES or not bundle.producer.bundles_in_flight.get(partition):
            self._flush_bundle(partition)
        elif bundle.timer is None:
            bundle.timer = loop.call_later(self._bundle_linger_s, self._flush_bundle, partition)
        return done

    def _flush_bundle(self, partition: int) -> None:
        """Hand partition's bundle to its producer as one record (event loop)."""
        bundle = self._bundles.pop(partition, None)
        if bundle is None:
            return
        if bundle.timer is not None:
            bundle.timer.cancel()
        # A request that timed out was answered 503 already: its packet is not written.
        kept = [i for i, (waiter, _) in enumerate(bundle.waiters) if not waiter.done()]
        if not kept:
            return
        waiters = [bundle.waiters[i] for i in kept]
        producer = bundle.producer
        if producer is not self._current:  # replaced, or the sink is closing
            for waiter, _ in waiters:
                _reject(waiter, BrokerUnavailableError(f"Kafka producer {self._last_error}"))
            return
        value = encode_bundle([bundle.frames[i] for i in kept], partition)
        record = self._submit(producer, self.topic, None, value, partition)
        in_flight = producer.bundles_in_flight
        in_flight[partition] = in_flight.get(partition, 0) + 1
        record.add_done_callback(
            lambda done: self._bundle_settled(done, waiters, producer, partition)
        )

    def _bundle_settled(
        self,
        record: asyncio.Future[float],
        waiters: list[tuple[asyncio.Future[float], float]],
        producer: _Producer,
        partition: int,
    ) -> None:
        """Answer a bundle's requests, and send the bundle that waited for it."""
        _settle_bundle(record, waiters)
        in_flight = producer.bundles_in_flight
        in_flight[partition] -= 1
        if not in_flight[partition]:
            del in_flight[partition]
        waiting = self._bundles.get(partition)
        if waiting is not None and waiting.producer is producer:
            self._flush_bundle(partition)

    def _flush_outbox(self, producer: _Producer) -> None:
        """Worker thread: hand every waiting record to the client."""
        # Cleared before taking records: one appended after this point queues a new call.
        producer.flush_queued = False
        outbox = producer.outbox
        while outbox:
            record = outbox.popleft()
            if record.done.done():  # its request timed out (answered 503) while it waited
                continue
            try:
                if record.partition is None:
                    future = producer.client.send(record.topic, key=record.key, value=record.value)
                else:
                    future = producer.client.send(
                        record.topic, key=record.key, value=record.value, partition=record.partition
                    )
            except Exception as exc:  # refused at once: no delivery will follow
                self._report(("refused", producer, record, exc))
                continue
            # Reported before the callbacks can be: the loop sees the events in order.
            self._report(("sent", producer, record, time.monotonic()))
            future.add_callback(self._acked_callback(producer, record))
            future.add_errback(self._failed_callback(producer, record))

    def _acked_callback(self, producer: _Producer, record: _Outgoing) -> Callable[[Any], None]:
        def acked(_metadata: Any) -> None:
            self._report(("acked", producer, record, time.perf_counter() - record.started))

        return acked

    def _failed_callback(
        self, producer: _Producer, record: _Outgoing
    ) -> Callable[[BaseException], None]:
        def failed(exc: BaseException) -> None:
            self._report(("failed", producer, record, exc))

        return failed

    def _report(self, event: _Event) -> None:
        """Any thread: queue ``event`` for the event loop, waking it once per batch."""
        self._events.append(event)
        if not self._events_scheduled:
            self._events_scheduled = True
            loop = self._loop
            assert loop is not None
            # A closed loop (RuntimeError) has nobody left waiting for the answer.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._drain_events)

    def _drain_events(self) -> None:
        """Event loop: apply what the threads reported, in order."""
        # Cleared before draining: an event appended after this point schedules a new call.
        self._events_scheduled = False
        events = self._events
        while events:
            kind, producer, record, detail = events.popleft()
            if kind == "sent":
                producer.sent(detail)
            elif kind == "acked":
                producer.completed(time.monotonic(), acked=True)
                if producer is self._current:
                    self._unproductive_replacements = 0
                _resolve(record.done, detail)
            elif kind == "failed":
                producer.completed(time.monotonic(), acked=False)
                _reject(record.done, detail)
            else:  # refused at once: the producer never held it
                _reject(record.done, detail)

    # -- readiness ----------------------------------------------------------------------------

    def _list_topics(self) -> set[str]:
        if self._admin is None:
            self._admin = self._admin_factory(
                **kafka_python_kwargs(
                    self.settings,
                    client_id="harstream-ingest-probe",
                    request_timeout_ms=int(self.settings.readiness_timeout_s * 1000),
                    bootstrap_timeout_ms=int(self.settings.readiness_timeout_s * 1000),
                )
            )
        return set(self._admin.list_topics())

    def _drop_admin(self) -> None:
        # After a failed probe the admin client may hold a dead connection, so the next probe
        # starts afresh; at shutdown the client goes for good.
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                admin.close()
            except (KafkaError, OSError) as exc:
                logger.debug("closing the probe client: %s", exc)

    async def _probe_broker(self) -> str | None:
        """Ask the broker for its topics (cached for PROBE_CACHE_S); None if it answered and
        the raw topic exists. Every probe feeds the current producer's health."""
        async with self._probe_lock:
            if self._closed:  # the probe worker is gone (a check queued behind a probe)
                return f"producer {self._last_error}"
            now = time.monotonic()
            if self._probe is not None and now - self._probe[0] < PROBE_CACHE_S:
                probed_at, answered, problem = self._probe
                if self._current is not None:  # a producer created since the probe, too
                    self._current.health.broker_answered(probed_at, answered)
                return problem
            loop = asyncio.get_running_loop()
            answered = True
            try:
                topics = await asyncio.wait_for(
                    loop.run_in_executor(self._probe_worker, self._list_topics),
                    self.settings.readiness_timeout_s + 1.0,
                )
                problem = None if self.topic in topics else f"topic {self.topic} does not exist"
            except (KafkaError, OSError, TimeoutError) as exc:
                answered = False
                problem = f"broker metadata request failed: {type(exc).__name__}: {exc}"
                self._probe_worker.submit(self._drop_admin)
            now = time.monotonic()
            self._probe = (now, answered, problem)
            if self._current is not None:
                self._current.health.broker_answered(now, answered)
            return problem

    async def check(self) -> str | None:
        producer = self._current
        if producer is None:
            return f"producer {self._last_error}"
        problem = await self._probe_broker()
        return producer.health.problem(time.monotonic()) or problem
