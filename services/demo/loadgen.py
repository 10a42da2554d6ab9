"""The replay as a load generator: simulated wearables posting packets to an ingest URL.

Each device posts its packets on its own schedule (``speed`` × real time). Like a real
wearable it keeps what was not acknowledged: on 429 or 503 it waits ``Retry-After`` and
sends the same packet again, so nothing is lost while ingest or Kafka is unavailable.
Other 4xx answers are bugs in the sender and are counted, never retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

from services.demo.replay import SimulatedDevice, packets_of

logger = logging.getLogger(__name__)

RETRYABLE = {429, 502, 503, 504}


@dataclass
class LoadStats:
    packets_sent: int = 0
    packets_accepted: int = 0
    samples_accepted: int = 0
    retries: int = 0
    rejected: Counter[int] = field(default_factory=Counter)
    request_seconds: list[float] = field(default_factory=list)
    devices_done: int = 0
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    @property
    def elapsed_s(self) -> float:
        return (self.finished_at or time.time()) - self.started_at


@dataclass
class PacketJournal:
    """What each device sent and when (wall clock, Unix seconds), for a replay that must be
    accounted packet by packet (the fault-injection suite)."""

    #: ``(device_id, seq)`` -> when ingest answered 202.
    accepted_at: dict[tuple[str, int], float] = field(default_factory=dict)
    #: ``device_id`` -> the last time it tried to send anything (accepted or not): a device
    #: that keeps retrying is still sending, as far as DEVICE_OFFLINE is concerned.
    last_attempt_at: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceCredentials:
    device: SimulatedDevice
    token: str


async def replay_devices(
    url: str,
    devices: Sequence[DeviceCredentials],
    speed: float,
    packet_size: int = 50,
    start_time: float | None = None,
    stats: LoadStats | None = None,
    max_connections: int = 64,
    stagger_s: float = 1.0,
    journal: PacketJournal | None = None,
) -> LoadStats:
    """Replay every device concurrently against ``url`` (the ingest base URL); ``journal``
    (optional) records every packet's acceptance time."""
    stats = stats or LoadStats()
    start_time = time.time() if start_time is None else start_time
    connector = aiohttp.TCPConnector(limit=max_connections)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [
            asyncio.create_task(
                _replay_one(
                    session,
                    url,
                    creds,
                    speed,
                    packet_size,
                    start_time,
                    stats,
                    delay=stagger_s * i / max(1, len(devices)),
                    journal=journal,
                )
            )
            for i, creds in enumerate(devices)
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            stats.finished_at = time.time()
    return stats


async def _replay_one(
    session: aiohttp.ClientSession,
    url: str,
    creds: DeviceCredentials,
    speed: float,
    packet_size: int,
    device_start_time: float,
    stats: LoadStats,
    delay: float,
    journal: PacketJournal | None = None,
) -> None:
    await asyncio.sleep(delay)  # devices do not all start on the same millisecond
    loop = asyncio.get_running_loop()
    wall_start = loop.time()
    endpoint = url.rstrip("/") + "/v1/packets"
    headers = {"Authorization": f"Bearer {creds.token}"}
    rate = creds.device.sample_rate_hz
    for packet in packets_of(creds.device, packet_size, device_start_time):
        # A device sends a packet once its last sample has been measured.
        due = wall_start + (packet.first_index + packet.num_samples) / rate / speed
        pause = due - loop.time()
        if pause > 0:
            await asyncio.sleep(pause)
        await _post_until_accepted(
            session, endpoint, headers, packet.body, stats, journal, packet.seq
        )
    stats.devices_done += 1


async def _post_until_accepted(
    session: aiohttp.ClientSession,
    endpoint: str,
    headers: dict[str, str],
    body: dict[str, object],
    stats: LoadStats,
    journal: PacketJournal | None = None,
    seq: int = 0,
) -> None:
    backoff = 0.2
    device_id = str(body["device_id"])
    while True:
        stats.packets_sent += 1
        if journal is not None:
            journal.last_attempt_at[device_id] = time.time()
        t0 = time.perf_counter()
        try:
            async with session.post(endpoint, json=body, headers=headers) as response:
                await response.read()
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("device %s: %s; retrying", body["device_id"], exc)
            status, retry_after = 503, None
        stats.request_seconds.append(time.perf_counter() - t0)
        if journal is not None:
            journal.last_attempt_at[device_id] = time.time()
        if status == 202:
            if journal is not None:
                journal.accepted_at[(device_id, seq)] = time.time()
            stats.packets_accepted += 1
            stats.samples_accepted += len(body["samples"])  # type: ignore[arg-type]
            return
        if status not in RETRYABLE:
            stats.rejected[status] += 1
            logger.warning(
                "device %s packet %s rejected with %d", body["device_id"], body["seq"], status
            )
            return
        stats.retries += 1
        wait = _retry_after_seconds(retry_after, backoff)
        backoff = min(backoff * 2, 5.0)
        await asyncio.sleep(wait)


def _retry_after_seconds(header: str | None, default: float) -> float:
    if header is None:
        return default
    try:
        return max(0.05, float(header))
    except ValueError:
        return default
