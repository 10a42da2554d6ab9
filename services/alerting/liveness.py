"""Each partition's clock of *pipeline time*: the time during which ingest could write to it
(pure: no I/O).

A device is offline when it sent nothing for ``offline_after_s`` seconds **while the pipeline
could take its data**. Wall-clock silence is not that: while the broker is paused or ingest
is down, every device looks silent, and when they come back each device's resend arrives a
little later than the others'. Ingest writes a heartbeat to every partition of the heartbeats
topic each second (:mod:`shared.messages.heartbeat`). Between two consecutive heartbeats of a
partition, at most ``max_gap_s`` counts; the rest of a longer gap is an outage and does not
count. An outage of any length so adds at most ``max_gap_s`` to a device's silence, and
devices get their whole ``offline_after_s`` to resend once the pipeline is back.

Silence is measured from the device's last traffic (ingest's acceptance time) up to the
newest heartbeat read, never beyond it: the clock proves only what heartbeats prove. (The
raw and heartbeats topics are read at their own pace, so traffic newer than the newest
heartbeat is simply "not silent yet".) Partitions that never saw a heartbeat (an ingest
without them) fall back to wall-clock silence.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Outages remembered per partition: silences that started before the oldest one kept are
#: long over (their devices went offline long ago), so older outages no longer matter.
MAX_OUTAGES = 64


class PartitionClock:
    """Pipeline time of one partition, from the heartbeats written to it."""

    def __init__(
        self,
        max_gap_s: float,
        heartbeat_at: float | None = None,
        outages: list[tuple[float, float]] | None = None,
    ) -> None:
        if max_gap_s <= 0:
            raise ValueError("max_gap_s must be positive")
        self.max_gap_s = max_gap_s
        #: Writer's wall time of the newest heartbeat (Unix seconds); None: none seen yet.
        self.heartbeat_at = heartbeat_at
        #: Gaps between consecutive heartbeats longer than ``max_gap_s``: (start, end).
        self.outages: list[tuple[float, float]] = list(outages or [])

    @property
    def running(self) -> bool:
        """Whether heartbeats were seen: silence is then measured on this clock."""
        return self.heartbeat_at is not None

    def heartbeat(self, sent_at: float) -> None:
        """A heartbeat written at ``sent_at``; older ones (another writer's, a replay) are
        already covered."""
        if self.heartbeat_at is not None:
            if sent_at <= self.heartbeat_at:
                return
            if sent_at - self.heartbeat_at > self.max_gap_s:
                self.outages.append((self.heartbeat_at, sent_at))
                del self.outages[:-MAX_OUTAGES]
        self.heartbeat_at = sent_at

    def _lost(self, until: float) -> float:
        """Seconds of outage (beyond ``max_gap_s`` per gap) before wall time ``until``."""
        lost = 0.0
        for start, end in self.outages:
            if until <= start:
                break
            lost += max(0.0, min(until, end) - start - self.max_gap_s)
        return lost

    def silence_since(self, last_wall: float) -> float | None:
        """Seconds of running pipeline from ``last_wall`` to the newest heartbeat (0 if the
        traffic is newer than it); None if no heartbeat was ever seen."""
        if self.heartbeat_at is None:
            return None
        if last_wall >= self.heartbeat_at:
            return 0.0
        span = self.heartbeat_at - last_wall
        return span - (self._lost(self.heartbeat_at) - self._lost(last_wall))

    def to_dict(self) -> dict[str, Any]:
        return {"heartbeat_at": self.heartbeat_at, "outages": [list(o) for o in self.outages]}

    @classmethod
    def from_dict(cls, body: Mapping[str, Any], max_gap_s: float) -> PartitionClock:
        """Raises ``KeyError``/``TypeError``/``ValueError`` for what is not a stored clock."""
        heartbeat_at = body["heartbeat_at"]
        if heartbeat_at is not None:
            heartbeat_at = _number(heartbeat_at)
        outages = [(_number(start), _number(end)) for start, end in body["outages"]]
        return cls(max_gap_s, heartbeat_at, outages)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)
