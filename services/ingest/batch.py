"""``POST /v1/packets:batch``, the pure part: the batch document, what each packet's answer
is, and the multi-status answer built from them. No HTTP, no Kafka.

A gateway (a phone forwarding a wearable, a care-home hub forwarding a ward) posts the
packets of several devices at once::

    {"tokens": {"watch-1": "<watch-1's device token>", "watch-2": "..."},
     "packets": [<packet>, <packet>, ...]}

Each packet is exactly the document ``POST /v1/packets`` takes, so a gateway forwards what
its devices produced unchanged; each device's token appears once per batch however many of
its packets the batch holds (a hub catching up after an outage sends dozens per device),
and no packet carries a secret. Every packet is authenticated by the token its
``device_id`` names and answered on its own: accepted (202, once Kafka acknowledged it) or
refused with a problem document (the single endpoint's statuses and reasons, plus 409
``duplicate`` for a second packet with the same device id and seq within one batch, which
is not written twice). The answer is 202 when every packet was accepted, otherwise 207 with
one result per packet, in the order of the request.

A gateway registered with a credential of its own (``harstream gateways add``) sends that
token in the ``Authorization: Bearer`` header instead, and no ``tokens``: it then holds no
device's secret, and each packet is authenticated by the gateway's binding to its device
(403 ``forbidden`` for a device not bound to it, or revoked).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from services.ingest.schemas import problem_fields
from services.ingest.validation import (
    DEVICE_ID_RE,
    MAX_ERRORS,
    FieldError,
    Invalid,
    Reason,
    describe_type,
)

#: The statuses of a batch answer: every packet accepted, or not.
ALL_ACCEPTED = 202
MULTI_STATUS = 207


@dataclass(frozen=True)
class Batch:
    """A batch document whose outer shape is right (its packets are not checked yet)."""

    #: Device id → the token presented for it, as sent (checked when a packet needs it).
    tokens: dict[Any, Any]
    packets: list[Any]


def parse_batch(document: Any, max_packets: int, gateway: bool = False) -> Batch | Invalid:
    """The batch in a parsed body, or why the whole request is refused (400 for wrong
    types, 422 for no packets or more than ``max_packets``). ``gateway``: the request
    carries a gateway's token, so the document must not carry device ``tokens``."""
    errors: list[FieldError] = []
    if not isinstance(document, dict):
        errors.append(
            FieldError(
                "$",
                f'expected an object with "tokens" and "packets", got {describe_type(document)}',
                Reason.MALFORMED,
            )
        )
        return Invalid(tuple(errors), 1)
    tokens = document.get("tokens")
    packets = document.get("packets")
    if gateway:
        if "tokens" in document:
            errors.append(
                FieldError(
                    "tokens",
                    "must not be sent with a gateway token in the Authorization header (the "
                    "gateway's binding authenticates its devices' packets)",
                    Reason.MALFORMED,
                )
            )
        tokens = {}
    elif "tokens" not in document:
        errors.append(
            FieldError(
                "tokens",
                "is required (an object: device id → device token), unless a gateway's "
                "token is sent in the Authorization header",
                Reason.MALFORMED,
            )
        )
    elif not isinstance(tokens, dict):
        errors.append(
            FieldError("tokens", "must be an object: device id → device token", Reason.MALFORMED)
        )
    if "packets" not in document:
        errors.append(FieldError("packets", "is required (an array of packets)", Reason.MALFORMED))
    elif not isinstance(packets, list):
        errors.append(FieldError("packets", "must be an array of packets", Reason.MALFORMED))
    if errors:
        return Invalid(tuple(errors), len(errors))
    assert isinstance(tokens, dict) and isinstance(packets, list)
    if not packets:
        return _invalid("packets", "must hold at least one packet", Reason.INVALID_SHAPE)
    if len(packets) > max_packets:
        return _invalid(
            "packets",
            f"holds {len(packets)} packets, at most {max_packets} are accepted per batch "
            "(send the rest in another batch)",
            Reason.INVALID_SHAPE,
        )
    return Batch(tokens, packets)


def _invalid(field: str, message: str, reason: Reason) -> Invalid:
    return Invalid((FieldError(field, message, reason),), 1)


# -- one packet's answer --------------------------------------------------------------------


@dataclass(frozen=True)
class Refused:
    """A packet of a batch that was not accepted, and why (a problem document's members)."""

    status: int
    reason: Reason
    detail: str
    errors: tuple[FieldError, ...] = ()
    #: Seconds to wait before sending the packet again (429, 503), else None.
    retry_after: int | None = None

    @classmethod
    def of(cls, invalid: Invalid) -> Refused:
        return cls(invalid.status, invalid.reason, invalid.detail, invalid.errors)


@dataclass(frozen=True)
class Accepted:
    """A packet Kafka acknowledged."""

    samples: int


@dataclass(frozen=True)
class Result:
    """The answer for the packet at ``index`` of the batch."""

    index: int
    #: The packet's ``device_id`` and ``seq`` when they were of the right type, else None.
    device_id: str | None
    seq: int | None
    outcome: Accepted | Refused


def identity(packet: Any) -> tuple[str | None, int | None]:
    """The packet's ``device_id`` (a well-formed one only) and ``seq`` (an integer only),
    for matching it to its token and to its answer."""
    if not isinstance(packet, dict):
        return None, None
    device_id = packet.get("device_id")
    seq = packet.get("seq")
    return (
        device_id if type(device_id) is str and DEVICE_ID_RE.fullmatch(device_id) else None,
        seq if type(seq) is int else None,
    )


def unidentified(packet: Any) -> Refused:
    """The answer for a packet :func:`identity` found no device id in: without one, no
    token can authenticate it, so it is refused before anything else is looked at."""
    if not isinstance(packet, dict):
        return _refused(
            400, "$", f"expected a packet object, got {describe_type(packet)}", Reason.MALFORMED
        )
    if "device_id" not in packet:
        return _refused(
            400,
            "device_id",
            "is required (a string: the device whose token in tokens authenticates the packet)",
            Reason.MALFORMED,
        )
    if type(packet["device_id"]) is not str:
        return _refused(
            400,
            "device_id",
            f"must be a string, got {describe_type(packet['device_id'])}",
            Reason.MALFORMED,
        )
    return _refused(
        422, "device_id", "must be 1–64 characters of [A-Za-z0-9._:-]", Reason.INVALID_FIELD
    )


def _refused(status: int, field: str, message: str, reason: Reason) -> Refused:
    return Refused(status, reason, f"{field}: {message}", (FieldError(field, message, reason),))


def missing_token(device_id: str) -> Refused:
    """The answer for a packet whose device has no entry in the batch's ``tokens``."""
    return _refused(
        401,
        "tokens",
        f"holds no token for device {device_id!r} (tokens maps each device id of the batch "
        "to that device's token)",
        Reason.UNAUTHENTICATED,
    )


def not_bound(device_id: str, gateway_id: str) -> Refused:
    """The answer for a packet of a device the authenticating gateway is not bound to."""
    return _refused(
        403,
        "device_id",
        f"device {device_id!r} is not bound to gateway {gateway_id!r} (`harstream gateways "
        "bind` adds it)",
        Reason.FORBIDDEN,
    )


def duplicate(device_id: str, seq: int, first: int) -> Refused:
    """The answer for a packet with the device id and seq of packet ``first`` before it."""
    return _refused(
        409,
        "seq",
        f"packet {first} of this batch has the same device_id {device_id!r} and seq {seq}: "
        "each packet of a device is sent once per batch (this copy was not written)",
        Reason.DUPLICATE,
    )


# -- the answer -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    #: The JSON body.
    body: bytes
    accepted: int
    refused: int
    #: The longest Retry-After of the refused packets (for the answer's header), or None.
    retry_after: int | None


def answer(results: Sequence[Result]) -> Answer:
    """The batch answer: 202 if every packet was accepted, else 207; the body counts them
    and holds one result per packet in request order."""
    items: list[dict[str, Any]] = []
    accepted = 0
    retry_after: int | None = None
    for result in results:
        item: dict[str, Any] = {
            "index": result.index,
            "device_id": result.device_id,
            "seq": result.seq,
        }
        outcome = result.outcome
        if isinstance(outcome, Accepted):
            accepted += 1
            item["status"] = ALL_ACCEPTED
            item["samples"] = outcome.samples
        else:
            item.update(
                problem_fields(
                    outcome.status,
                    outcome.reason.value,
                    outcome.detail,
                    outcome.errors[:MAX_ERRORS],
                )
            )
            if outcome.retry_after is not None:
                item["retry_after_s"] = outcome.retry_after
                retry_after = max(retry_after or 0, outcome.retry_after)
        items.append(item)
    refused = len(items) - accepted
    body = orjson.dumps({"accepted": accepted, "refused": refused, "results": items})
    status = ALL_ACCEPTED if refused == 0 else MULTI_STATUS
    return Answer(status, body, accepted, refused, retry_after)
