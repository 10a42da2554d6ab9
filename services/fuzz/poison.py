"""Poison records for every topic a worker consumes. Pure: builds keys and values from real
records of the topic (templates), sends nothing.

The workers' promise (STYLE.md, "Errors"): a message they cannot decode or process goes to
the dead-letter topic with the reason, and never stops them. Every record built here breaks
that topic's contract somehow: bytes that are no frame, frames cut short or with a header
that is not UTF-8, a huge value, a missing value or key (not both: Kafka clients refuse to produce
a record without either), a valid frame under a key that is not its
device id (another device's, none, not UTF-8: the record sits on the wrong partition, where
per-device state and ordering do not hold), a frame of another topic's schema, and a frame
with non-finite numbers.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass

#: Kinds of poison, in report order.
KINDS = (
    "random_bytes",
    "empty",
    "truncated_frame",
    "corrupt_header",
    "huge_value",
    "none_value",
    "none_key",
    "other_device_key",
    "non_utf8_key",
    "other_schema",
    "non_finite",
)
#: Poison is sent in two stages, each waited for and followed by a check that every worker
#: still runs: huge values last, so a worker that cannot dead-letter them does not hide how
#: it handles the rest.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("poison", tuple(kind for kind in KINDS if kind != "huge_value")),
    ("huge", ("huge_value",)),
)
#: Size of the "huge" value: below the producer's and broker's 1 MiB record limit, but its
#: dead letter (base64 inside JSON, ~1.33x) is above it, so the worker must fall back to a
#: dead letter without the value.
HUGE_BYTES = 900 * 1024


@dataclass(frozen=True)
class PoisonRecord:
    topic: str
    kind: str
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Template:
    """A real record of a topic: its key, value, and the same value with its numbers made
    non-finite (built by the caller, who knows the schema)."""

    key: bytes
    value: bytes
    non_finite: bytes


#: Prefix of the binary frames (shared.messages.codec): magic, version, header length.
_FRAME_PREFIX = struct.Struct(">2sBI")


def _header_span(value: bytes) -> tuple[int, int]:
    """Where the JSON header of a binary frame lies (its length is in the prefix), or the
    first bytes of a JSON document: a byte changed there can only break the header, never
    turn into another valid sample value."""
    if len(value) > _FRAME_PREFIX.size and not value.startswith(b"{"):
        _, _, head_len = _FRAME_PREFIX.unpack_from(value)
        return _FRAME_PREFIX.size, min(len(value), _FRAME_PREFIX.size + head_len)
    return 0, min(len(value), 200)


def poison_for(  # noqa: PLR0911 - one return per kind
    topic: str,
    template: Template,
    other_schema: bytes,
    other_key: bytes,
    kind: str,
    rng: random.Random,
) -> PoisonRecord:
    """One poison record of ``kind`` for ``topic``."""
    key, value = template.key, template.value
    if kind == "random_bytes":
        return PoisonRecord(topic, kind, key, rng.randbytes(rng.randint(1, 4096)))
    if kind == "empty":
        return PoisonRecord(topic, kind, key, b"")
    if kind == "truncated_frame":
        return PoisonRecord(topic, kind, key, value[: rng.randint(0, len(value) - 1)])
    if kind == "corrupt_header":
        # A byte that is never UTF-8 (0xFF) somewhere in the JSON header: flipping bits
        # instead could leave valid JSON (a digit of a timestamp), i.e. no poison at all.
        start, end = _header_span(value)
        position = rng.randrange(start, end)
        return PoisonRecord(topic, kind, key, value[:position] + b"\xff" + value[position + 1 :])
    if kind == "huge_value":
        return PoisonRecord(topic, kind, key, value[:16] + rng.randbytes(HUGE_BYTES))
    if kind == "none_value":
        return PoisonRecord(topic, kind, key, None)
    if kind == "none_key":
        return PoisonRecord(topic, kind, None, rng.randbytes(64))
    if kind == "other_device_key":
        return PoisonRecord(topic, kind, other_key, value)
    if kind == "non_utf8_key":
        return PoisonRecord(topic, kind, b"\xff\xfe" + key, value)
    if kind == "other_schema":
        return PoisonRecord(topic, kind, key, other_schema)
    if kind == "non_finite":
        return PoisonRecord(topic, kind, key, template.non_finite)
    raise ValueError(f"unknown poison kind {kind}")


def poison_set(
    templates: dict[str, Template],
    other_key: bytes,
    per_kind: int,
    seed: int,
    kinds: tuple[str, ...] = KINDS,
) -> list[PoisonRecord]:
    """``per_kind`` records of each of ``kinds`` for every topic in ``templates``; a topic's
    "other schema" is the next topic's template value. Cheap kinds with no randomness
    (empty, missing values) are sent once whatever ``per_kind`` is; the huge one once per
    topic (each is 900 KB)."""
    rng = random.Random(seed)
    topics = list(templates)
    records: list[PoisonRecord] = []
    for i, topic in enumerate(topics):
        other_schema = templates[topics[(i + 1) % len(topics)]].value
        for kind in kinds:
            fixed = kind in ("empty", "none_value", "huge_value")
            for _ in range(1 if fixed else per_kind):
                records.append(
                    poison_for(topic, templates[topic], other_schema, other_key, kind, rng)
                )
    return records


def non_finite_json(document: bytes, fields: tuple[str, ...]) -> bytes:
    """``document`` (a JSON object) with ``fields`` set to NaN, as Python's json writes it."""
    body = json.loads(document)
    for name in fields:
        body[name] = float("nan")
    return json.dumps(body).encode()


@dataclass
class Delivery:
    """A produced poison record and what became of it."""

    stage: str
    record: PoisonRecord
    partition: int
    offset: int
    #: Services that dead-lettered it, with their reason.
    dead_letters: list[tuple[str, str]]


def by_topic_and_kind(deliveries: list[Delivery]) -> Iterator[tuple[str, str, int, int]]:
    """(topic, kind, produced, dead-lettered) in report order."""
    seen: dict[tuple[str, str], list[int]] = {}
    for delivery in deliveries:
        counts = seen.setdefault((delivery.record.topic, delivery.record.kind), [0, 0])
        counts[0] += 1
        counts[1] += bool(delivery.dead_letters)
    for (topic, kind), (produced, dead) in seen.items():
        yield topic, kind, produced, dead
