"""Activity segments from a device's predictions (pure: no Kafka, no database).

A prediction covers a 2.56 s window, and windows overlap by half (128 samples every 64,
:class:`shared.dsp.config.PreprocessingConfig`). So that time is counted once, each window
stands for the middle half of its span, its *slot*: ``[start + d/4, start + 3d/4)`` for a
window of duration ``d``. Consecutive windows' slots tile the timeline, and a recording's
minutes per activity are the sum of its windows' slots.

A *segment* is a run of windows of one activity and one model version whose slots follow
each other with gaps of at most ``max_gap_s`` (a missing window or two: the segment bridges
them; a longer silence, a new segment).

At-least-once input, out of order within bounds:

* Each device has a small *reorder buffer*: a window waits there until the device's newest
  window ends ``lateness_s`` after it (device time), or until the service flushes an idle
  device; windows leave it in time order.
* A window whose id is already buffered is a duplicate. A window whose slot starts before
  the last slot released (the *watermark*) was counted already (a replay after a restart,
  a redelivery) or arrives later than the buffer waits: it is not counted either way.
* The buffer, the watermark and the open segment are the device's :class:`DeviceState`,
  stored with the segments in one transaction before offsets are committed; a restarted
  worker continues from it and every replayed prediction falls on one of the two rules
  above. So a replay never counts a window twice.

Order is by device time, not by ``start_index``: preprocess never reuses a window id for
a timeline, but a device whose preprocess state was lost starts a new timeline at index 0
with later times, and must not be taken for a replay. The price: a device clock that jumps
back is not counted (stale) until it passes the watermark again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from shared.messages.predictions import Prediction

#: Share of a window's duration that is its own (the hop): windows overlap by half.
HOP_FRACTION = 0.5


class Window(NamedTuple):
    """One prediction as history keeps it."""

    window_id: str
    #: Slot start and end (Unix seconds, device clock): the middle half of the window.
    start: float
    end: float
    activity: str
    confidence: float
    model_version: int

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Window:
        return cls(
            window_id=str(data["window_id"]),
            start=float(data["start"]),
            end=float(data["end"]),
            activity=str(data["activity"]),
            confidence=float(data["confidence"]),
            model_version=int(data["model_version"]),
        )


def window_of(prediction: Prediction) -> Window:
    """The slot of ``prediction``'s window and what history keeps of it."""
    duration = prediction.end_time - prediction.start_time
    margin = duration * (1.0 - HOP_FRACTION) / 2.0
    return Window(
        window_id=prediction.window_id,
        start=prediction.start_time + margin,
        end=prediction.end_time - margin,
        activity=prediction.label,
        confidence=prediction.confidence,
        model_version=prediction.model_version,
    )


class Segment(NamedTuple):
    """A run of windows of one activity and model version."""

    device_id: str
    #: Unix seconds (device clock): the first slot's start, the last slot's end.
    start: float
    end: float
    activity: str
    model_version: int
    #: Windows counted, and the sum of their confidences (the mean is their ratio).
    windows: int
    confidence_sum: float

    @property
    def mean_confidence(self) -> float:
        return self.confidence_sum / self.windows if self.windows else 0.0

    @property
    def duration_s(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Segment:
        return cls(
            device_id=str(data["device_id"]),
            start=float(data["start"]),
            end=float(data["end"]),
            activity=str(data["activity"]),
            model_version=int(data["model_version"]),
            windows=int(data["windows"]),
            confidence_sum=float(data["confidence_sum"]),
        )


class Outcome(StrEnum):
    """What became of one prediction."""

    #: Buffered, to be counted.
    ACCEPTED = "accepted"
    #: Its window id is buffered already.
    DUPLICATE = "duplicate"
    #: Its slot starts before the watermark: counted already (a replay) or too late.
    STALE = "stale"


@dataclass(frozen=True)
class SegmentConfig:
    #: Longest gap between slots that one segment bridges (seconds).
    max_gap_s: float = 5.0
    #: How long (device time) a window waits for earlier ones that arrive after it (s).
    lateness_s: float = 5.0
    #: Most windows a device's buffer holds; past it the oldest leave early.
    max_pending: int = 512


@dataclass
class DeviceState:
    """What the builder knows of one device; stored as JSON (:meth:`to_dict`)."""

    #: The segment the next window may extend (stored too, as it grows).
    open: Segment | None = None
    #: End of the last slot released from the buffer: anything starting before is stale.
    watermark: float = float("-inf")
    #: Windows waiting for reordering, by window id.
    pending: dict[str, Window] = field(default_factory=dict)
    #: The newest window seen (by slot end): the device's current activity.
    latest: Window | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "open": None if self.open is None else self.open.to_dict(),
            # JSON has no -inf: None stands for "nothing released yet".
            "watermark": None if self.watermark == float("-inf") else self.watermark,
            "pending": [w.to_dict() for w in self.pending.values()],
            "latest": None if self.latest is None else self.latest.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceState:
        """Raises KeyError, TypeError or ValueError for a document not made by to_dict."""
        watermark = data.get("watermark")
        pending = [Window.from_dict(w) for w in data.get("pending") or ()]
        return cls(
            open=None if data.get("open") is None else Segment.from_dict(data["open"]),
            watermark=float("-inf") if watermark is None else float(watermark),
            pending={w.window_id: w for w in pending},
            latest=None if data.get("latest") is None else Window.from_dict(data["latest"]),
        )


class SegmentBuilder:
    """Segments of many devices. :meth:`observe` each prediction; :meth:`take_changes`
    returns what to store (segments created or grown, device states changed) since the
    last call."""

    def __init__(self, config: SegmentConfig | None = None) -> None:
        self.config = config or SegmentConfig()
        self._devices: dict[str, DeviceState] = {}
        self._changed_segments: dict[tuple[str, float], Segment] = {}
        self._changed_devices: set[str] = set()

    # -- state ---------------------------------------------------------------------------

    def state(self, device_id: str) -> DeviceState | None:
        return self._devices.get(device_id)

    @property
    def devices(self) -> list[str]:
        return list(self._devices)

    def restore(self, device_id: str, state: DeviceState) -> None:
        self._devices[device_id] = state

    def forget(self, device_ids: Iterable[str]) -> None:
        for device_id in device_ids:
            self._devices.pop(device_id, None)
            self._changed_devices.discard(device_id)
        gone = set(device_ids)
        self._changed_segments = {
            k: v for k, v in self._changed_segments.items() if k[0] not in gone
        }

    def take_changes(self) -> tuple[list[Segment], dict[str, dict[str, Any]]]:
        """Segments and device states (as :meth:`DeviceState.to_dict` documents, so they
        can be stored from another thread) changed since the last call, each once, and
        forget them: the caller stores them. :meth:`untake` gives them back if that failed."""
        segments = list(self._changed_segments.values())
        states = {
            d: self._devices[d].to_dict() for d in self._changed_devices if d in self._devices
        }
        self._changed_segments = {}
        self._changed_devices = set()
        return segments, states

    def untake(self, segments: Iterable[Segment], devices: Iterable[str]) -> None:
        """Mark again as changed what :meth:`take_changes` gave and could not be stored
        (a newer version of a segment, changed meanwhile, wins)."""
        for segment in segments:
            self._changed_segments.setdefault((segment.device_id, segment.start), segment)
        self._changed_devices.update(d for d in devices if d in self._devices)

    @property
    def has_changes(self) -> bool:
        return bool(self._changed_segments or self._changed_devices)

    # -- input ---------------------------------------------------------------------------

    def observe(self, device_id: str, window: Window) -> Outcome:
        state = self._devices.setdefault(device_id, DeviceState())
        if window.window_id in state.pending:
            return Outcome.DUPLICATE
        # Half a slot of tolerance: the next window's slot starts where the last ended (up
        # to float rounding), a replayed one a whole slot or more before.
        if window.start < state.watermark - (window.end - window.start) / 2:
            return Outcome.STALE
        state.pending[window.window_id] = window
        if state.latest is None or window.end > state.latest.end:
            state.latest = window
        self._changed_devices.add(device_id)
        self._release(device_id, state, state.latest.end - self.config.lateness_s)
        return Outcome.ACCEPTED

    def flush(self, device_id: str) -> None:
        """Release every buffered window of ``device_id`` (an idle device: nothing earlier
        is coming, and its last seconds should be counted now)."""
        state = self._devices.get(device_id)
        if state is not None and state.pending:
            self._release(device_id, state, float("inf"))
            self._changed_devices.add(device_id)

    def _release(self, device_id: str, state: DeviceState, until: float) -> None:
        """Count the buffered windows ending at or before ``until``, oldest first (and the
        oldest ones beyond ``max_pending``)."""
        ordered = sorted(state.pending.values(), key=lambda w: (w.start, w.window_id))
        excess = len(ordered) - self.config.max_pending
        for i, window in enumerate(ordered):
            if window.end > until and i >= excess:
                break
            del state.pending[window.window_id]
            self._count(device_id, state, window)

    def _count(self, device_id: str, state: DeviceState, window: Window) -> None:
        current = state.open
        if (
            current is not None
            and current.activity == window.activity
            and current.model_version == window.model_version
            and window.start - current.end <= self.config.max_gap_s
        ):
            grown = current._replace(
                end=max(current.end, window.end),
                windows=current.windows + 1,
                confidence_sum=current.confidence_sum + window.confidence,
            )
        else:
            # A new segment starts where the last one ended when they touch (float noise
            # of the slot arithmetic must not leave gaps or overlaps of a microsecond).
            start = window.start
            if current is not None and abs(window.start - current.end) < 1e-3:
                start = current.end
            grown = Segment(
                device_id=device_id,
                start=start,
                end=window.end,
                activity=window.activity,
                model_version=window.model_version,
                windows=1,
                confidence_sum=window.confidence,
            )
        state.open = grown
        state.watermark = max(state.watermark, window.end)
        self._changed_segments[(device_id, grown.start)] = grown
