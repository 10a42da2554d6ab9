"""A fleet of live wearables, the pure part: when each device sends, what it sends, and the
counters a load generator keeps (no I/O; :mod:`services.demo.fleetgen` does the sending).

Each simulated device produces one packet of ``packet_size`` samples per packet period (50
samples at 50 Hz: one packet per second), the packet ingest accepts, once the packet's last
sample has been measured: as JSON, or as MessagePack with its samples packed as float32
(:func:`packet_msgpack`). Either every device posts its own packets, or gateways forward
them: a gateway posts the packets of its devices that are due, every ``gateway_interval_s``,
as one ``POST /v1/packets:batch`` (:func:`batch_body`).

Devices are spread over the period by a low-discrepancy phase (:func:`phase_of`), so any
first ``n`` devices of a ramp are evenly spread and never post on the same instant. The
samples are HAPT recordings, cut into packets once (:func:`render_chunks`) and cycled, so
the model sees real signals; a device starts at its own offset into its recording so
devices replaying the same recording differ.
"""

from __future__ import annotations

import bisect
import json
import math
import random
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgpack  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
import orjson

# The project's one backoff policy (exponential, jittered); pure, no gRPC import.
from services.common.kafka.backoff import BackoffPolicy

#: 1/golden ratio: the fractional parts of i * this are as evenly spread as a sequence gets
#: (three-distance theorem), for every prefix of it.
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0

#: Upper bounds (seconds) of the client-side latency histogram: log-spaced from 0.5 ms to
#: 60 s (a request's timeout), fine enough that quantiles interpolate within ~15 %.
LATENCY_BOUNDS: tuple[float, ...] = tuple(
    round(0.0005 * 1.25**i, 6) for i in range(int(math.log(60.0 / 0.0005, 1.25)) + 2)
)


def phase_of(index: int, period_s: float = 1.0) -> float:
    """When in the packet period device ``index`` posts (seconds in ``[0, period_s)``)."""
    return (index * _GOLDEN) % 1.0 * period_s


def due_time(start: float, phase: float, seq: int, period_s: float = 1.0) -> float:
    """When packet ``seq`` of a device started at ``start`` with ``phase`` is due (s)."""
    return start + phase + seq * period_s


def packets_due(start: float, phase: float, now: float, period_s: float = 1.0) -> int:
    """How many packets a device has been due to send by ``now`` (its offered load)."""
    first = start + phase
    if now < first:
        return 0
    return math.floor((now - first) / period_s) + 1


def render_chunks(samples: npt.NDArray[np.float64], packet_size: int) -> list[bytes]:
    """The ``samples`` JSON array of every whole packet of a recording, rendered once: a
    device's body is then a few concatenations (the generator's CPU must not be what
    limits a benchmark). Floats as ``json`` writes them (shortest round-trip repr)."""
    if packet_size < 1:
        raise ValueError("packet_size must be positive")
    whole = len(samples) // packet_size
    return [
        json.dumps(samples[i * packet_size : (i + 1) * packet_size].tolist()).encode()
        for i in range(whole)
    ]


def packet_body(
    device_id: str, seq: int, first_sample_time: float, sample_rate_hz: float, samples_json: bytes
) -> bytes:
    """The JSON packet of :class:`services.ingest.schemas.Packet`, as bytes."""
    return b"".join(
        (
            b'{"device_id":"',
            device_id.encode(),
            b'","seq":',
            str(seq).encode(),
            b',"first_sample_time":',
            repr(first_sample_time).encode(),
            b',"sample_rate_hz":',
            repr(sample_rate_hz).encode(),
            b',"samples":',
            samples_json,
            b"}",
        )
    )


#: Body formats the generator can send.
BodyKind = Literal["json", "msgpack"]
CONTENT_TYPES: dict[str, str] = {"json": "application/json", "msgpack": "application/msgpack"}


def render_packed_chunks(samples: npt.NDArray[np.float64], packet_size: int) -> list[bytes]:
    """Every whole packet of a recording as packed little-endian float32 rows (what a
    MessagePack packet carries in ``samples``), rendered once."""
    if packet_size < 1:
        raise ValueError("packet_size must be positive")
    whole = len(samples) // packet_size
    rows = np.ascontiguousarray(samples[: whole * packet_size], dtype="<f4")
    return [rows[i * packet_size : (i + 1) * packet_size].tobytes() for i in range(whole)]


def packet_msgpack(
    device_id: str, seq: int, first_sample_time: float, sample_rate_hz: float, packed: bytes
) -> bytes:
    """The MessagePack packet (samples as packed float32, see :func:`render_packed_chunks`)."""
    result: bytes = msgpack.packb(
        {
            "device_id": device_id,
            "seq": seq,
            "first_sample_time": first_sample_time,
            "sample_rate_hz": sample_rate_hz,
            "samples": packed,
        }
    )
    return result


def _msgpack_header(n: int, fix: int, code16: int) -> bytes:
    """A MessagePack map (``fix`` 0x80, ``code16`` 0xDE) or array (0x90, 0xDC) header for
    ``n`` entries; the 32-bit forms follow the 16-bit codes."""
    if n < 16:
        return bytes([fix | n])
    if n < 2**16:
        return bytes([code16]) + struct.pack(">H", n)
    return bytes([code16 + 1]) + struct.pack(">I", n)


_MSGPACK_TOKENS_KEY = msgpack.packb("tokens")
_MSGPACK_PACKETS_KEY = msgpack.packb("packets")


def batch_body(
    kind: BodyKind, tokens: Sequence[tuple[str, str]] | None, packets: Sequence[bytes]
) -> bytes:
    """The body of ``POST /v1/packets:batch`` with ``tokens`` (device id, token; None for a
    gateway authenticating with its own token, so the body has no ``tokens``) and the
    ``packets`` already rendered in format ``kind`` (:func:`packet_body`,
    :func:`packet_msgpack`): concatenated, not encoded again."""
    if tokens is None:
        if kind == "json":
            return b"".join((b'{"packets":[', b",".join(packets), b"]}"))
        return b"".join(
            (
                _msgpack_header(1, 0x80, 0xDE),
                _MSGPACK_PACKETS_KEY,
                _msgpack_header(len(packets), 0x90, 0xDC),
                *packets,
            )
        )
    if kind == "json":
        credentials = orjson.dumps(dict(tokens))
        return b"".join((b'{"tokens":', credentials, b',"packets":[', b",".join(packets), b"]}"))
    entries = b"".join(
        msgpack.packb(device_id) + msgpack.packb(token) for device_id, token in tokens
    )
    return b"".join(
        (
            _msgpack_header(2, 0x80, 0xDE),
            _MSGPACK_TOKENS_KEY,
            _msgpack_header(len(tokens), 0x80, 0xDE),
            entries,
            _MSGPACK_PACKETS_KEY,
            _msgpack_header(len(packets), 0x90, 0xDC),
            *packets,
        )
    )


@dataclass(frozen=True)
class PacketAnswer:
    """One packet's result in a batch answer."""

    index: int
    status: int
    #: ``retry_after_s`` of a 429 or 503, else None.
    retry_after: float | None


def parse_batch_answer(body: bytes, packets: int) -> list[PacketAnswer]:
    """The per-packet results of a 202/207 batch answer, checked to be one per packet in
    order; :class:`ResponseError` if the body is not such an answer."""
    try:
        results = orjson.loads(body)["results"]
        answers = [
            PacketAnswer(int(r["index"]), int(r["status"]), r.get("retry_after_s")) for r in results
        ]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise ResponseError(f"not a batch answer: {body[:120]!r}") from None
    if [a.index for a in answers] != list(range(packets)):
        raise ResponseError(f"a batch answer for {len(answers)} of {packets} packets")
    return answers


def gateway_of(index: int, gateways: int) -> int:
    """Which gateway forwards device ``index`` (devices spread round-robin)."""
    return index % gateways


def source_address(index: int) -> str:
    """The loopback address device ``index`` connects from: ``127.1.x.y``, one per device
    (62,500 before they repeat). Real wearables each have their own address; from a single
    one, ingest's per-address limits would judge a whole fleet as one client (its gate on
    concurrent uncached token lookups turned 25 of 150 devices joining at once away with
    429 here). Linux answers on all of 127.0.0.0/8."""
    return f"127.1.{(index // 250) % 250}.{index % 250 + 1}"


@dataclass(frozen=True)
class DeviceSpec:
    """One simulated device as its worker process receives it."""

    index: int
    device_id: str
    token: str

    def recording(self, recordings: int) -> int:
        """Which recording (of ``recordings``) the device replays."""
        return self.index % recordings

    def first_chunk(self, chunks: int) -> int:
        """Where in its recording the device starts (a prime stride: devices on the same
        recording are spread over it)."""
        return (self.index * 131) % max(1, chunks)


@dataclass
class FleetCounters:
    """What the generator saw, cumulative (a step's figures are differences of two).

    ``offered`` counts packets by schedule (due by now), whether or not the device could
    send them yet; ``accepted`` counts packets accepted (202 answers, or 202 results of a
    batch); every other final outcome is in ``failed`` by status (0: connection error or
    timeout after the last retry). Through gateways, ``requests`` and the latency count
    batch requests, ``statuses`` every packet's answers (a batch's results, or the whole
    batch's status for each of its packets)."""

    offered: int = 0
    #: Requests sent, retries included.
    requests: int = 0
    accepted: int = 0
    samples_accepted: int = 0
    retries: int = 0
    timeouts: int = 0
    connection_errors: int = 0
    #: Packets given up after the last retry (they are also in ``failed``).
    gave_up: int = 0
    #: Packets sent more than one packet period after they were due (the device's single
    #: connection was still busy with an earlier one).
    late: int = 0
    #: Answers by HTTP status, retried ones included (0: no answer).
    statuses: Counter[int] = field(default_factory=Counter)
    #: Final non-202 outcomes by status.
    failed: Counter[int] = field(default_factory=Counter)
    #: Request latency (send → answer) counts per :data:`LATENCY_BOUNDS` bucket (+ overflow).
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))

    def observe_latency(self, seconds: float) -> None:
        self.latency_counts[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "offered": self.offered,
            "requests": self.requests,
            "accepted": self.accepted,
            "samples_accepted": self.samples_accepted,
            "retries": self.retries,
            "timeouts": self.timeouts,
            "connection_errors": self.connection_errors,
            "gave_up": self.gave_up,
            "late": self.late,
            "statuses": dict(self.statuses),
            "failed": dict(self.failed),
            "latency_counts": list(self.latency_counts),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FleetCounters:
        return cls(
            **{k: v for k, v in data.items() if k not in ("statuses", "failed")},
            statuses=Counter({int(k): v for k, v in data["statuses"].items()}),
            failed=Counter({int(k): v for k, v in data["failed"].items()}),
        )

    @classmethod
    def total(cls, parts: Iterable[FleetCounters]) -> FleetCounters:
        out = cls()
        for part in parts:
            out = out.plus(part)
        return out

    def plus(self, other: FleetCounters) -> FleetCounters:
        return self._combine(other, 1)

    def minus(self, earlier: FleetCounters) -> FleetCounters:
        """What happened between ``earlier`` and this snapshot."""
        return self._combine(earlier, -1)

    def _combine(self, other: FleetCounters, sign: int) -> FleetCounters:
        statuses = Counter(self.statuses)
        failed = Counter(self.failed)
        for k, v in other.statuses.items():
            statuses[k] += sign * v
        for k, v in other.failed.items():
            failed[k] += sign * v
        return FleetCounters(
            offered=self.offered + sign * other.offered,
            requests=self.requests + sign * other.requests,
            accepted=self.accepted + sign * other.accepted,
            samples_accepted=self.samples_accepted + sign * other.samples_accepted,
            retries=self.retries + sign * other.retries,
            timeouts=self.timeouts + sign * other.timeouts,
            connection_errors=self.connection_errors + sign * other.connection_errors,
            gave_up=self.gave_up + sign * other.gave_up,
            late=self.late + sign * other.late,
            statuses=+statuses if sign < 0 else statuses,
            failed=+failed if sign < 0 else failed,
            latency_counts=[
                a + sign * b for a, b in zip(self.latency_counts, other.latency_counts, strict=True)
            ],
        )

    def latency_quantile(self, q: float) -> float | None:
        """Request latency quantile ``q`` (seconds), interpolated in its bucket; None if
        nothing was answered."""
        cumulative = np.cumsum(self.latency_counts[:-1]).tolist()
        return quantile_from_buckets(
            [*LATENCY_BOUNDS, math.inf], [*cumulative, sum(self.latency_counts)], q
        )


def quantile_from_buckets(
    bounds: Sequence[float], cumulative: Sequence[float], q: float
) -> float | None:
    """Quantile ``q`` of a histogram given as cumulative counts per upper bound (Prometheus
    ``le`` buckets, the last one ``+Inf``), interpolated linearly within the bucket as
    PromQL's ``histogram_quantile`` does (the first bucket from 0). A quantile in the
    ``+Inf`` bucket is reported as the highest finite bound. None if the histogram is empty.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be within [0, 1]")
    if len(bounds) != len(cumulative) or not bounds:
        raise ValueError("need one cumulative count per bound")
    if not math.isinf(bounds[-1]):
        raise ValueError("the last bucket must be +Inf")
    total = cumulative[-1]
    if total <= 0:
        return None
    rank = q * total
    for i, (bound, count) in enumerate(zip(bounds, cumulative, strict=True)):
        if count >= rank:
            if math.isinf(bound):
                return bounds[-2] if len(bounds) > 1 else math.inf
            lower = 0.0 if i == 0 else bounds[i - 1]
            below = 0.0 if i == 0 else cumulative[i - 1]
            in_bucket = count - below
            if in_bucket <= 0:
                return bound
            return lower + (bound - lower) * (rank - below) / in_bucket
    return bounds[-2]


#: Answers worth sending the same packet again for: no answer (0: timeout or connection
#: error), too many requests, and the server-side failures a restart or a broker hiccup gives.
RETRIABLE_STATUSES = frozenset({0, 429, 500, 502, 503, 504})


def retry_delay(
    status: int,
    attempt: int,
    max_retries: int,
    policy: BackoffPolicy,
    retry_after: float | None,
    rng: random.Random,
) -> float | None:
    """How long to wait before retry number ``attempt`` (1-based) of a packet answered
    ``status`` (seconds), or None to give it up: not retriable, or past ``max_retries``.

    The project's backoff (exponential with jitter), or the server's ``Retry-After`` when it
    sent one (capped by the policy's ``max_s``): bounded in count and spread in time, so an
    overloaded ingest never gets a synchronised retry storm on top of its load."""
    if status not in RETRIABLE_STATUSES or attempt > max_retries:
        return None
    if retry_after is not None:
        return min(max(retry_after, 0.0), policy.max_s)
    return policy.delay(attempt, rng)


class ResponseError(ValueError):
    """An HTTP answer the generator cannot read (not HTTP/1.x, or no Content-Length)."""


@dataclass(frozen=True)
class ResponseHead:
    status: int
    content_length: int
    #: The server closes the connection after this answer.
    close: bool
    #: ``Retry-After`` in seconds, if given as a number.
    retry_after: float | None


def parse_response_head(head: bytes) -> ResponseHead:
    """The status line and headers of an HTTP/1.1 answer (up to and including the blank
    line). Only what a device needs: status, body length, whether the connection stays."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ResponseError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ResponseError(f"malformed header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise ResponseError("chunked answers are not expected from ingest")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise ResponseError("bad Content-Length") from None
    retry_after: float | None
    try:
        retry_after = float(headers["retry-after"]) if "retry-after" in headers else None
    except ValueError:
        retry_after = None  # an HTTP date: fall back to the backoff policy
    close = headers.get("connection", "").lower() == "close" or parts[0] == "HTTP/1.0"
    return ResponseHead(int(parts[1]), length, close, retry_after)
