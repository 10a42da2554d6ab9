"""Request and response documents of the ingest API, and the OpenAPI 3.1 document built from
them. Pure (pydantic only).

The request model uses the same constants as :mod:`services.ingest.validation`, and its
limits come from the running settings, so the published schema says what the service
enforces. Validation itself is hand-written for precise, row-level error messages.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from services.ingest.validation import (
    DEVICE_ID_PATTERN,
    EARLIEST_SAMPLE_TIME,
    MAX_SEQ,
    PacketLimits,
    Reason,
)
from shared.messages.raw import SAMPLE_WIDTH

PROBLEM_TYPE_PREFIX = "urn:harstream:ingest:problem:"

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


class PacketAccepted(BaseModel):
    """The packet is in Kafka (acknowledged by all in-sync replicas)."""

    device_id: str
    seq: int
    samples: int = Field(description="Number of samples accepted.")


class ProblemError(BaseModel):
    field: str = Field(
        description="JSON path of the offending value: 'seq', 'samples[3]', 'samples[3][4]', '$'."
    )
    message: str
    reason: str = Field(description="Machine-readable reason code.")


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
    415: "Content-Type is not application/json, or an unsupported Content-Encoding.",
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


def openapi_document(limits: PacketLimits, max_body_bytes: int, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the ingest API, with the running limits filled in."""
    _, definitions = models_json_schema(
        [
            (Packet, "validation"),
            (PacketAccepted, "serialization"),
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

    packet_responses: dict[str, Any] = {
        "202": {
            "description": "Accepted: Kafka acknowledged the record (acks=all).",
            "content": {"application/json": {"schema": _ref("PacketAccepted")}},
        }
    }
    for status, description in PACKET_PROBLEMS.items():
        packet_responses[str(status)] = _problem(description, retry_after=status in (429, 503))

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "harstream ingest",
            "version": version,
            "description": (
                "Wearables post IMU packets (acc xyz in g, gyro xyz in rad/s); each accepted "
                "packet is one record on the raw Kafka topic, keyed by device id. "
                f"Bodies up to {max_body_bytes} bytes, optionally gzip-compressed "
                "(Content-Encoding: gzip)."
            ),
        },
        "paths": {
            "/v1/packets": {
                "post": {
                    "operationId": "postPacket",
                    "summary": "Submit a packet of IMU samples",
                    "security": [{"deviceToken": []}],
                    "parameters": [
                        {
                            "name": "Content-Encoding",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "enum": ["identity", "gzip"]},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("Packet")}},
                    },
                    "responses": packet_responses,
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
                }
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
            rows.append(
                f"<h2><code>{method.upper()} {escape(path)}</code></h2>"
                f"<p>{escape(operation['summary'])}</p><ul>{codes}</ul>"
            )
    packet = document["components"]["schemas"]["Packet"]["properties"]
    fields = "".join(
        f"<li><code>{escape(name)}</code>: {escape(spec.get('description', ''))}</li>"
        for name, spec in packet.items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>harstream ingest API</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "code{background:#eee;padding:0 .2em}</style></head><body>"
        f"<h1>{escape(document['info']['title'])} {escape(document['info']['version'])}</h1>"
        f"<p>{escape(document['info']['description'])}</p>"
        "<p>Machine-readable spec: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1). "
        "Authenticate with <code>Authorization: Bearer &lt;device token&gt;</code>.</p>"
        f"<h2>Packet fields</h2><ul>{fields}</ul>{''.join(rows)}</body></html>"
    )
