"""What ingest remembers per device between requests: the last accepted packet (for the
time-order check) and when it was accepted (for the active-devices gauge). Pure.

This is per process: with several ingest replicas behind a load balancer each one checks
time order against the packets it accepted itself, which still catches a device clock that
jumps back; the preprocess worker reorders and deduplicates by seq in any case.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.ingest.validation import LastAccepted


@dataclass
class _Entry:
    last: LastAccepted
    accepted_at: float


class DeviceProgress:
    def __init__(self, forget_after_s: float = 24 * 3600.0, max_devices: int = 1_000_000) -> None:
        self._entries: dict[str, _Entry] = {}
        self._forget_after_s = forget_after_s
        self._max_devices = max_devices

    def __len__(self) -> int:
        return len(self._entries)

    def last(self, device_id: str) -> LastAccepted | None:
        entry = self._entries.get(device_id)
        return entry.last if entry else None

    def accepted(self, device_id: str, seq: int, first_sample_time: float, now: float) -> None:
        """Record an accepted packet; ``now`` is a monotonic clock reading (seconds)."""
        entry = self._entries.get(device_id)
        if entry is None:
            if len(self._entries) >= self._max_devices:
                self.forget_idle(now)
            self._entries[device_id] = _Entry(LastAccepted(seq, first_sample_time), now)
            return
        entry.accepted_at = now
        # Retries and reordered packets (lower seq) do not move the high-water mark.
        if seq > entry.last.seq:
            entry.last = LastAccepted(seq, first_sample_time)

    def active(self, now: float, window_s: float = 60.0) -> int:
        """Devices with an accepted packet in the last ``window_s`` seconds."""
        since = now - window_s
        return sum(1 for e in self._entries.values() if e.accepted_at >= since)

    def forget_idle(self, now: float) -> int:
        """Drop devices idle for ``forget_after_s``; returns how many."""
        since = now - self._forget_after_s
        idle = [d for d, e in self._entries.items() if e.accepted_at < since]
        for device_id in idle:
            del self._entries[device_id]
        return len(idle)
