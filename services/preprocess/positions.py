"""Raw-topic positions kept in the device-state table, and the rewind they allow. No I/O.

Each batch writes, for every raw partition it read, the next raw offset its device states
cover (its last offset + 1) into the state table, *after* the device states, with that
partition's event as faust's current event: so into the same table partition and changelog
partition as the states of that raw partition's devices. A changelog partition is written
in order (one producer, one in-flight request per partition), so any prefix of it that holds
a position also holds every device state written before it: **a restored position implies
restored states that cover it**, whichever way the table was restored (the changelog alone
on a new disk, a local store plus the changelog records after its persisted offset, or a
recovery cut short by a wrong high-water mark).

After recovery the worker compares each restored position with the group's committed offset
of that raw partition. A committed offset *ahead* of the position means packets the restored
state never saw would be skipped (lost windows, a gap); the worker commits the position
instead, so those packets are read again. Where nothing is committed yet it commits the
position too, so that every later seek back to the committed offset has one. Reading a
packet again is safe: one the state already covers is dropped by its sequence number, any
other gives the same windows with the same ids (at-least-once, idempotent by window id).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import NamedTuple

from shared.errors import StateDecodeError

#: Keys start with a byte that UTF-8 never produces, so they cannot collide with a device
#: key (``device_id.encode()``).
_KEY_PREFIX = b"\xffraw-position\x00"
_MAGIC = b"HSRP"
_VERSION = 1
# magic, version, next offset
_VALUE = struct.Struct("<4sBq")


def position_key(topic: str, partition: int) -> bytes:
    """Table key of the position of ``topic``'s ``partition``."""
    return _KEY_PREFIX + topic.encode() + b"\x00" + str(partition).encode()


def encode_position(next_offset: int) -> bytes:
    """Table value: the first raw offset the states do *not* cover yet."""
    if next_offset < 0:
        raise ValueError(f"a raw position is an offset >= 0, got {next_offset}")
    return _VALUE.pack(_MAGIC, _VERSION, next_offset)


def decode_position(data: bytes) -> int:
    """The next offset of :func:`encode_position` bytes; :class:`StateDecodeError` if the
    bytes are not a position of this layout."""
    if len(data) != _VALUE.size:
        raise StateDecodeError(f"a raw position is {_VALUE.size} bytes, got {len(data)}")
    magic, version, next_offset = _VALUE.unpack(data)
    if magic != _MAGIC or version != _VERSION or next_offset < 0:
        raise StateDecodeError(f"not a raw position of layout {_VERSION}")
    return int(next_offset)


class Rewind(NamedTuple):
    """A raw partition whose committed offset must be set to the restored position."""

    partition: int
    #: The group's committed offset (first offset it would read); None if nothing committed.
    committed: int | None
    #: The restored position: where reading must start.
    restored: int

    @property
    def packets(self) -> int:
        """Raw messages read again (at most: some may already be deleted by retention)."""
        return 0 if self.committed is None else self.committed - self.restored


def rewinds(committed: Mapping[int, int | None], restored: Mapping[int, int]) -> list[Rewind]:
    """Partitions whose committed offset must become the restored position:

    * committed *ahead* of the position: the packets in between would be skipped;
    * *nothing* committed: faust would start at the oldest packet, but it also drops records
      it fetched at the wrong moment and repairs that only by seeking back to the committed
      offset (see ``faust_internals.fetch_only_active_partitions``): with nothing committed,
      nothing to seek back to.

    A partition without a position has no state to protect (its devices start from scratch
    or are duplicates either way)."""
    return [
        Rewind(partition, offset, restored[partition])
        for partition, offset in sorted(committed.items())
        if partition in restored and (offset is None or offset > restored[partition])
    ]
