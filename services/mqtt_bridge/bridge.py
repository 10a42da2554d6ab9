"""The bridge's I/O shell: paho-mqtt on its network thread, batches on the event loop, the
Kafka edge's :func:`~services.common.kafka.send.send_acked`, acknowledgements back to paho.

Delivery guarantee: at-least-once from the device's PUBACK to the raw topic. The bridge
subscribes at QoS 1 with manual acknowledgement and a persistent session (MQTT 5,
``clean_start=False``, ``session_expiry_s``, a client id stable per replica). A message is
acknowledged to the broker only after Kafka acknowledged its record (or its dead letter),
in the order the broker sent them. When Kafka does not acknowledge a batch within
``kafka_ack_timeout_s``, the bridge acknowledges nothing of it, disconnects (the broker keeps
the session and queues what arrives meanwhile), waits until Kafka answers again and
reconnects: the broker then sends the unacknowledged messages again (DUP flag). A bridge
that dies is the same case: its restart (same client id) gets them. A record Kafka wrote but
whose message was not acknowledged is written again when the message comes back; the
preprocess worker drops the duplicate by seq, as for an HTTP retry.

Message ids (``mid``) are per connection: an acknowledgement meant for a message of an
earlier connection could acknowledge another message. Every connect and disconnect starts a
new *generation*; a message is acknowledged only if it arrived in the current one (checked
and sent under the lock the network thread takes to change generations).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from services.common.kafka.backoff import BackoffPolicy
from services.common.kafka.dead_letters import dead_letter
from services.common.kafka.errors import SendAbandonedError
from services.common.kafka.send import Producer, Record, send_acked
from services.ingest.progress import DeviceProgress
from services.ingest.validation import Reason, ValidPacket
from services.mqtt_bridge.errors import KafkaNotAcknowledged, PacketRefused
from services.mqtt_bridge.metrics import BridgeMetrics
from services.mqtt_bridge.packets import accept, raw_record, shared_filter, topic_device
from services.mqtt_bridge.settings import MqttBridgeSettings
from shared.messages import DeadLetter

logger = logging.getLogger(__name__)

SERVICE = "mqtt-bridge"
#: Retries of a batch within kafka_ack_timeout_s, and of the Kafka probe during an outage.
BACKOFF = BackoffPolicy(initial_s=0.2, max_s=5.0, multiplier=2.0, jitter=0.5)
#: Dead letters have no Kafka origin: the MQTT topic (prefixed ``mqtt:``) and no
#: partition/offset.
NO_POSITION = -1
KEEPALIVE_S = 30


class Incoming(NamedTuple):
    """One MQTT message as the network thread hands it to the event loop."""

    #: The connection generation it arrived in (see the module docstring).
    generation: int
    mid: int
    qos: int
    topic: str
    payload: bytes
    #: The broker's DUP flag: delivered before and not acknowledged.
    dup: bool
    #: MQTT 5 content type, if the device set one.
    content_type: str | None


class MqttLink:
    """One paho client per connection (a new one after every deliberate disconnect), its
    network thread, and the generation counter guarding acknowledgements."""

    def __init__(
        self,
        settings: MqttBridgeSettings,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[Incoming], None],
        metrics: BridgeMetrics,
    ) -> None:
        self._settings = settings
        self._loop = loop
        self._deliver = deliver
        self._metrics = metrics
        self._lock = threading.Lock()
        self._generation = 0
        self._client: mqtt.Client | None = None
        #: Set (on the event loop) while connected and subscribed.
        self.subscribed = asyncio.Event()

    def start(self) -> None:
        """Connect (retried by paho's loop until the broker answers) and subscribe."""
        settings = self._settings
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=True,
        )
        client.username_pw_set(settings.mqtt_username, settings.password())
        if settings.mqtt_tls:
            client.tls_set(
                ca_certs=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = settings.session_expiry_s
        properties.ReceiveMaximum = settings.receive_maximum
        # clean_start=False: resume the session a previous connection (or run) left, with
        # the messages it did not acknowledge.
        client.connect_async(
            settings.mqtt_host,
            settings.mqtt_port,
            keepalive=KEEPALIVE_S,
            clean_start=False,
            properties=properties,
        )
        self._client = client
        client.loop_start()

    def stop(self) -> None:
        """Disconnect without acknowledging anything more (blocking: run in an executor).
        The broker keeps the session for ``session_expiry_s``."""
        client, self._client = self._client, None
        if client is None:
            return
        with self._lock:
            self._generation += 1
        client.disconnect()
        client.loop_stop()
        self._loop.call_soon_threadsafe(self._unsubscribed)

    def ack(self, messages: list[Incoming]) -> int:
        """Acknowledge ``messages`` (in order) that arrived in the current generation;
        returns how many were. The others will be delivered again."""
        acked = 0
        with self._lock:
            client = self._client
            if client is None:
                return 0
            for message in messages:
                if message.generation != self._generation:
                    continue
                if message.qos > 0:  # a QoS 0 message (sent so by its device) has no ack
                    client.ack(message.mid, message.qos)
                acked += 1
        return acked

    def current(self, message: Incoming) -> bool:
        with self._lock:
            return message.generation == self._generation

    # -- paho callbacks (network thread) ------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            logger.error(
                "MQTT broker %s:%d refused the connection: %s",
                self._settings.mqtt_host,
                self._settings.mqtt_port,
                reason_code,
            )
            return
        with self._lock:
            self._generation += 1
        logger.info(
            "connected to MQTT broker %s:%d as %s (session present: %s)",
            self._settings.mqtt_host,
            self._settings.mqtt_port,
            self._settings.client_id,
            flags.session_present,
        )
        client.subscribe(shared_filter(self._settings.share_group), options=SubscribeOptions(qos=1))

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        refused = [code for code in reason_codes if code.is_failure]
        if refused:
            logger.error("MQTT broker refused the subscription: %s", refused[0])
            return
        self._loop.call_soon_threadsafe(self._subscribed)

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        with self._lock:
            self._generation += 1
        if reason_code.is_failure:
            logger.warning("disconnected from the MQTT broker: %s; reconnecting", reason_code)
        self._loop.call_soon_threadsafe(self._unsubscribed)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        properties = message.properties
        content_type = getattr(properties, "ContentType", None) if properties else None
        with self._lock:
            generation = self._generation
        incoming = Incoming(
            generation,
            message.mid,
            message.qos,
            message.topic,
            bytes(message.payload),
            bool(message.dup),
            content_type,
        )
        self._loop.call_soon_threadsafe(self._deliver, incoming)

    # -- on the event loop ---------------------------------------------------------------------

    def _subscribed(self) -> None:
        logger.info("subscribed to %s", shared_filter(self._settings.share_group))
        self.subscribed.set()
        self._metrics.connected.set(1)

    def _unsubscribed(self) -> None:
        self.subscribed.clear()
        self._metrics.connected.set(0)


class MqttBridge:
    """Batches of MQTT messages → validated records and dead letters → Kafka → PUBACKs."""

    def __init__(
        self,
        settings: MqttBridgeSettings,
        producer: Producer,
        metrics: BridgeMetrics,
        probe_kafka: Callable[[], Awaitable[None]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._producer = producer
        self._metrics = metrics
        self._probe_kafka = probe_kafka
        self._clock = clock
        self._progress = DeviceProgress()
        self._queue: asyncio.Queue[Incoming] = asyncio.Queue()
        self._link: MqttLink | None = None
        self._outage = False
        self._rng = random.Random()

    @property
    def ready(self) -> bool:
        """Subscribed, and Kafka acknowledging."""
        return self._link is not None and self._link.subscribed.is_set() and not self._outage

    def not_ready_reason(self) -> str | None:
        if self._outage:
            return "Kafka is not acknowledging: disconnected from MQTT until it answers"
        if self._link is None or not self._link.subscribed.is_set():
            return "not connected and subscribed to the MQTT broker"
        return None

    def _deliver(self, message: Incoming) -> None:
        self._metrics.in_flight.inc()
        self._queue.put_nowait(message)

    async def run(self, stop: asyncio.Event) -> None:
        """Bridge until ``stop`` is set; the batch in flight is finished (or left
        unacknowledged if Kafka does not acknowledge it), then the bridge disconnects."""
        loop = asyncio.get_running_loop()
        self._link = MqttLink(self._settings, loop, self._deliver, self._metrics)
        self._link.start()
        try:
            while not stop.is_set():
                batch = await self._next_batch(stop)
                if batch:
                    await self._bridge(batch, stop)
        finally:
            await loop.run_in_executor(None, self._link.stop)
            self._forget_queued()

    async def _next_batch(self, stop: asyncio.Event) -> list[Incoming]:
        getter = asyncio.ensure_future(self._queue.get())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not getter.done():
            getter.cancel()
            return []
        batch = [getter.result()]
        while len(batch) < self._settings.max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _bridge(self, batch: list[Incoming], stop: asyncio.Event) -> None:
        assert self._link is not None
        link = self._link
        live = [message for message in batch if link.current(message)]
        if len(live) < len(batch):
            # Arrived before a reconnect: the broker delivers them again.
            self._metrics.in_flight.dec(len(batch) - len(live))
        if not live:
            return
        now = self._clock()
        records: list[Record] = []
        letters: list[DeadLetter] = []
        accepted: list[ValidPacket] = []
        refused: list[Reason] = []
        topic = self._settings.topics.raw
        for message in live:
            if message.dup:
                self._metrics.redeliveries.inc()
            device_id = topic_device(message.topic)
            last = self._progress.last(device_id) if device_id else None
            try:
                packet = accept(
                    message.topic,
                    bytes(message.payload),
                    message.content_type,
                    self._settings.limits,
                    self._settings.max_body_bytes,
                    now,
                    last,
                )
            except PacketRefused as exc:
                key = device_id.encode() if device_id else None
                source = f"mqtt:{message.topic}"
                letters.append(
                    dead_letter(
                        SERVICE, exc, source, NO_POSITION, NO_POSITION, key, message.payload
                    )
                )
                refused.append(exc.reason)
                continue
            key, value = raw_record(packet, now)
            records.append(Record(topic, value, key))
            accepted.append(packet)
        started = time.perf_counter()
        try:
            await asyncio.wait_for(
                send_acked(
                    self._producer,
                    records,
                    letters,
                    dlq_topic=self._settings.topics.dlq,
                    backoff=BACKOFF,
                    stop=stop,
                    what="MQTT packets",
                ),
                self._settings.kafka_ack_timeout_s,
            )
        except (TimeoutError, SendAbandonedError):
            self._metrics.in_flight.dec(len(live))
            if stop.is_set():
                logger.warning("stopping: %d MQTT messages left unacknowledged", len(live))
                return
            await self._ride_out(
                KafkaNotAcknowledged(
                    f"Kafka did not acknowledge {len(live)} MQTT packets within "
                    f"{self._settings.kafka_ack_timeout_s:g} s"
                ),
                stop,
            )
            return
        except Exception as exc:  # not retriable (e.g. not authorized): same way out
            self._metrics.in_flight.dec(len(live))
            logger.exception("Kafka refused a batch of MQTT packets")
            await self._ride_out(exc, stop)
            return
        self._metrics.kafka_ack_seconds.observe(time.perf_counter() - started)
        self._metrics.batch_size.observe(len(live))
        acked = link.ack(live)
        self._metrics.in_flight.dec(len(live))
        if acked < len(live):
            logger.info(
                "%d of %d MQTT messages arrived before a reconnect: delivered again",
                len(live) - acked,
                len(live),
            )
        moment = time.monotonic()
        for packet in accepted:
            self._progress.accepted(packet.device_id, packet.seq, packet.first_sample_time, moment)
            self._metrics.samples.inc(packet.num_samples)
        self._metrics.messages.labels(outcome="accepted").inc(len(accepted))
        for reason in refused:
            self._metrics.refused(reason)
        if letters:
            logger.warning(
                "%d MQTT messages dead-lettered, e.g. %s: %s",
                len(letters),
                letters[0].source_topic,
                letters[0].reason,
            )

    async def _ride_out(self, error: BaseException, stop: asyncio.Event) -> None:
        """Kafka did not acknowledge: disconnect from MQTT without acknowledging, drop what
        was queued (all unacknowledged: the broker keeps it), wait until Kafka answers, and
        reconnect to be sent it all again."""
        assert self._link is not None
        self._outage = True
        self._metrics.kafka_outages.inc()
        logger.warning("%s: disconnecting from MQTT until Kafka answers", error)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._link.stop)
        self._forget_queued()
        for delay in BACKOFF.delays(self._rng):
            if stop.is_set():
                return
            try:
                await asyncio.wait_for(self._probe_kafka(), self._settings.kafka_ack_timeout_s)
                break
            except Exception as exc:
                logger.info("Kafka still not answering (%s); next probe in %.1f s", exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return
        logger.info("Kafka answers again: reconnecting to MQTT")
        self._outage = False
        self._link.start()

    def _forget_queued(self) -> None:
        dropped = 0
        while not self._queue.empty():
            self._queue.get_nowait()
            dropped += 1
        if dropped:
            self._metrics.in_flight.dec(dropped)
