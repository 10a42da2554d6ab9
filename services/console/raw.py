"""The raw signal behind an alert, read back from the raw topic for the device page.

The alerting worker reads only the header of raw packets (issue 10: decoding every sample
cost too much), so nothing keeps the signal: on request, a group-less consumer seeks the
device's partition to shortly before the alert (by record timestamp, i.e. when ingest
wrote the packet), reads forward to the alert, and keeps the device's samples inside the
window. Bounded in records read and in time. :func:`assemble` (pure) turns the packets into
the plot's series: total acceleration magnitude, and body acceleration (total minus the
gravity estimate of the preprocessing core's own low-pass, ``PreprocessingConfig``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from scipy import signal

from services.common.kafka.clients import aiokafka_consumer_kwargs
from shared.dsp.config import PreprocessingConfig
from shared.errors import SchemaError
from shared.messages import Alert, RawPacket
from shared.messages.raw import split_raw
from shared.settings import StreamSettings

logger = logging.getLogger(__name__)

#: Most raw records read for one plot (a busy partition holds other devices' packets too).
MAX_RECORDS = 50_000
#: Longest one read may take (seconds).
READ_BUDGET_S = 8.0
#: Wall seconds before the alert from which packets are read, beyond the window itself:
#: the alert is decided after its packets went through preprocess and inference.
LOOKBACK_MARGIN_S = 30.0
#: Points sent per series (the plot is ~1000 px wide).
MAX_POINTS = 2000


def window_of(alert: Alert, seconds: float) -> tuple[float, float]:
    """Device-clock (from, to) of the signal to show: for a fall, from 10 s before the
    impact; otherwise the ``seconds`` before the event that decided the alert."""
    details = alert.details
    end = float(details.get("event_time") or alert.opened_at)
    impact = details.get("impact_time")
    if isinstance(impact, int | float):
        start = float(impact) - 10.0
        return start, min(end, start + seconds)
    return end - seconds, end


def assemble(packets: list[RawPacket], t_from: float, t_to: float) -> dict[str, Any] | None:
    """The plot's series from ``packets`` (any order, duplicates allowed), or None if none
    of their samples fall in [t_from, t_to]."""
    by_seq = {p.seq: p for p in packets}
    if not by_seq:
        return None
    times, samples = [], []
    for p in sorted(by_seq.values(), key=lambda p: p.first_sample_time):
        times.append(p.first_sample_time + np.arange(p.num_samples) / p.sample_rate_hz)
        samples.append(p.samples)
    t = np.concatenate(times)
    acc = np.concatenate(samples)[:, :3]
    rate = float(np.median([p.sample_rate_hz for p in by_seq.values()]))
    # Gravity estimated over everything read (the filter settles before the window starts).
    sos = PreprocessingConfig(sample_rate_hz=rate).gravity_sos
    zi = signal.sosfilt_zi(sos)[:, :, None] * acc[0][None, None, :]
    gravity, _ = signal.sosfilt(sos, acc, axis=0, zi=zi)
    inside = (t >= t_from) & (t <= t_to)
    if not inside.any():
        return None
    step = max(1, int(inside.sum()) // MAX_POINTS)
    t, acc, gravity = t[inside][::step], acc[inside][::step], gravity[inside][::step]
    return {
        "t": np.round(t, 3).tolist(),
        "total_acc": np.round(np.linalg.norm(acc, axis=1), 4).tolist(),
        "body_acc": np.round(np.linalg.norm(acc - gravity, axis=1), 4).tolist(),
        "sample_rate_hz": rate / step,
        "from": t_from,
        "to": t_to,
        "note": "read back from the raw topic; body = total minus the 0.3 Hz gravity estimate",
    }


async def read_window(
    settings: StreamSettings, partition: int, alert: Alert, seconds: float
) -> dict[str, Any] | None:
    """The raw signal of ``alert``'s device in the window before it, or None."""
    t_from, t_to = window_of(alert, seconds)
    device = alert.device_id.encode()
    tp = TopicPartition(settings.topics.raw, partition)
    consumer = AIOKafkaConsumer(
        **aiokafka_consumer_kwargs(settings, group_id=None, client_id="harstream-console-raw")
    )
    await consumer.start()
    packets: list[RawPacket] = []
    try:
        consumer.assign([tp])
        since_ms = int((alert.opened_at - seconds - LOOKBACK_MARGIN_S) * 1000)
        found = await consumer.offsets_for_times({tp: since_ms})
        end = (await consumer.end_offsets([tp]))[tp]
        start = found.get(tp)
        if start is None:  # nothing that recent: the alert is newer than everything read
            consumer.seek(tp, max(0, end - MAX_RECORDS))
        else:
            consumer.seek(tp, start.offset)
        stop_ms = int((alert.opened_at + 5.0) * 1000)
        read, deadline = 0, time.monotonic() + READ_BUDGET_S
        done = False
        while not done and read < MAX_RECORDS and time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500, max_records=2000)
            records = batch.get(tp, [])
            if not records:
                break
            for record in records:
                read += 1
                if record.timestamp > stop_ms or record.offset >= end - 1:
                    done = True
                if record.key is not None and record.key != device:
                    continue  # another device's packet (a bundle has no key: opened below)
                packets.extend(_packets_of(record.value, alert.device_id))
    except (KafkaError, TimeoutError) as exc:
        logger.warning("console: raw window of %s not read: %s", alert.device_id, exc)
        return None
    finally:
        await consumer.stop()
    return assemble(packets, t_from, t_to)


class RawReader:
    """:func:`read_window` for the devices of this worker (``partitions``: device id →
    partition, the worker's live map)."""

    def __init__(
        self, settings: StreamSettings, partitions: Mapping[str, int], seconds: float
    ) -> None:
        self._settings = settings
        self._partitions = partitions
        self._seconds = seconds

    async def __call__(self, alert: Alert) -> dict[str, Any] | None:
        partition = self._partitions.get(alert.device_id)
        if partition is None:
            return None
        return await read_window(self._settings, partition, alert, self._seconds)


def _packets_of(value: bytes, device_id: str) -> list[RawPacket]:
    """``device_id``'s packets in a raw record (one packet or a bundle); what does not
    decode is left out, as the preprocess worker dead-letters it."""
    try:
        frames = split_raw(value).frames
    except SchemaError:
        return []
    packets = []
    for frame in frames:
        try:
            # Only the device's packets are decoded (a bundle holds other devices' too).
            if RawPacket.peek(frame).device_id == device_id:
                packets.append(RawPacket.from_bytes(frame))
        except SchemaError:
            continue
    return packets
