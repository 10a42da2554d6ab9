"""Sensor packets as ingest writes them to the raw topic.

A raw record is either one packet (a :class:`RawPacket` frame, keyed by its device id) or a
bundle of packets of one partition (:func:`encode_bundle`: frames of several devices whose
keys all hash to that partition, the record written there without a key). Bundles let one
Kafka record carry the packets of one linger: the producer's, the broker's and the
consumer's work per record is paid once for all of them. Readers take both forms through
:func:`split_raw`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from shared.errors import SchemaError
from shared.messages.codec import check_key, decode_frame, encode_frame, field, number

MAGIC = b"HR"
VERSION = 1
BUNDLE_MAGIC = b"HB"
BUNDLE_VERSION = 1
#: Each packet frame in a bundle's payload is preceded by its length.
_LENGTH = struct.Struct(">I")
#: Acc xyz (g), gyro xyz (rad/s), as in :data:`shared.dsp.config.INPUT_CHANNELS`.
SAMPLE_WIDTH = 6


class RawHeader(NamedTuple):
    """Who sent a raw packet and when ingest accepted it, without its samples."""

    device_id: str
    seq: int
    #: Ingest wall-clock time when the packet was accepted (Unix seconds).
    received_at: float


@dataclass(frozen=True, eq=False)
class RawPacket:
    """A batch of consecutive IMU samples from one device.

    Samples stay float64 end to end so the stream sees exactly the values the device sent.
    """

    #: Registered device id; also the Kafka key.
    device_id: str
    #: Per-device packet sequence number, increasing by 1 per packet.
    seq: int
    #: Device-clock time of the first sample (Unix seconds).
    first_sample_time: float
    #: Sampling rate of this packet (Hz).
    sample_rate_hz: float
    #: ``(n, 6)`` float64: acc xyz in g, gyro xyz in rad/s.
    samples: npt.NDArray[np.float64]
    #: Ingest wall-clock time when the packet was accepted (Unix seconds).
    received_at: float

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sample_rate_hz

    def to_bytes(self) -> bytes:
        samples = np.ascontiguousarray(self.samples, dtype="<f8")
        header = {
            "device_id": self.device_id,
            "seq": self.seq,
            "first_sample_time": self.first_sample_time,
            "sample_rate_hz": self.sample_rate_hz,
            "n": int(samples.shape[0]),
            "received_at": self.received_at,
        }
        return encode_frame(MAGIC, VERSION, header, samples.tobytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> RawPacket:
        _, header, payload = decode_frame(data, MAGIC, (VERSION,))
        n = field(header, "n", int)
        if n < 0 or len(payload) != n * SAMPLE_WIDTH * 8:
            raise SchemaError(
                f"payload of {len(payload)} bytes does not hold {n} samples of 6 float64"
            )
        samples = np.frombuffer(payload, dtype="<f8").reshape(n, SAMPLE_WIDTH).astype(np.float64)
        return cls(
            device_id=field(header, "device_id", str),
            seq=field(header, "seq", int),
            first_sample_time=number(header, "first_sample_time"),
            sample_rate_hz=number(header, "sample_rate_hz"),
            samples=samples,
            received_at=number(header, "received_at"),
        )

    @staticmethod
    def peek(data: bytes) -> RawHeader:
        """The header fields of a raw frame without decoding its samples (device liveness
        needs only who and when); :class:`SchemaError` as :meth:`from_bytes` would for them."""
        _, header, _ = decode_frame(data, MAGIC, (VERSION,))
        return RawHeader(
            device_id=field(header, "device_id", str),
            seq=field(header, "seq", int),
            received_at=number(header, "received_at"),
        )

    def equals(self, other: RawPacket) -> bool:
        return (
            self.device_id == other.device_id
            and self.seq == other.seq
            and self.first_sample_time == other.first_sample_time
            and self.sample_rate_hz == other.sample_rate_hz
            and self.received_at == other.received_at
            and np.array_equal(self.samples, other.samples)
        )


class RawRecord(NamedTuple):
    """The packet frames of one raw-topic record, not yet decoded."""

    frames: tuple[bytes, ...]
    #: The partition a bundle was built for (its readers check that it is the one it was
    #: read from); None for a single packet, which its key placed.
    partition: int | None

    @property
    def bundled(self) -> bool:
        return self.partition is not None


def encode_bundle(frames: Sequence[bytes], partition: int) -> bytes:
    """One record of ``frames`` (:meth:`RawPacket.to_bytes`), all of devices whose keys hash
    to ``partition``."""
    payload = b"".join(_LENGTH.pack(len(frame)) + frame for frame in frames)
    return encode_frame(
        BUNDLE_MAGIC,
        BUNDLE_VERSION,
        {"partition": partition, "count": len(frames)},
        payload,
    )


def split_raw(data: bytes) -> RawRecord:
    """The packet frames of a raw record, or :class:`SchemaError` if it is neither a packet
    nor a well-formed bundle (its frames are checked when each is decoded)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SchemaError(f"expected bytes, got {type(data).__name__}")
    if bytes(data[:2]) != BUNDLE_MAGIC:
        return RawRecord((data if type(data) is bytes else bytes(data),), None)
    _, header, payload = decode_frame(data, BUNDLE_MAGIC, (BUNDLE_VERSION,))
    partition = field(header, "partition", int)
    count = field(header, "count", int)
    if partition < 0:
        raise SchemaError(f"bundle partition {partition} is negative")
    frames: list[bytes] = []
    at = 0
    while at < len(payload):
        if at + _LENGTH.size > len(payload):
            raise SchemaError(f"bundle ends inside the length of frame {len(frames) + 1}")
        (length,) = _LENGTH.unpack_from(payload, at)
        at += _LENGTH.size
        if at + length > len(payload):
            raise SchemaError(f"frame {len(frames) + 1} of {length} bytes runs past the bundle")
        frames.append(bytes(payload[at : at + length]))
        at += length
    if len(frames) != count or not frames:
        raise SchemaError(f"bundle holds {len(frames)} frames, its header says {count}")
    return RawRecord(tuple(frames), partition)


def raw_packets(data: bytes) -> list[RawPacket]:
    """Every packet of one raw-topic record, decoded (a single packet or a bundle's); a
    :class:`SchemaError` if any of them is malformed. For readers that audit the topic; a
    worker that must keep a bundle's good packets decodes its frames one by one."""
    return [RawPacket.from_bytes(frame) for frame in split_raw(data).frames]


def check_placement(raw: RawRecord, key: bytes | None, partition: int, device_id: str) -> None:
    """:class:`SchemaError` unless ``device_id``'s packet in ``raw`` (read with ``key`` from
    ``partition``) is where its device's records belong: a single packet keyed by its
    device id, or a bundle without a key read from the partition it was built for. (Whether
    each device of a bundle hashes to that partition is its producer's word, as the
    partition of a keyed record is.)"""
    if raw.partition is None:
        check_key(key, device_id)
    elif key is not None:
        raise SchemaError(f"a bundle of packets carries a key ({key[:80]!r})")
    elif raw.partition != partition:
        raise SchemaError(f"a bundle built for partition {raw.partition} was read from {partition}")
