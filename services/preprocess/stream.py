"""Per-device stream state machine: raw packets in, window messages out. No I/O.

Each device has a :class:`DeviceStream`: the shared DSP core's :class:`DeviceState`, the
device's 50 Hz timeline, its last sequence number, a small reorder buffer, the resampler and
counters. :meth:`StreamProcessor.process_batch` advances many devices by a batch of packets:

* **Duplicates** (seq already processed or already buffered) are dropped and counted;
  at-least-once delivery and device retries produce them. So is a packet that turns up
  after it was given up on (below): its place in the filters has passed.
* **Reordering**: a packet ahead of the expected seq waits in the buffer (at most
  ``reorder_max_packets``) until the missing ones arrive. When the buffer overflows the
  oldest missing seq is given up on: a gap.
* **Gaps** (a missing packet given up on, or a device-time jump between consecutive packets
  of more than ``gap_threshold_s``) reset the filters: a fresh DSP state, its partial window
  discarded. The timeline index jumps to where the new packet's time falls on the device's
  50 Hz grid, so window ids (``device:start_index``) are never reused and window times stay
  aligned to device time. Jitter below the threshold is ignored: samples are contiguous by
  index. A sample-rate change and a device restarting its sequence numbers (a lower seq
  with newer samples) reset the same way.
* **Rates other than 50 Hz** are resampled (:mod:`services.preprocess.resample`).

Timeline: sample index ``i`` stands for device time ``origin_time + i / 50``. The device's
first packet starts index 0 at its ``first_sample_time``; the reorder buffer covers it like
any other: seq 0 starts the device at once, a first packet with a higher seq waits for the
lower ones (at most ``reorder_max_packets`` later packets; lower seqs arriving after that
are late: dropped as duplicates). A window's ``start_index`` is the timeline index of its
first sample. Feeding a 50 Hz recording in order in any packet sizes
gives windows bit-identical to ``StreamingPreprocessor().process`` over the whole recording,
at the same start indices.

Throughput: the batch is first *planned* per device (sequencing, resets, resampling: cheap),
which cuts each device's packets into segments between resets; the segments are then fed to
``StreamingPreprocessor.process_many`` in rounds, one call for every device's first segment
(the only one, unless the device reset within the batch), one for the second segments, ...
The core is chunk-invariant, so one call over a segment's concatenated packets gives the
same windows as one call per packet.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from services.preprocess.resample import (
    ANTI_ALIAS_ORDER,
    TARGET_RATE_HZ,
    ResamplerState,
    is_target_rate,
    resample,
)
from shared.dsp import DeviceState, PreprocessingConfig, StreamingPreprocessor, Windows
from shared.dsp.config import NUM_INPUT_CHANNELS
from shared.errors import PreprocessingError, SchemaError, StateDecodeError
from shared.features import MotionFeatures, motion_features_many
from shared.messages import RawPacket, WindowMessage

#: Accepted device sample rates (Hz); outside, a packet is rejected (dead letter).
MIN_RATE_HZ = 5.0
MAX_RATE_HZ = 1000.0


class EventKind(StrEnum):
    """What happened to a device's stream besides plain processing."""

    #: A packet whose seq was already processed or buffered: dropped.
    DUPLICATE = "duplicate"
    #: A packet ahead of a missing one, held in the reorder buffer.
    REORDERED = "reordered"
    #: Missing packets given up on, or a time jump beyond the threshold: filters reset.
    GAP = "gap"
    #: The device changed its sample rate: filters reset.
    RATE_CHANGE = "rate_change"
    #: The device restarted its sequence numbers (lower seq, newer samples): filters reset.
    SEQ_RESTART = "seq_restart"


#: Events that reset a device's filters.
RESET_KINDS = frozenset({EventKind.GAP, EventKind.RATE_CHANGE, EventKind.SEQ_RESTART})


@dataclass(frozen=True)
class StreamEvent:
    kind: EventKind
    device_id: str
    #: Sequence number of the packet that caused it.
    seq: int
    #: For logs ("3 packets missing before seq 12", "time jump of 4.2 s").
    detail: str = ""


class StreamCounters(NamedTuple):
    """Per-device totals since the device's first packet."""

    #: Packets fed to the filters (duplicates and buffered packets not included).
    packets: int = 0
    #: Raw samples of those packets (at the device's rate).
    samples: int = 0
    windows: int = 0
    duplicates: int = 0
    gaps: int = 0
    reordered: int = 0
    resampled_packets: int = 0
    #: Filter resets of any kind (gaps, rate changes, sequence restarts).
    resets: int = 0


@dataclass(frozen=True)
class StreamConfig:
    """Stream rules of the worker (``PreprocessSettings`` fills it in)."""

    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    #: Device-time jump between consecutive packets that counts as a gap (seconds).
    gap_threshold_s: float = 1.0
    #: Packets held while waiting for a missing one before giving up on it.
    reorder_max_packets: int = 4

    def __post_init__(self) -> None:
        if self.gap_threshold_s <= 0:
            raise ValueError("gap_threshold_s must be positive")
        if self.reorder_max_packets < 0:
            raise ValueError("reorder_max_packets must be >= 0")
        if not is_target_rate(self.preprocessing.sample_rate_hz):
            raise ValueError(f"the stream worker feeds the core at {TARGET_RATE_HZ} Hz")


# --- state ---------------------------------------------------------------------------------

_MAGIC = b"HSPS"
_VERSION = 1
# magic, version, fingerprint, started, origin time, dsp origin index, next index, last seq,
# last packet time, last sample time, rate, has resampler, counters (8), pending, dsp length
_HEADER = struct.Struct("<4sB8s?dqqqdddB8qHI")
# rate, consumed, produced, anti-alias sections
_RESAMPLER = struct.Struct("<dqqB")
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True, eq=False)
class DeviceStream:
    """Everything needed to continue one device's stream exactly. Immutable.

    Attributes:
        dsp: the shared core's filter and window state.
        started: False until the device's first packet.
        origin_time: device time of timeline index 0 (Unix seconds).
        dsp_origin_index: timeline index of the DSP state's sample 0 (its last reset).
        next_index: timeline index of the next 50 Hz sample.
        last_seq: sequence number of the last packet fed to the filters.
        last_packet_time: ``first_sample_time`` of that packet.
        last_sample_time: device time of its last sample.
        rate_hz: the device's sample rate.
        resampler: resampling state, None at 50 Hz.
        pending: reorder buffer, packets ahead of a missing seq, sorted by seq.
        counters: per-device totals.
    """

    dsp: DeviceState
    started: bool = False
    origin_time: float = 0.0
    dsp_origin_index: int = 0
    next_index: int = 0
    last_seq: int = -1
    last_packet_time: float = 0.0
    last_sample_time: float = 0.0
    rate_hz: float = TARGET_RATE_HZ
    resampler: ResamplerState | None = None
    pending: tuple[RawPacket, ...] = ()
    counters: StreamCounters = field(default_factory=StreamCounters)

    @classmethod
    def fresh(cls, config: PreprocessingConfig) -> DeviceStream:
        return cls(dsp=DeviceState.fresh(config))

    def to_bytes(self, config: PreprocessingConfig) -> bytes:
        dsp = self.dsp.to_bytes(config)
        header = _HEADER.pack(
            _MAGIC,
            _VERSION,
            bytes.fromhex(config.fingerprint),
            self.started,
            self.origin_time,
            self.dsp_origin_index,
            self.next_index,
            self.last_seq,
            self.last_packet_time,
            self.last_sample_time,
            self.rate_hz,
            self.resampler is not None,
            *self.counters,
            len(self.pending),
            len(dsp),
        )
        parts = [header]
        if self.resampler is not None:
            r = self.resampler
            parts.append(_RESAMPLER.pack(r.rate_hz, r.consumed, r.produced, r.zi.shape[0]))
            parts.append(np.ascontiguousarray(r.last, dtype="<f8").tobytes())
            parts.append(np.ascontiguousarray(r.zi, dtype="<f8").tobytes())
        for packet in self.pending:
            frame = packet.to_bytes()
            parts.append(_LENGTH.pack(len(frame)))
            parts.append(frame)
        parts.append(dsp)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes, config: PreprocessingConfig) -> DeviceStream:
        """Restore bytes of :meth:`to_bytes`; :class:`StateDecodeError` if damaged, of another
        layout version or written under another preprocessing fingerprint."""
        return cls._decode(data, config, keep_filters=True)

    @classmethod
    def continue_timeline(cls, data: bytes, config: PreprocessingConfig) -> DeviceStream:
        """The device's timeline, sequence and buffered packets from bytes whose filter state
        cannot be used (another preprocessing fingerprint, after an upgrade), with fresh
        filters: a reset that keeps window ids unique. :class:`StateDecodeError` if even
        that cannot be read."""
        return cls._decode(data, config, keep_filters=False)

    @classmethod
    def _decode(cls, data: bytes, config: PreprocessingConfig, keep_filters: bool) -> DeviceStream:
        reader = _Reader(data)
        fields = _HEADER.unpack(reader.take(_HEADER.size))
        magic, version, fingerprint, started, origin_time, dsp_origin, next_index = fields[:7]
        last_seq, last_packet_time, last_sample_time, rate_hz, has_resampler = fields[7:12]
        counters = StreamCounters(*fields[12:20])
        pending_count, dsp_length = fields[20:22]
        if magic != _MAGIC or version != _VERSION:
            raise StateDecodeError(f"not a device stream state of layout {_VERSION}")
        if keep_filters and fingerprint.hex() != config.fingerprint:
            raise StateDecodeError(
                f"device stream was written with preprocessing {fingerprint.hex()}, "
                f"this worker runs {config.fingerprint}"
            )
        if not all(
            math.isfinite(v) for v in (origin_time, last_packet_time, last_sample_time, rate_hz)
        ):
            raise StateDecodeError("device stream times are not finite")
        resampler = None
        if has_resampler:
            r_rate, consumed, produced, sections = _RESAMPLER.unpack(reader.take(_RESAMPLER.size))
            if sections not in (0, ANTI_ALIAS_ORDER // 2):
                raise StateDecodeError(f"resampler state has {sections} filter sections")
            last = reader.array((NUM_INPUT_CHANNELS,))
            zi = reader.array((sections, 2, NUM_INPUT_CHANNELS))
            resampler = ResamplerState(r_rate, consumed, produced, last, zi)
        pending = []
        for _ in range(pending_count):
            (length,) = _LENGTH.unpack(reader.take(_LENGTH.size))
            try:
                pending.append(RawPacket.from_bytes(reader.take(length)))
            except SchemaError as exc:
                raise StateDecodeError(f"buffered packet: {exc}") from exc
        dsp_bytes = reader.take(dsp_length)
        if reader.remaining:
            raise StateDecodeError(f"device stream has {reader.remaining} trailing bytes")
        if keep_filters:
            dsp = DeviceState.from_bytes(dsp_bytes, config)
            if next_index != dsp_origin + dsp.samples_seen:
                raise StateDecodeError("device stream fields are inconsistent")
        else:
            dsp, dsp_origin, resampler = DeviceState.fresh(config), next_index, None
            counters = counters._replace(resets=counters.resets + 1)
        return cls(
            dsp=dsp,
            started=bool(started),
            origin_time=origin_time,
            dsp_origin_index=dsp_origin,
            next_index=next_index,
            last_seq=last_seq,
            last_packet_time=last_packet_time,
            last_sample_time=last_sample_time,
            rate_hz=rate_hz,
            resampler=resampler,
            pending=tuple(pending),
            counters=counters,
        )

    def equals(self, other: DeviceStream) -> bool:
        """Exact equality of every field (arrays bit for bit)."""
        return (
            self.dsp.equals(other.dsp)
            and (self.started, self.origin_time, self.dsp_origin_index, self.next_index)
            == (other.started, other.origin_time, other.dsp_origin_index, other.next_index)
            and (self.last_seq, self.last_packet_time, self.last_sample_time, self.rate_hz)
            == (other.last_seq, other.last_packet_time, other.last_sample_time, other.rate_hz)
            and self.counters == other.counters
            and len(self.pending) == len(other.pending)
            and all(a.equals(b) for a, b in zip(self.pending, other.pending, strict=True))
            and (
                self.resampler.equals(other.resampler)
                if self.resampler is not None and other.resampler is not None
                else self.resampler is other.resampler
            )
        )


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._offset = 0

    def take(self, size: int) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise StateDecodeError(f"device stream truncated at byte {len(self._data)}")
        chunk = bytes(self._data[self._offset : end])
        self._offset = end
        return chunk

    def array(self, shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
        count = math.prod(shape)
        return np.frombuffer(self.take(count * 8), dtype="<f8").reshape(shape).astype(np.float64)

    @property
    def remaining(self) -> int:
        return len(self._data) - self._offset


# --- processing ----------------------------------------------------------------------------


def validate_packet(packet: RawPacket) -> None:
    """Raise :class:`PreprocessingError` for a packet the stream cannot take."""
    rate = packet.sample_rate_hz
    if not (math.isfinite(rate) and MIN_RATE_HZ <= rate <= MAX_RATE_HZ):
        raise PreprocessingError(
            f"sample rate {rate} Hz is outside [{MIN_RATE_HZ}, {MAX_RATE_HZ}] Hz"
        )
    if packet.seq < 0:
        raise PreprocessingError(f"negative sequence number {packet.seq}")
    if not math.isfinite(packet.first_sample_time):
        raise PreprocessingError("first_sample_time is not finite")
    if packet.samples.ndim != 2 or packet.samples.shape[1] != NUM_INPUT_CHANNELS:
        raise PreprocessingError(f"samples must be (n, 6), got {packet.samples.shape}")
    if not np.isfinite(packet.samples).all():
        raise PreprocessingError("samples contain NaN or infinite values")


@dataclass(frozen=True)
class BatchResult:
    """What one batch did."""

    #: New state of every device the batch touched (rejected-only devices excluded).
    streams: dict[str, DeviceStream]
    #: Windows to produce, in order per device.
    windows: list[WindowMessage]
    events: list[StreamEvent]
    #: ``(index into the batch, error)`` of packets rejected before any state changed.
    rejected: list[tuple[int, PreprocessingError]]
    #: Raw samples fed to the filters, and packets among them that were resampled.
    samples: int
    resampled_packets: int

    def count(self, kind: EventKind) -> int:
        return sum(1 for e in self.events if e.kind == kind)

    @classmethod
    def merge(cls, parts: Sequence[BatchResult]) -> BatchResult:
        """Consecutive results as one (later device states win)."""
        return cls(
            streams={d: s for part in parts for d, s in part.streams.items()},
            windows=[w for part in parts for w in part.windows],
            events=[e for part in parts for e in part.events],
            rejected=[r for part in parts for r in part.rejected],
            samples=sum(part.samples for part in parts),
            resampled_packets=sum(part.resampled_packets for part in parts),
        )


@dataclass
class _Segment:
    """Consecutive 50 Hz samples of one device between two resets."""

    #: Start from a fresh DSP state at timeline index ``origin_index``.
    fresh: bool
    origin_index: int
    #: Device time of timeline index 0 for this segment's windows.
    origin_time: float
    chunks: list[npt.NDArray[np.float64]] = field(default_factory=list)
    #: ``received_at`` of the packet behind each chunk.
    received: list[float] = field(default_factory=list)


class _Planner:
    """Sequencing of one device's packets within a batch (everything except the DSP)."""

    def __init__(self, device_id: str, stream: DeviceStream, config: StreamConfig) -> None:
        self.device_id = device_id
        self.config = config
        self.stream = stream
        self.pending = list(stream.pending)
        self.counters = stream.counters._asdict()
        self.events: list[StreamEvent] = []
        self.segments = [
            _Segment(
                fresh=False, origin_index=stream.dsp_origin_index, origin_time=stream.origin_time
            )
        ]
        self.samples = 0
        self.resampled = 0

    def _update(self, **changes: object) -> None:
        self.stream = replace(self.stream, **changes)  # type: ignore[arg-type]

    def _event(self, kind: EventKind, seq: int, detail: str = "") -> None:
        self.events.append(StreamEvent(kind, self.device_id, seq, detail))

    def offer(self, packet: RawPacket) -> None:
        # A device that has not started yet expects seq 0 (``last_seq`` is -1): its first
        # packet, if not seq 0, waits in the reorder buffer like any packet ahead of a missing
        # one, so lower seqs still arriving go first. Devices number from 0 (ingest accepts
        # any seq >= 0; the demo and the simulator start at 0); one that starts higher is
        # started by the buffer overflowing, reorder_max_packets packets later: a delay,
        # not a gap (nothing is reset, no data dropped).
        s = self.stream
        buffered = any(p.seq == packet.seq for p in self.pending)
        if buffered or packet.seq <= s.last_seq:
            if not buffered and packet.first_sample_time > s.last_sample_time:
                # Newer samples under an old seq: the device restarted its numbering.
                while self.pending:
                    self._give_up()
                self._feed(packet, EventKind.SEQ_RESTART, f"seq {s.last_seq} → {packet.seq}")
            else:
                self.counters["duplicates"] += 1
                self._event(EventKind.DUPLICATE, packet.seq)
            return
        if packet.seq == s.last_seq + 1:
            self._feed(packet)
            self._drain()
            return
        self.pending.append(packet)
        self.pending.sort(key=lambda p: p.seq)
        self.counters["reordered"] += 1
        self._event(EventKind.REORDERED, packet.seq, f"expected seq {s.last_seq + 1}")
        while len(self.pending) > self.config.reorder_max_packets:
            self._give_up()

    def _drain(self) -> None:
        while self.pending and self.pending[0].seq == self.stream.last_seq + 1:
            self._feed(self.pending.pop(0))

    def _give_up(self) -> None:
        packet = self.pending.pop(0)
        missing = packet.seq - self.stream.last_seq - 1
        self._feed(packet, EventKind.GAP, f"{missing} packet(s) missing before seq {packet.seq}")
        self._drain()

    def _feed(self, packet: RawPacket, reset: EventKind | None = None, detail: str = "") -> None:
        s = self.stream
        rate = packet.sample_rate_hz
        if not s.started:
            # The first packet starts the timeline: index 0 at its first sample.
            self._update(started=True, origin_time=packet.first_sample_time, rate_hz=rate)
            self.segments[-1].origin_time = packet.first_sample_time
        else:
            jump = packet.first_sample_time - (s.last_sample_time + 1.0 / s.rate_hz)
            if reset is None and not math.isclose(rate, s.rate_hz, rel_tol=1e-9):
                reset, detail = EventKind.RATE_CHANGE, f"{s.rate_hz:g} Hz → {rate:g} Hz"
            elif reset is None and abs(jump) > self.config.gap_threshold_s:
                reset, detail = EventKind.GAP, f"time jump of {jump:.3f} s"
            if reset is not None:
                self._reset(packet, reset, detail)
        n = packet.num_samples
        if is_target_rate(rate):
            chunk = packet.samples
        else:
            resampler = self.stream.resampler or ResamplerState.fresh(rate)
            resampler, chunk = resample(resampler, packet.samples)
            self._update(resampler=resampler)
            self.resampled += 1
            self.counters["resampled_packets"] += 1
        segment = self.segments[-1]
        segment.chunks.append(chunk)
        segment.received.append(packet.received_at)
        self.samples += n
        self.counters["packets"] += 1
        self.counters["samples"] += n
        self._update(
            next_index=self.stream.next_index + chunk.shape[0],
            last_seq=packet.seq,
            last_packet_time=packet.first_sample_time,
            last_sample_time=(
                packet.first_sample_time + (n - 1) / rate if n else self.stream.last_sample_time
            ),
        )

    def _reset(self, packet: RawPacket, kind: EventKind, detail: str) -> None:
        s = self.stream
        self._event(kind, packet.seq, detail)
        self.counters["resets"] += 1
        if kind == EventKind.GAP:
            self.counters["gaps"] += 1
        # Continue at the index where the packet's time falls on the device's 50 Hz grid;
        # never move back (ids are never reused): re-anchor the origin instead.
        target = round((packet.first_sample_time - s.origin_time) * TARGET_RATE_HZ)
        index = max(s.next_index, target)
        origin = (
            s.origin_time
            if target >= s.next_index
            else packet.first_sample_time - index / TARGET_RATE_HZ
        )
        self._update(
            origin_time=origin,
            next_index=index,
            dsp_origin_index=index,
            rate_hz=packet.sample_rate_hz,
            resampler=None,
        )
        self.segments.append(_Segment(fresh=True, origin_index=index, origin_time=origin))


class StreamProcessor:
    """Advances device streams by packets. Stateless: all memory is in the streams."""

    def __init__(self, config: StreamConfig | None = None) -> None:
        self.config = config or StreamConfig()
        self.preprocessor = StreamingPreprocessor(self.config.preprocessing)

    def new_stream(self) -> DeviceStream:
        return DeviceStream.fresh(self.config.preprocessing)

    def process(
        self, stream: DeviceStream | None, packet: RawPacket, now: float
    ) -> tuple[DeviceStream, BatchResult]:
        """One packet of one device (convenience over :meth:`process_batch`)."""
        result = self.process_batch(
            {packet.device_id: stream} if stream is not None else {}, [packet], now
        )
        if result.rejected:
            raise result.rejected[0][1]
        return result.streams[packet.device_id], result

    def process_batch(
        self, streams: Mapping[str, DeviceStream], packets: Sequence[RawPacket], now: float
    ) -> BatchResult:
        """Advance every device of ``packets`` (in arrival order per device).

        ``streams`` holds the current state of the devices seen before (others start
        fresh). ``now`` (Unix seconds) stamps the windows' ``emitted_at``. Invalid packets
        are reported in ``rejected`` and change nothing.
        """
        planners: dict[str, _Planner] = {}
        rejected: list[tuple[int, PreprocessingError]] = []
        for i, packet in enumerate(packets):
            try:
                validate_packet(packet)
            except PreprocessingError as exc:
                rejected.append((i, exc))
                continue
            planner = planners.get(packet.device_id)
            if planner is None:
                stream = streams.get(packet.device_id) or self.new_stream()
                planner = planners[packet.device_id] = _Planner(
                    packet.device_id, stream, self.config
                )
            planner.offer(packet)
        windows: dict[str, list[WindowMessage]] = {d: [] for d in planners}
        dsp = {d: p.stream.dsp for d, p in planners.items()}
        rounds = max((len(p.segments) for p in planners.values()), default=0)
        for r in range(rounds):
            members = [d for d, p in planners.items() if len(p.segments) > r]
            segments = [planners[d].segments[r] for d in members]
            states = [
                self.preprocessor.new_state() if seg.fresh else dsp[d]
                for d, seg in zip(members, segments, strict=True)
            ]
            chunks = [
                np.concatenate(seg.chunks) if seg.chunks else np.zeros((0, NUM_INPUT_CHANNELS))
                for seg in segments
            ]
            results = self.preprocessor.process_many(states, chunks)
            # The motion features of the whole round's windows at once (a live batch holds
            # about one window per device), handed out in order below.
            found_data = [found.data for _, found in results if len(found)]
            features = iter(motion_features_many(np.concatenate(found_data)) if found_data else ())
            for d, seg, before, (after, found) in zip(
                members, segments, states, results, strict=True
            ):
                dsp[d] = after
                own = [next(features) for _ in range(len(found))]
                windows[d].extend(self._messages(d, seg, before, found, own, now))
        new_streams: dict[str, DeviceStream] = {}
        events: list[StreamEvent] = []
        for d, planner in planners.items():
            counters = planner.counters
            counters["windows"] += len(windows[d])
            new_streams[d] = replace(
                planner.stream,
                dsp=dsp[d],
                pending=tuple(planner.pending),
                counters=StreamCounters(**counters),
            )
            events.extend(planner.events)
        return BatchResult(
            streams=new_streams,
            windows=[w for d in planners for w in windows[d]],
            events=events,
            rejected=rejected,
            samples=sum(p.samples for p in planners.values()),
            resampled_packets=sum(p.resampled for p in planners.values()),
        )

    def _messages(
        self,
        device_id: str,
        segment: _Segment,
        before: DeviceState,
        found: Windows,
        features: Sequence[MotionFeatures],
        now: float,
    ) -> list[WindowMessage]:
        if not len(found):
            return []
        cfg = self.config.preprocessing
        origin_time = segment.origin_time
        # Which packet supplied each window's last sample: its received_at is ingested_at.
        ends = np.cumsum([c.shape[0] for c in segment.chunks])
        last = found.start_indices + cfg.window_size - 1 - before.samples_seen
        packet_of = np.searchsorted(ends, last, side="right")
        messages = []
        for k in range(len(found)):
            start_index = segment.origin_index + int(found.start_indices[k])
            start_time = origin_time + start_index / cfg.sample_rate_hz
            data = found.data[k]
            messages.append(
                WindowMessage(
                    device_id=device_id,
                    start_index=start_index,
                    start_time=start_time,
                    end_time=start_time + cfg.window_duration_s,
                    fingerprint=cfg.fingerprint,
                    ingested_at=segment.received[int(packet_of[k])],
                    emitted_at=now,
                    features=features[k],
                    data=data,
                )
            )
        return messages
