"""Request and response documents of the ingest API, and the OpenAPI 3.1 document built from
them. Pure (pydantic only).

Both POST endpoints take JSON or MessagePack (:mod:`services.ingest.body`); the MessagePack
documents are the JSON ones, except that a packet's ``samples`` may also be one ``bin`` of
packed little-endian float32 (the ``*Msgpack`` schemas).

The request model uses the same constants as :mod:`services.ingest.validation`, and its
limits come from the running settings, so the published schema says what the service
enforces. Validation itself is hand-written for precise, row-level error messages.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from services.ingest.body import MSGPACK_TYPES
from services.ingest.validation import (
    DEVICE_ID_PATTERN,
    EARLIEST_SAMPLE_TIME,
    MAX_SEQ,
    FieldError,
    PacketLimits,
    Reason,
)
from shared.messages.raw import SAMPLE_WIDTH

PROBLEM_TYPE_PREFIX = "urn:harstream:ingest:problem:"

TITLES = {
    400: "Malformed request",
    401: "Unauthenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    409: "Duplicate packet",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Invalid packet",
    429: "Rate limit exceeded",
    431: "Request header fields too large",
    500: "Internal server error",
    503: "Service unavailable",
    504: "Gateway timeout",
}


def problem_fields(
    status: int, reason: str, detail: str, errors: tuple[FieldError, ...] = ()
) -> dict[str, Any]:
    """The members of an RFC 9457 problem document (:class:`Problem`): a whole answer's
    body, or one refused packet of a batch answer."""
    return {
        "type": PROBLEM_TYPE_PREFIX + reason,
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "reason": reason,
        "errors": [{"field": e.field, "message": e.message, "reason": e.reason} for e in errors],
    }


Sample = Annotated[
    list[float],
    Field(
        min_length=SAMPLE_WIDTH,
        max_length=SAMPLE_WIDTH,
        description="acc_x, acc_y, acc_z (g), gyro_x, gyro_y, gyro_z (rad/s); finite.",
    ),
]


class Packet(BaseModel):
    """A packet of consecutive IMU samples from one device."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "device_id": "watch-0042",
                    "seq": 17,
                    "first_sample_time": 1767225600.0,
                    "sample_rate_hz": 50.0,
                    "samples": [[0.01, -0.02, 0.99, 0.001, 0.0, -0.003]],
                }
            ]
        },
    )

    device_id: str = Field(
        pattern=DEVICE_ID_PATTERN,
        description="Registered device id; must be the device the bearer token belongs to.",
    )
    seq: int = Field(
        ge=0,
        le=MAX_SEQ,
        description=(
            "Per-device packet sequence number, +1 per packet. Retrying the same seq is safe: "
            "downstream deduplicates."
        ),
    )
    first_sample_time: float = Field(
        ge=EARLIEST_SAMPLE_TIME,
        description=(
            "Device-clock Unix time of the first sample (s); not before 2000-01-01 and not "
            "more than max_future_skew_s ahead of the server. A packet starting before an "
            "already accepted packet with a lower seq (a device clock set back) is accepted "
            "and counted as a clock correction: downstream restarts the device's filters and "
            "re-anchors its time there, nothing is lost."
        ),
    )
    sample_rate_hz: float = Field(description="Sampling rate (Hz).")
    samples: list[Sample] = Field(min_length=1, description="Rows of 6 values, oldest first.")


class ProblemError(BaseModel):
    field: str = Field(
        description="JSON path of the offending value: 'seq', 'samples[3]', 'samples[3][4]', '$'."
    )
    message: str
    reason: str = Field(description="Machine-readable reason code.")


DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]


class PacketBatch(BaseModel):
    """The packets of several devices, forwarded by a gateway; each packet is authenticated
    by the token that tokens gives for its device_id, or, when the request carries a
    gateway's token (Authorization: Bearer), by the gateway's binding to its device."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "tokens": {"watch-0042": "<watch-0042's device token>"},
                    "packets": [
                        {
                            "device_id": "watch-0042",
                            "seq": 17,
                            "first_sample_time": 1767225600.0,
                            "sample_rate_hz": 50.0,
                            "samples": [[0.01, -0.02, 0.99, 0.001, 0.0, -0.003]],
                        }
                    ],
                }
            ]
        },
    )

    tokens: dict[DeviceId, str] | None = Field(
        None,
        description=(
            "Device id → that device's token (from `harstream devices add`), once per device "
            "whatever the number of its packets. A packet whose device has no token here, or "
            "one that does not authenticate it, is refused (401) on its own. Required unless "
            "the request carries a gateway's token (`harstream gateways add`) in its "
            "Authorization header; must be absent when it does."
        ),
    )
    packets: list[Packet] = Field(
        min_length=1,
        description=(
            "Packets of any of the devices, each exactly as POST /v1/packets takes it; a "
            "device's packets are written in this order. A second packet with the same "
            "device_id and seq is refused (409 duplicate) and not written twice."
        ),
    )


class BatchResult(BaseModel):
    """One packet's answer: accepted (status 202, samples), or the members of its refusal's
    problem document (type, title, status, detail, reason, errors)."""

    index: int = Field(description="The packet's position in the request's packets.")
    device_id: str | None = Field(description="The packet's device_id, if it was one.")
    seq: int | None = Field(description="The packet's seq, if it was an integer.")
    status: int = Field(
        description=(
            "202 accepted (Kafka acknowledged it); otherwise the status the packet alone "
            "would have got: 400, 401, 403 (also: its device is not bound to the "
            "authenticating gateway), 409 (duplicate in this batch), 422, 429, 500, 503 (not "
            "acknowledged in time: send it again, same seq)."
        )
    )
    samples: int | None = Field(None, description="Samples accepted (202 only).")
    type: str | None = Field(None, description=f"'{PROBLEM_TYPE_PREFIX}<reason>' (refused only).")
    title: str | None = None
    detail: str | None = None
    reason: str | None = Field(None, description="Machine-readable reason (refused only).")
    errors: list[ProblemError] | None = None
    retry_after_s: int | None = Field(
        None, description="Seconds to wait before sending this packet again (429, 503)."
    )


class BatchAnswer(BaseModel):
    """The answer to a batch, one result per packet in request order."""

    accepted: int
    refused: int
    results: list[BatchResult]


class PacketAccepted(BaseModel):
    """The packet is in Kafka (acknowledged by all in-sync replicas)."""

    device_id: str
    seq: int
    samples: int = Field(description="Number of samples accepted.")


class Problem(BaseModel):
    """RFC 9457 problem details (``application/problem+json``)."""

    type: str = Field(description=f"'{PROBLEM_TYPE_PREFIX}<reason>'")
    title: str
    status: int
    detail: str
    reason: str = Field(
        description="One of: "
        + ", ".join(r.value for r in Reason)
        + "; http_error for an unknown path (404) or method (405)."
    )
    errors: list[ProblemError] = Field(default_factory=list)


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    broker: str = Field(description="'ok' or why the broker is not usable.")
    registry: str = Field(description="'ok' or why the registry is not usable.")


#: Every answer of POST /v1/packets other than 202, and when it happens.
PACKET_PROBLEMS: dict[int, str] = {
    400: (
        "Malformed JSON, not UTF-8, not an object, missing fields or wrong JSON types, bad "
        "gzip (corrupt, truncated, or bytes after the last member; several members are "
        "fine), or an HTTP request the server cannot parse (bad Content-Length, header "
        "line over 8 KB, broken chunked encoding, unknown method) (reason malformed)."
    ),
    401: (
        "Missing or unknown bearer token, or a token that does not belong to the device named "
        "in the packet (reason unauthenticated; one body for all invalid credentials)."
    ),
    403: "The device is revoked (reason forbidden).",
    413: "Body (compressed or decompressed) larger than max_body_bytes (reason too_large).",
    415: (
        "Content-Type is neither JSON (application/json, application/*+json) nor MessagePack "
        "(application/msgpack, application/vnd.msgpack, application/x-msgpack), or an "
        "unsupported Content-Encoding (reason unsupported_media_type)."
    ),
    422: (
        "Well-formed but invalid: rows not of 6 values, no samples or more than max_samples "
        "(invalid_shape), non-finite values (non_finite), |acc| or |gyro| above the physical "
        "limits (out_of_range), sample rate outside the accepted range (bad_rate), "
        "first_sample_time before 2000 or too far in the future (bad_timestamp), bad device "
        "id (including lone surrogates) or seq (invalid_field)."
    ),
    429: (
        "The device exceeded its samples/s rate limit (reason rate_limited), or its address "
        "failed authentication too often (reason auth_rate_limited); retry after "
        "Retry-After seconds."
    ),
    500: "Unexpected server error (logged); retry later.",
    503: (
        "Kafka did not acknowledge within produce_timeout_s or cannot be reached, or the "
        "registry is unavailable; retry the same packet (same seq) after Retry-After "
        "seconds. At-least-once: a packet answered 503 because Kafka did not acknowledge it "
        "in time may still be written to the raw topic later, so the same packet can appear "
        "twice; the preprocess worker drops the duplicate by (device_id, seq), so retrying "
        "is always safe."
    ),
}

#: Every answer of POST /v1/packets:batch but 202 and 207, and when it happens: the
#: refusals of the whole request. Each packet's own refusals are in the 207's results.
BATCH_PROBLEMS: dict[int, str] = {
    400: (
        "The body is not JSON or MessagePack of its Content-Type, not an object, or its "
        "tokens or packets are missing or of the wrong type, or tokens came with a gateway "
        "token; bad gzip; an HTTP request the server cannot parse (reason malformed)."
    ),
    401: (
        "An Authorization header that is malformed or holds no gateway's token (reason "
        "unauthenticated). Without the header, each packet is authenticated on its own."
    ),
    403: "The gateway whose token authenticated the request is revoked (reason forbidden).",
    413: "Body (compressed or decompressed) larger than max_body_bytes (reason too_large).",
    415: PACKET_PROBLEMS[415],
    422: "No packets, or more than max_batch_packets (reason invalid_shape).",
    429: (
        "The request's address failed authentication too often (reason auth_rate_limited; "
        "answered when a new connection arrives, before the request is read, or to a "
        "gateway token that fails); retry after Retry-After seconds."
    ),
    500: "Unexpected server error (logged); retry later.",
    503: (
        "Too many connections (reason over_capacity), or the registry did not answer a "
        "gateway token's lookup (reason registry_unavailable); retry after Retry-After seconds."
    ),
}

_RETRY_AFTER = {
    "description": "Seconds to wait before retrying.",
    "schema": {"type": "integer", "minimum": 1},
}


def _problem(description: str, retry_after: bool = False) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }
    if retry_after:
        answer["headers"] = {"Retry-After": _RETRY_AFTER}
    return answer


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def openapi_document(
    limits: PacketLimits, max_body_bytes: int, version: str, max_batch_packets: int = 1000
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the ingest API, with the running limits filled in."""
    _, definitions = models_json_schema(
        [
            (Packet, "validation"),
            (PacketBatch, "validation"),
            (PacketAccepted, "serialization"),
            (BatchAnswer, "serialization"),
            (Problem, "serialization"),
            (Health, "serialization"),
            (Readiness, "serialization"),
        ],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = definitions["$defs"]
    packet = schemas["Packet"]
    packet["properties"]["samples"]["maxItems"] = limits.max_samples
    packet["properties"]["sample_rate_hz"]["minimum"] = limits.min_sample_rate_hz
    packet["properties"]["sample_rate_hz"]["maximum"] = limits.max_sample_rate_hz
    sample = packet["properties"]["samples"]["items"]
    sample["prefixItems"] = [
        {"type": "number", "minimum": -lim, "maximum": lim, "title": name}
        for name, lim in (
            ("acc_x", limits.acc_limit_g),
            ("acc_y", limits.acc_limit_g),
            ("acc_z", limits.acc_limit_g),
            ("gyro_x", limits.gyro_limit_rad_s),
            ("gyro_y", limits.gyro_limit_rad_s),
            ("gyro_z", limits.gyro_limit_rad_s),
        )
    ]

    # MessagePack: the same documents, and samples may be packed float32 (one bin).
    packed_samples = {
        "type": "string",
        "contentMediaType": "application/octet-stream",
        "description": (
            "MessagePack bin: the rows as little-endian float32, 6 per row (24 bytes a row), "
            "oldest first; 1 to max_samples rows."
        ),
    }
    packet_msgpack = copy.deepcopy(packet)
    packet_msgpack["title"] = "PacketMsgpack"
    packet_msgpack["properties"]["samples"] = {
        "anyOf": [packet["properties"]["samples"], packed_samples],
        "description": packet["properties"]["samples"]["description"],
    }
    schemas["PacketMsgpack"] = packet_msgpack
    batch_msgpack = copy.deepcopy(schemas["PacketBatch"])
    batch_msgpack["title"] = "PacketBatchMsgpack"
    batch_msgpack["properties"]["packets"]["items"] = _ref("PacketMsgpack")
    schemas["PacketBatchMsgpack"] = batch_msgpack
    schemas["PacketBatch"]["properties"]["packets"]["maxItems"] = max_batch_packets
    batch_msgpack["properties"]["packets"]["maxItems"] = max_batch_packets
    msgpack_content = {media: "PacketMsgpack" for media in MSGPACK_TYPES}
    batch_msgpack_content = {media: "PacketBatchMsgpack" for media in MSGPACK_TYPES}

    packet_responses: dict[str, Any] = {
        "202": {
            "description": "Accepted: Kafka acknowledged the record (acks=all).",
            "content": {"application/json": {"schema": _ref("PacketAccepted")}},
        }
    }
    for status, description in PACKET_PROBLEMS.items():
        packet_responses[str(status)] = _problem(description, retry_after=status in (429, 503))
    batch_responses: dict[str, Any] = {
        "202": {
            "description": "Every packet accepted: Kafka acknowledged each one (acks=all).",
            "content": {"application/json": {"schema": _ref("BatchAnswer")}},
        },
        "207": {
            "description": (
                "Some packets refused (or all): one result per packet, each accepted one "
                "acknowledged by Kafka. Retry-After: the longest of the refused packets' "
                "retry_after_s, if any has one."
            ),
            "content": {"application/json": {"schema": _ref("BatchAnswer")}},
            "headers": {"Retry-After": _RETRY_AFTER},
        },
    }
    for status, description in BATCH_PROBLEMS.items():
        batch_responses[str(status)] = _problem(description, retry_after=status in (429, 503))
    encoding_header = {
        "name": "Content-Encoding",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "enum": ["identity", "gzip"]},
    }

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "harstream ingest",
            "version": version,
            "description": (
                "Wearables post IMU packets (acc xyz in g, gyro xyz in rad/s); each accepted "
                "packet is one record on the raw Kafka topic, keyed by device id. Gateways "
                "forward the packets of many devices at once (POST /v1/packets:batch), each "
                "authenticated by its own device's token or by the gateway's own credential, "
                "bound to a set of devices in the registry. Bodies are JSON or MessagePack "
                "(a packet's samples then optionally packed float32), up to "
                f"{max_body_bytes} bytes, optionally gzip-compressed (Content-Encoding: gzip)."
            ),
        },
        "paths": {
            "/v1/packets": {
                "post": {
                    "operationId": "postPacket",
                    "summary": "Submit a packet of IMU samples",
                    "security": [{"deviceToken": []}],
                    "parameters": [encoding_header],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": _ref("Packet")},
                            **{m: {"schema": _ref(n)} for m, n in msgpack_content.items()},
                        },
                    },
                    "responses": packet_responses,
                }
            },
            "/v1/packets:batch": {
                "post": {
                    "operationId": "postPacketBatch",
                    "summary": "Submit packets of several devices (a gateway)",
                    "description": (
                        "Each packet is authenticated by the token `tokens` gives for its "
                        "device_id, or, with a gateway's token in the Authorization header "
                        "(and no `tokens`), by the gateway's binding to its device; each is "
                        "answered on its own, after Kafka acknowledged every "
                        "accepted packet: 202 when all were accepted, else 207 with a result "
                        "per packet (a problem document's members for each refused one; "
                        "resend the ones answered 429 or 503, same seq)."
                    ),
                    "security": [{}, {"gatewayToken": []}],
                    "parameters": [encoding_header],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": _ref("PacketBatch")},
                            **{m: {"schema": _ref(n)} for m, n in batch_msgpack_content.items()},
                        },
                    },
                    "responses": batch_responses,
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness: the process serves HTTP",
                    "responses": {
                        "200": {
                            "description": "Alive.",
                            "content": {"application/json": {"schema": _ref("Health")}},
                        }
                    },
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "ready",
                    "summary": "Readiness: Kafka metadata and the device registry answer",
                    "responses": {
                        str(code): {
                            "description": text,
                            "content": {"application/json": {"schema": _ref("Readiness")}},
                        }
                        for code, text in ((200, "Ready."), (503, "Not ready; the body says why."))
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1 document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/docs": {
                "get": {
                    "operationId": "docs",
                    "summary": "Human-readable API reference",
                    "responses": {
                        "200": {
                            "description": "HTML page.",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "deviceToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The device's token from `harstream devices add`.",
                },
                "gatewayToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "A gateway's token from `harstream gateways add`: it authenticates "
                        "the packets of the devices bound to the gateway."
                    ),
                },
            },
        },
    }


def docs_html(document: dict[str, Any]) -> str:
    """A small static page describing the API from its OpenAPI document (no JavaScript)."""
    from html import escape  # noqa: PLC0415

    rows = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            codes = "".join(
                f"<li><code>{escape(code)}</code> {escape(answer['description'])}</li>"
                for code, answer in operation["responses"].items()
            )
            body = operation.get("requestBody", {}).get("content", {})
            media = (
                "<p>Body: " + ", ".join(f"<code>{escape(m)}</code>" for m in body) + "</p>"
                if body
                else ""
            )
            rows.append(
                f"<h2><code>{method.upper()} {escape(path)}</code></h2>"
                f"<p>{escape(operation['summary'])}</p>"
                f"<p>{escape(operation.get('description', ''))}</p>{media}<ul>{codes}</ul>"
            )
    schemas = document["components"]["schemas"]

    def fields(name: str) -> str:
        return "".join(
            f"<li><code>{escape(field)}</code>: {escape(spec.get('description', ''))}</li>"
            for field, spec in schemas[name]["properties"].items()
        )

    packed = schemas["PacketMsgpack"]["properties"]["samples"]["anyOf"][1]["description"]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>harstream ingest API</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "code{background:#eee;padding:0 .2em}</style></head><body>"
        f"<h1>{escape(document['info']['title'])} {escape(document['info']['version'])}</h1>"
        f"<p>{escape(document['info']['description'])}</p>"
        "<p>Machine-readable spec: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1). "
        "A device authenticates with <code>Authorization: Bearer &lt;device token&gt;</code>; "
        "a gateway's batch carries each device's token in <code>tokens</code>, or the "
        "gateway's own token in the Authorization header.</p>"
        f"<h2>Packet fields</h2><ul>{fields('Packet')}</ul>"
        "<h2>Batch fields (gateways)</h2>"
        f"<ul>{fields('PacketBatch')}</ul>"
        "<h2>Body formats</h2><p>JSON (<code>application/json</code>) or MessagePack "
        "(<code>application/msgpack</code>; <code>application/vnd.msgpack</code> and "
        "<code>application/x-msgpack</code> too), the same documents. In MessagePack a "
        f"packet's <code>samples</code> may also be {escape(packed)} float32 holds every "
        "value a 16-bit IMU gives exactly: the raw record holds exactly the values sent. "
        "Answers are JSON.</p>"
        f"{''.join(rows)}</body></html>"
    )
