"""TF Serving's REST API on a small threaded HTTP server.

- ``GET /v1/models/<name>[/versions/<v>|/labels/<l>]``: model status (GetModelStatus as JSON);
- ``GET /v1/models/<name>[...]/metadata``: signature defs (GetModelMetadata as JSON);
- ``POST /v1/models/<name>[...]:predict``: ``{"instances": [...]}`` (row format, answers
  ``{"predictions": [...]}``) or ``{"inputs": ...}`` (columnar, answers ``{"outputs": ...}``);
- ``GET /monitoring/prometheus/metrics``: Prometheus text format.

Errors answer ``{"error": "<message>"}`` with the HTTP status TF Serving uses for the code.

Every connection is held to :class:`~services.modelserver.limits.RestLimits`: a body over
the size limit is refused 413 from its Content-Length without being read; headers and
bodies have deadlines (a reader that trickles bytes cannot hold a thread: each ``recv``
gets only the time left, not a fresh timeout); at most ``max_connections`` threads serve at
once, one more connection is answered 503 and closed. Refusals of these limits are
``application/problem+json`` documents that also carry TF Serving's ``error`` member.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from services.modelserver.errors import Code, InvalidArgumentError, ServingError
from services.modelserver.limits import RestLimits
from services.modelserver.server import SIGNATURE_DEF_FIELD, ServingCore
from services.modelserver.validation import STRING, SignatureSpec, resolve_signature

logger = logging.getLogger(__name__)

METRICS_PATH = "/monitoring/prometheus/metrics"
MODEL_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    # Versions are int64: more digits could not be parsed (TF Serving: "Malformed request").
    r"(?:/versions/(?P<version>[0-9]{1,18})|/labels/(?P<label>[^/:]+))?"
    r"(?P<metadata>/metadata)?(?::(?P<verb>[a-z]+))?/?$"
)
HTTP_STATUS = {
    Code.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    Code.FAILED_PRECONDITION: HTTPStatus.BAD_REQUEST,
    Code.NOT_FOUND: HTTPStatus.NOT_FOUND,
    Code.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
    Code.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    Code.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
}


def proto_json(message: Message) -> dict[str, Any]:
    """A proto as TF Serving prints it: field names as in the .proto, defaults included."""
    return dict(
        json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    )


def model_spec(name: str, version: str | None, label: str | None) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name)
    if version is not None:
        spec.version.value = int(version)
    elif label is not None:
        spec.version_label = label
    return spec


def json_input(value: Any, dtype: str, name: str) -> np.ndarray:
    """A JSON value as an array of the signature's dtype (strings may be ``{"b64": ...}``)."""
    try:
        if dtype == STRING:
            array = np.asarray(value, dtype=object)
            flat = [_json_bytes(v) for v in array.reshape(-1)]
            out = np.empty(len(flat), dtype=object)
            out[:] = flat
            return out.reshape(array.shape)
        return np.asarray(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:  # OverflowError: 1e400 as digits
        raise InvalidArgumentError(f"input {name!r} is not a {dtype} tensor: {exc}") from exc


def _json_bytes(value: Any) -> bytes:
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"expected a string, got {type(value).__name__}")


def parse_predict_body(
    body: Mapping[str, Any], signature: SignatureSpec
) -> tuple[dict[str, np.ndarray], bool]:
    """Request JSON → (inputs, row_format)."""
    if ("instances" in body) == ("inputs" in body):
        raise InvalidArgumentError("JSON body must have exactly one of 'instances' or 'inputs'")
    names = list(signature.inputs)
    row = "instances" in body
    data = body["instances" if row else "inputs"]
    if row:
        if not isinstance(data, list):
            raise InvalidArgumentError("'instances' must be a list")
        if data and all(isinstance(d, dict) for d in data) and not _is_b64(data[0]):
            columns: dict[str, Any] = {k: [d.get(k) for d in data] for k in data[0]}
        elif len(names) == 1:
            columns = {names[0]: data}
        else:
            raise InvalidArgumentError(
                "'instances' must be objects: the signature has inputs " + ",".join(names)
            )
    elif isinstance(data, dict) and not _is_b64(data):
        columns = dict(data)
    elif len(names) == 1:
        columns = {names[0]: data}
    else:
        raise InvalidArgumentError(
            "'inputs' must be an object: the signature has inputs " + ",".join(names)
        )
    inputs = {
        key: json_input(
            value, signature.inputs[key].dtype if key in signature.inputs else "float32", key
        )
        for key, value in columns.items()
    }
    return inputs, row


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _json_value(array: np.ndarray) -> Any:
    return _decoded(array.tolist()) if array.dtype.kind in "OS" else array.tolist()


def _decoded(value: Any) -> Any:
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def predict_json(outputs: Mapping[str, np.ndarray], row: bool) -> dict[str, Any]:
    values = {name: _json_value(array) for name, array in outputs.items()}
    if not row:
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    rows = len(next(iter(values.values())))
    return {"predictions": [{k: v[i] for k, v in values.items()} for i in range(rows)]}


def content_length(header: str | None) -> int | None:
    """The Content-Length header's value (0 if absent), or None if it is not a plain decimal
    (``int()`` would raise on "abc" and accept "-1", "+5" or "1_0")."""
    if header is None:
        return 0
    if not re.fullmatch(r"[0-9]{1,18}", header.strip(" \t")):
        return None
    return int(header)


PROBLEM_CONTENT_TYPE = "application/problem+json"


def problem_body(status: HTTPStatus, detail: str) -> bytes:
    """An RFC 9457 problem document that TF Serving clients can read too (``error``)."""
    return json.dumps(
        {
            "type": "about:blank",
            "title": status.phrase,
            "status": int(status),
            "detail": detail,
            "error": detail,
        }
    ).encode()


def raw_problem(status: HTTPStatus, detail: str, extra: str = "") -> bytes:
    """A whole HTTP/1.1 response closing the connection, for when no handler runs."""
    body = problem_body(status, detail)
    head = (
        f"HTTP/1.1 {int(status)} {status.phrase}\r\n"
        f"Content-Type: {PROBLEM_CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n{extra}\r\n"
    )
    return head.encode("ascii") + body


OVER_CAPACITY = raw_problem(
    HTTPStatus.SERVICE_UNAVAILABLE,
    "too many open connections; retry later",
    "Retry-After: 1\r\n",
)


class _DeadlineSocketReader(io.RawIOBase):
    """The socket's read side with an overall deadline: each ``recv`` may only wait for the
    time left, so a peer sending a byte every few seconds still runs out of time (a socket
    timeout alone restarts with every byte)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self.deadline = time.monotonic() + 3600.0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("read deadline passed")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


class _LimitedServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[_Handler], limit: int) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(limit)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            # Answered from the accept loop without reading: a small write into a fresh
            # socket's buffer does not block.
            try:
                request.sendall(OVER_CAPACITY)
            except OSError:
                pass
            finally:
                self.shutdown_request(request)
            logger.debug("refused a REST connection from %s: over capacity", client_address)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class RestServer:
    """Serves the REST API and metrics from a daemon thread."""

    def __init__(
        self,
        core: ServingCore,
        registry: CollectorRegistry,
        host: str,
        port: int,
        limits: RestLimits | None = None,
    ) -> None:
        limits = limits or RestLimits()
        handler = type(
            "Handler", (_Handler,), {"core": core, "registry": registry, "limits": limits}
        )
        self._httpd = _LimitedServer((host, port), handler, limits.max_connections)
        self.port = int(self._httpd.server_address[1])
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="modelserver-rest", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    core: ServingCore
    registry: CollectorRegistry
    limits: RestLimits
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self._reader = _DeadlineSocketReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        # The wait for the next request and its headers share one deadline: an idle
        # keep-alive connection and a slowloris one end alike.
        self._reader.deadline = time.monotonic() + self.limits.header_timeout_s
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        if self.path.split("?")[0] == METRICS_PATH:
            self._send(HTTPStatus.OK, generate_latest(self.registry), CONTENT_TYPE_LATEST)
            return
        match = MODEL_PATH.match(self.path.split("?")[0])
        if match is None or match["verb"]:
            self._error(HTTPStatus.NOT_FOUND, f"Malformed request: GET {self.path}")
            return
        spec = model_spec(match["name"], match["version"], match["label"])
        try:
            if match["metadata"]:
                with self.core.observe("RestGetModelMetadata"):
                    request = get_model_metadata_pb2.GetModelMetadataRequest(
                        model_spec=spec, metadata_field=[SIGNATURE_DEF_FIELD]
                    )
                    self._json(HTTPStatus.OK, proto_json(self.core.metadata(request)))
            else:
                with self.core.observe("RestGetModelStatus"):
                    status = get_model_status_pb2.GetModelStatusRequest(model_spec=spec)
                    self._json(HTTPStatus.OK, proto_json(self.core.status(status)))
        except ServingError as exc:
            self._error(HTTP_STATUS.get(exc.code, HTTPStatus.INTERNAL_SERVER_ERROR), exc.message)

    def do_POST(self) -> None:
        match = MODEL_PATH.match(self.path.split("?")[0])
        length = content_length(self.headers.get("Content-Length"))
        if length is None:
            # The body's end is unknown, so the connection cannot be reused.
            self.close_connection = True
            self._error(HTTPStatus.BAD_REQUEST, "Malformed request: invalid Content-Length")
            return
        if length > self.limits.max_body_bytes:
            # Refused unread; the unread body makes the connection unusable.
            self.close_connection = True
            self._problem(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"request body of {length} bytes exceeds the limit of "
                f"{self.limits.max_body_bytes} bytes",
            )
            return
        self._reader.deadline = time.monotonic() + self.limits.body_timeout_s
        try:
            raw = self.rfile.read(length) if length else b""
        except TimeoutError:
            self.close_connection = True
            self._problem(
                HTTPStatus.REQUEST_TIMEOUT,
                f"request body did not arrive within {self.limits.body_timeout_s:g} s",
            )
            return
        if len(raw) < length:  # the client closed the connection mid-body
            self.close_connection = True
            return
        if match is None or match["verb"] != "predict" or match["metadata"]:
            self._error(HTTPStatus.NOT_FOUND, f"Malformed request: POST {self.path}")
            return
        try:
            with self.core.observe("RestPredict"):
                self._json(HTTPStatus.OK, self._predict(match, raw))
        except ServingError as exc:
            self._error(HTTP_STATUS.get(exc.code, HTTPStatus.INTERNAL_SERVER_ERROR), exc.message)

    def _predict(self, match: re.Match[str], raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # RecursionError: deeply nested arrays
            raise InvalidArgumentError(f"JSON Parse error: {exc}") from exc
        if not isinstance(body, dict):
            raise InvalidArgumentError("JSON body must be an object")
        version = int(match["version"]) if match["version"] else None
        servable = self.core.manager.get(match["name"], version, match["label"])
        signature = resolve_signature(servable.signatures, str(body.get("signature_name", "")))
        inputs, row = parse_predict_body(body, signature)
        _, _, outputs = self.core.predict_arrays(
            match["name"], servable.version, None, signature.name, inputs
        )
        return predict_json(outputs, row)

    def _json(self, status: HTTPStatus, body: Mapping[str, Any]) -> None:
        self._send(status, json.dumps(body, indent=None).encode(), "application/json")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json(status, {"error": message})

    def _problem(self, status: HTTPStatus, detail: str) -> None:
        self._send(status, problem_body(status, detail), PROBLEM_CONTENT_TYPE)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        # Reads leave the socket timeout at whatever time was left; a writer gets its own.
        self.connection.settimeout(self.limits.body_timeout_s)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
