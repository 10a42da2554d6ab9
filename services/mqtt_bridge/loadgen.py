"""Simulated wearables publishing over MQTT (``harstream simulate --transport mqtt``).

Each device is an MQTT 5 client logged in with its device id and token, publishing the
packets of :func:`services.demo.replay.packets_of` (JSON, as over HTTP) to its own topic at
QoS 1 on its own schedule (``speed`` × real time). A packet counts as accepted when the
broker's PUBACK says so; like a device it keeps a packet until then, and the client library
sends it again after a reconnect. The broker acknowledges on receipt, so the latency here
is the broker's, not Kafka's: the bridge's ``harstream_mqtt_kafka_ack_seconds`` and the
pipeline's end-to-end latency say the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from services.demo.loadgen import DeviceCredentials, LoadStats
from services.demo.replay import packets_of
from services.mqtt_bridge.packets import device_topic

logger = logging.getLogger(__name__)

#: What the stats count a refused publish as (HTTP's status for the same refusal).
NOT_AUTHORIZED_STATUS = 403


class Publisher:
    """One device's MQTT client; PUBACKs resolve futures on the event loop (also used by the
    live fleet of :mod:`services.demo.fleetgen`)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, host: str, port: int, device_id: str, token: str
    ) -> None:
        self._loop = loop
        # Both touched on the event loop only: paho calls on_publish holding the lock that
        # publish() takes, so the network thread must not wait for anything of ours.
        self._pending: dict[int, asyncio.Future[ReasonCode]] = {}
        self._early: dict[int, ReasonCode] = {}
        self.connected = asyncio.Event()
        self.device_id = device_id
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{device_id}-sim",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.username_pw_set(device_id, token)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        # Packets waiting for their PUBACK are kept by paho and sent again on reconnect.
        self.client.max_queued_messages_set(0)
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()

    def _on_connect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            logger.warning("MQTT broker refused %s: %s", self.device_id, reason_code)
            return
        self._loop.call_soon_threadsafe(self.connected.set)

    def _on_publish(
        self,
        _client: mqtt.Client,
        _userdata: object,
        mid: int,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._loop.call_soon_threadsafe(self._settle, mid, reason_code)

    def _settle(self, mid: int, code: ReasonCode) -> None:
        future = self._pending.pop(mid, None)
        if future is None:
            self._early[mid] = code  # acknowledged before publish() registered it
        elif not future.done():
            future.set_result(code)

    async def publish(self, topic: str, payload: bytes) -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1)
        # No await between publish and here: _settle cannot run in between.
        if info.mid in self._early:
            return self._early.pop(info.mid)
        future: asyncio.Future[ReasonCode] = self._loop.create_future()
        self._pending[info.mid] = future
        return await future

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def replay_devices_mqtt(
    host: str,
    port: int,
    devices: Sequence[DeviceCredentials],
    speed: float,
    packet_size: int = 50,
    start_time: float | None = None,
    stats: LoadStats | None = None,
    stagger_s: float = 1.0,
) -> LoadStats:
    """Replay every device concurrently as MQTT publishers to the broker at host:port."""
    stats = stats or LoadStats()
    start_time = time.time() if start_time is None else start_time
    loop = asyncio.get_running_loop()
    publishers = [
        Publisher(loop, host, port, creds.device.device_id, creds.token) for creds in devices
    ]
    try:
        await asyncio.gather(
            *(
                _replay_one(publisher, creds, speed, packet_size, start_time, stats, delay)
                for publisher, creds, delay in zip(
                    publishers,
                    devices,
                    (stagger_s * i / max(1, len(devices)) for i in range(len(devices))),
                    strict=True,
                )
            )
        )
    finally:
        for publisher in publishers:
            publisher.close()
        stats.finished_at = time.time()
    return stats


async def _replay_one(
    publisher: Publisher,
    creds: DeviceCredentials,
    speed: float,
    packet_size: int,
    device_start_time: float,
    stats: LoadStats,
    delay: float,
) -> None:
    await asyncio.sleep(delay)  # devices do not all start on the same millisecond
    await publisher.connected.wait()
    loop = asyncio.get_running_loop()
    wall_start = loop.time()
    topic = device_topic(creds.device.device_id)
    rate = creds.device.sample_rate_hz
    for packet in packets_of(creds.device, packet_size, device_start_time):
        # A device sends a packet once its last sample has been measured.
        due = wall_start + (packet.first_index + packet.num_samples) / rate / speed
        pause = due - loop.time()
        if pause > 0:
            await asyncio.sleep(pause)
        stats.packets_sent += 1
        started = time.perf_counter()
        code = await publisher.publish(topic, orjson.dumps(packet.body))
        stats.request_seconds.append(time.perf_counter() - started)
        if code.is_failure:
            stats.rejected[NOT_AUTHORIZED_STATUS] += 1
            logger.warning("device %s packet %d refused: %s", topic, packet.seq, code)
            continue
        stats.packets_accepted += 1
        stats.samples_accepted += packet.num_samples
    stats.devices_done += 1
