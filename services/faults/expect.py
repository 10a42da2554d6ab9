"""What a faultless pipeline would have produced (pure): the window ids of the packets that
were accepted (or written to the raw topic), computed offline with the preprocess worker's
own streaming core and stream rules."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from services.demo.replay import SimulatedDevice, packets_of
from services.preprocess.settings import PreprocessSettings
from services.preprocess.stream import StreamConfig, StreamProcessor
from shared.messages import RawPacket, window_id


def worker_stream_config() -> StreamConfig:
    """The stream rules the preprocess worker runs with when nothing overrides them (the
    fault-injection pipeline does not): the settings' defaults, not a copy of them."""
    fields = PreprocessSettings.model_fields
    return StreamConfig(
        gap_threshold_s=float(fields["gap_threshold_s"].default),
        reorder_max_packets=int(fields["reorder_max_packets"].default),
    )


def packets_sent(
    devices: Iterable[SimulatedDevice],
    start_time: float,
    seqs: Mapping[str, Iterable[int]],
    packet_size: int = 50,
) -> list[RawPacket]:
    """The packets ``seqs[device_id]`` of each device exactly as the replay built them
    (same samples, same device-clock times), in seq order per device."""
    out: list[RawPacket] = []
    for device in devices:
        wanted = set(seqs.get(device.device_id, ()))
        for packet in packets_of(device, packet_size, start_time):
            if packet.seq in wanted:
                out.append(
                    RawPacket(
                        device_id=device.device_id,
                        seq=packet.seq,
                        first_sample_time=packet.first_sample_time,
                        sample_rate_hz=device.sample_rate_hz,
                        samples=np.asarray(packet.body["samples"], dtype=np.float64),
                        received_at=0.0,
                    )
                )
    return out


def expected_window_ids(
    packets: Iterable[RawPacket], config: StreamConfig | None = None
) -> set[str]:
    """Ids of the windows the preprocess worker makes from ``packets`` when each device's
    packets reach it once, in seq order (what a faultless pipeline does with them)."""
    ordered = sorted(packets, key=lambda p: (p.device_id, p.seq))
    result = StreamProcessor(config or worker_stream_config()).process_batch({}, ordered, now=0.0)
    if result.rejected:
        index, error = result.rejected[0]
        raise ValueError(f"packet {ordered[index].device_id}:{ordered[index].seq}: {error}")
    return {window_id(w.device_id, w.start_index) for w in result.windows}
