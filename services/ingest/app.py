"""The ingest HTTP service (aiohttp): authenticate, validate, rate-limit, produce, answer.

``POST /v1/packets`` answers 202 only after Kafka acknowledged the record; every refusal is
an ``application/problem+json`` document naming the reason and the offending fields (those
of aiohttp's own HTTP parser too, see :mod:`services.common.http_server`). The checks run
cheapest first, so unauthenticated or oversized requests are refused before their body is
read. A 503 (not acknowledged in time) is at-least-once: the record may still reach the
topic, and the device's retry of the same seq is dropped downstream as a duplicate.

``POST /v1/packets:batch`` takes the packets of several devices from a gateway, each
authenticated by its own device's token, or all by the gateway's own token (in the
Authorization header) and its binding to their devices (:mod:`services.ingest.batch`,
:mod:`services.ingest.registry`), and answers every
packet on its own once Kafka acknowledged all the accepted ones: 202 when all were
accepted, else 207 with a problem document per refused packet (a packet Kafka did not
acknowledge in time is a 503 there, never left out). Refusals of the whole request (body
too large, not decodable, not a batch) are problem documents as above. Both endpoints take
JSON or MessagePack bodies (:mod:`services.ingest.body`).

A source address that failed authentication more than its bucket allows
(``auth_failure_burst``, refilled at ``auth_failure_rate_per_s``) is answered 429: a
token-guessing flood costs one dictionary lookup per request and cannot starve devices with
valid tokens (``python -m benchmarks.auth_flood`` measures it). Only failures count: an
address may have as many uncached token lookups in flight as it has failures left, and one
more waits for a slot (:mod:`services.ingest.authgate`) rather than being refused, so any
number of valid devices joining at once from one address (a NAT, a gateway) get in. Every
device credential failure (unknown token, a token naming another device) gets the same 401
body, and a gateway's packet of an unregistered device the same 403 as one of a device not
bound to it, so the answers do not tell which device ids are registered.

``/metrics`` is not on the device port: a second listener (``metrics_host``:``metrics_port``,
loopback unless configured) serves it, with the same connection limits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import math
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from services.common import eventloop
from services.common.authlimit import AuthFailureLimit, blocked_detail
from services.common.http_server import (
    Listener,
    ListenerLimits,
    ProblemAppRunner,
    auth_screen,
    serve_until_signalled,
)
from services.common.kafka.errors import BrokerUnavailableError
from services.common.ratelimit import RateLimiter
from services.ingest import batch as batches
from services.ingest import metrics as ingest_metrics
from services.ingest.authgate import AddressBlocked, LookupGate
from services.ingest.batch import Accepted, Refused, Result
from services.ingest.body import (
    ACCEPTED_TYPES,
    BodyError,
    BodyFormat,
    body_format,
    parse_body,
    parse_exact,
)
from services.ingest.cache import TtlCache
from services.ingest.decompress import GzipError, GzipTooLarge, gunzip
from services.ingest.errors import RegistryUnavailableError
from services.ingest.problems import problem_response
from services.ingest.producer import KafkaPacketSink, PacketSink
from services.ingest.progress import DeviceProgress
from services.ingest.registry import (
    DeviceRecord,
    DeviceRegistry,
    GatewayRecord,
    open_registry,
    redact_url,
)
from services.ingest.schemas import docs_html, openapi_document
from services.ingest.server import problem_document
from services.ingest.settings import IngestSettings
from services.ingest.tokens import (
    bearer_token,
    check_token_strength,
    hash_token,
    presented_token,
)
from services.ingest.validation import (
    DEVICE_ID_RE,
    FieldError,
    Invalid,
    LastAccepted,
    Reason,
    ValidPacket,
    validate_packet,
)
from shared.messages.raw import RawPacket

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R", DeviceRecord, GatewayRecord)

#: Devices count as active this long after their last accepted packet (seconds).
ACTIVE_WINDOW_S = 60.0
#: Least time between two "Kafka unavailable" (or "clock corrected") log lines (seconds).
BROKER_WARNING_INTERVAL_S = 10.0
#: Kept from the shutdown budget for what follows the app's cleanup (interpreter exit).
EXIT_MARGIN_S = 0.5
#: The one answer to every credential that does not authenticate the packet's device.
INVALID_CREDENTIALS = (
    "invalid device credentials: the token is unknown, or does not belong to the device "
    "named in the packet"
)
INVALID_TOKEN_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="harstream", error="invalid_token"'}
#: The detail of a 503 for a record Kafka did not acknowledge.
NOT_ACKNOWLEDGED = (
    "Kafka did not acknowledge the packet; retry later (resending the same seq is safe: "
    "duplicates are dropped downstream)"
)


#: The outcome label of a request's time by its status (anything else: "rejected").
_OUTCOMES = {202: "accepted", 207: "partial"}


class ClientDisconnected(Exception):
    """The client went away before its request body was read: nobody to answer."""


class Rejection(Exception):
    """Answer the current request with a problem document."""

    def __init__(
        self,
        status: int,
        reason: Reason,
        detail: str,
        errors: tuple[FieldError, ...] = (),
        headers: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(detail)
        self.close = close
        self.status = status
        self.reason = reason
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}


#: A batch's answer for a device whose token does not authenticate it (unknown, malformed,
#: another device's): one wording for all, as INVALID_CREDENTIALS.
_INVALID = Refused(401, Reason.UNAUTHENTICATED, INVALID_CREDENTIALS)


def _exact_packets(raw: bytes, count: int) -> list[Any]:
    """The packets of a JSON batch as ``json.loads`` reads them (see ingest.body), or []
    if that document is not a batch of ``count`` packets (then orjson's words stand)."""
    try:
        document = parse_exact(raw)
    except BodyError:
        return []
    packets = document.get("packets") if isinstance(document, dict) else None
    return packets if isinstance(packets, list) and len(packets) == count else []


def _version() -> str:
    try:
        return metadata.version("harstream")
    except metadata.PackageNotFoundError:
        return "0.0.0"


class IngestService:
    """The request handlers and the state they share."""

    def __init__(
        self,
        settings: IngestSettings,
        registry: DeviceRegistry,
        sink: PacketSink,
        metrics_registry: CollectorRegistry,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        #: Built once: IngestSettings.limits makes a new one at each call.
        self.limits = settings.limits
        self.registry = registry
        self.sink = sink
        self.metrics_registry = metrics_registry
        self._clock = clock
        self._monotonic = monotonic
        self.progress = DeviceProgress()
        self.metrics = ingest_metrics.create(
            metrics_registry,
            lambda: self.progress.active(self._monotonic(), ACTIVE_WINDOW_S),
            lambda: sink.replacements,
        )
        # Label children looked up once: .labels() per request showed in the profile.
        self._request_seconds = {
            outcome: self.metrics.request_seconds.labels(outcome=outcome)
            for outcome in ("accepted", "rejected")
        }
        self._batch_seconds = {
            outcome: self.metrics.batch_seconds.labels(outcome=outcome)
            for outcome in ingest_metrics.BATCH_OUTCOMES
        }
        self._rejections = {
            reason: self.metrics.rejections.labels(reason=reason.value) for reason in Reason
        }
        self.limiter = RateLimiter(
            settings.rate_limit_samples_per_s, settings.rate_limit_burst_samples, monotonic
        )
        # Failed authentications per source address (see the module docstring).
        self.auth_limit = AuthFailureLimit(
            settings.auth_failure_rate_per_s,
            settings.auth_failure_burst,
            monotonic,
            settings.client_ip_header,
            settings.trusted_proxies,
        )
        #: A new connection from a blocked address gets a canned 429 and is closed before
        #: any of it is read (see services.common.http_server).
        self.screen_connection = auth_screen(
            self.auth_limit, problem_document, Reason.AUTH_RATE_LIMITED.value, self._screened
        )
        #: Slots for uncached token lookups per address (see the module docstring).
        self.gate = LookupGate(self.auth_limit)
        self._weak_tokens_warned: set[str] = set()
        self._tokens_checked: set[str] = set()
        #: Registry lookups in flight by key (a token's hash; a gateway's is prefixed).
        self._lookups: dict[str, asyncio.Future[Any]] = {}
        # Token hash → record (None: unknown token, cached too so a client repeating a
        # wrong token cannot make every request hit the store).
        self._tokens: TtlCache[str, DeviceRecord | None] = TtlCache(
            settings.token_cache_ttl_s, settings.token_cache_size, monotonic
        )
        # Gateway credentials the same way, and the devices of gateway batches by id (their
        # revocation is honoured within the same TTL as a token's).
        self._gateway_tokens: TtlCache[str, GatewayRecord | None] = TtlCache(
            settings.token_cache_ttl_s, settings.token_cache_size, monotonic
        )
        self._devices_by_id: TtlCache[str, DeviceRecord | None] = TtlCache(
            settings.token_cache_ttl_s, settings.token_cache_size, monotonic
        )
        self._broker_warned_at = -math.inf
        self._broker_failures = 0
        self._clock_logged_at = -math.inf
        self._clock_corrections = 0
        self._shutdown_deadline: float | None = None
        self._registry_pool = ThreadPoolExecutor(2, thread_name_prefix="ingest-registry")
        self._refresher: asyncio.Task[None] | None = None
        self.openapi = openapi_document(
            settings.limits, settings.max_body_bytes, _version(), settings.max_batch_packets
        )
        self.docs = docs_html(self.openapi)

    # -- registry ----------------------------------------------------------------------------

    async def _registry_call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._registry_pool, fn, *args),
                self.settings.registry_timeout_s,
            )
        except TimeoutError as exc:
            raise RegistryUnavailableError(
                f"registry did not answer within {self.settings.registry_timeout_s:g} s"
            ) from exc

    async def _lookup(self, key: str, find: Callable[[str], R | None], token: str) -> R | None:
        """The registry's answer ``find(token)`` (lookup key ``key``): concurrent requests
        with the same token share one registry call."""
        pending = self._lookups.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._registry_call(find, token))
            self._lookups[key] = pending
            pending.add_done_callback(lambda done: self._looked_up(key, done))
        record: R | None = await asyncio.shield(pending)
        return record

    def _looked_up(self, key: str, done: asyncio.Future[Any]) -> None:
        self._lookups.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved here, so an error nobody awaited is not logged

    # -- keeping the cached registry answers fresh ---------------------------------------------

    async def _refresh_cached_lookups(self) -> None:
        interval = self.settings.token_cache_ttl_s / 2
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh_cached_lookups()
            except Exception:
                # Anything but a registry outage is a bug; it must not end the refreshes
                # for the life of the process (the entries would then expire and be looked
                # up one request at a time: slower, never wrong).
                self.metrics.registry_refreshes.labels(outcome="failed").inc()
                logger.exception("re-reading the cached devices failed; again in %g s", interval)

    async def refresh_cached_lookups(self) -> int:
        """Re-read every device the caches hold (by token hash, and by id for gateway
        batches) in one registry call per cache, and store the answers to expire
        ``token_cache_ttl_s`` after that read. Returns the entries refreshed.

        Run every half TTL, so a live device's cached answer never expires: without it
        every device's token was looked up again every TTL, one thread hop and query per
        device (7 % of ingest's CPU samples at 750 devices, py-spy), and a revocation is
        still seen within the TTL. An answer a request stored after the read is kept
        (:meth:`TtlCache.refresh`). Unknown tokens are not re-read: they expire. If the
        registry does not answer, the entries expire and are looked up one request at a
        time, as before."""
        refreshed = 0
        rounds: list[
            tuple[TtlCache[str, DeviceRecord | None], Callable[..., dict[str, DeviceRecord]]]
        ] = [
            (self._tokens, self.registry.find_by_token_hashes),
            (self._devices_by_id, self.registry.get_many),
        ]
        for cache, find in rounds:
            keys = [key for key, record in cache.entries() if record is not None]
            if not keys:
                continue
            read_at = self._monotonic()
            try:
                found = await self._registry_call(find, keys)
            except RegistryUnavailableError as exc:
                self.metrics.registry_refreshes.labels(outcome="failed").inc()
                logger.warning("cached devices not re-read (they expire instead): %s", exc)
                continue
            self.metrics.registry_refreshes.labels(outcome="ok").inc()
            refreshed += sum(cache.refresh(key, found.get(key), read_at) for key in keys)
        return refreshed

    def _flag_weak_token(self, device_id: str, key: str, token: str) -> None:
        # Tokens registered before custom tokens needed 256 bits still work; their owner
        # learns here (once per device and process) that they should be rotated.
        if device_id in self._weak_tokens_warned or key in self._tokens_checked:
            return
        # Each token is judged once per process: its entropy estimate cost ~5 % of ingest's
        # CPU when it ran at every refresh of the token cache (py-spy, 1,000 devices).
        # Bounded by the registry: only tokens of registered devices get here.
        self._tokens_checked.add(key)
        problem = check_token_strength(token)
        if problem is not None:
            self._weak_tokens_warned.add(device_id)
            logger.warning(
                "device %s authenticates with a weak custom token (%s): register a new one "
                "(`harstream devices revoke` then `add`)",
                device_id,
                problem.split(" (")[0],
            )

    # -- failed authentications per source address --------------------------------------------

    def source_key(self, request: web.BaseRequest) -> str:
        """The rate-limit key of the request's client (see services.common.clientaddr)."""
        return self.auth_limit.source(request.remote, request.headers)

    def _blocked(self, retry_after: int) -> Rejection:
        # Closing makes the client reconnect, and a blocked address's new connections are
        # refused at accept (screen_connection), before any HTTP is parsed.
        return Rejection(
            429,
            Reason.AUTH_RATE_LIMITED,
            blocked_detail(retry_after),
            headers={"Retry-After": str(retry_after)},
            close=True,
        )

    def _count_failure(self, source: str) -> None:
        """A credential that authenticates nothing and cost no lookup (none at all, one of
        the wrong form, a token cached as unknown): one failure of ``source``, or the 429
        if it has none left."""
        retry_after = self.auth_limit.over_budget(source)
        if retry_after is not None:
            raise self._blocked(retry_after)
        self.auth_limit.failed(source)

    async def _device_for_token(self, token: str, source: str) -> DeviceRecord | None:
        """The device ``token`` belongs to (revoked or not), or None (counted as a failure
        of ``source``); see :meth:`_credential_for_token`."""
        key = hash_token(token)
        device, looked_up = await self._credential_for_token(
            key, key, token, source, self._tokens, self.registry.find_by_token
        )
        if looked_up and device is not None:
            self._flag_weak_token(device.device_id, key, token)
        return device

    async def _gateway_for_token(self, token: str, source: str) -> GatewayRecord | None:
        """The gateway ``token`` belongs to (revoked or not), or None (counted as a failure
        of ``source``); see :meth:`_credential_for_token`."""
        key = hash_token(token)
        gateway, _ = await self._credential_for_token(
            key,
            f"gateway:{key}",
            token,
            source,
            self._gateway_tokens,
            self.registry.find_gateway_by_token,
        )
        return gateway

    async def _credential_for_token(
        self,
        key: str,
        lookup_key: str,
        token: str,
        source: str,
        cache: TtlCache[str, R | None],
        find: Callable[[str], R | None],
    ) -> tuple[R | None, bool]:
        """``(record, looked_up)``: the registry record ``token`` (hash ``key``) belongs to
        (revoked or not), or None (counted as a failure of ``source``), and whether this
        call asked the registry. A token cached as valid passes without touching the
        address's budget: a device or gateway with a valid token is never throttled by a
        flood from its own address (a shared NAT or proxy). :class:`Rejection` 429 once
        ``source`` has no failure left; :class:`RegistryUnavailableError` if the store
        does not answer."""
        hit, record = cache.get(key)
        if hit:
            if record is None:
                self._count_failure(source)
            return record, False
        if lookup_key in self._lookups:
            # Joining a lookup already in flight for the same token costs nothing more, so
            # it holds no slot (many requests of a device whose cache entry just expired).
            record = await self._lookup(lookup_key, find, token)
            if record is None:
                self.auth_limit.failed(source)  # still a failure of this address
            return record, False
        try:
            await self.gate.enter(source)
        except AddressBlocked as blocked:
            raise self._blocked(blocked.retry_after) from None
        failed = False
        try:
            record = await self._lookup(lookup_key, find, token)
            failed = record is None
        finally:
            # A store that did not answer is our failure, not the client's.
            self.gate.leave(source, failed)
        # None is cached too, so repeating an unknown token does not reach the store.
        cache.put(key, record)
        return record, True

    async def _authenticate(self, request: web.Request, source: str) -> DeviceRecord:
        """The device the request's token belongs to, or a 401 (429 once ``source`` has
        failed too often)."""
        header = request.headers.get("Authorization")
        token = bearer_token(header)
        if token is None:
            self._count_failure(source)
            raise Rejection(
                401,
                Reason.UNAUTHENTICATED,
                "missing 'Authorization: Bearer <device token>' header"
                if not header
                else "malformed Authorization header: expected 'Bearer <device token>', the "
                "token in printable ASCII",
                headers={"WWW-Authenticate": 'Bearer realm="harstream"'},
            )
        device = await self._device_for_token(token, source)
        if device is None:
            raise Rejection(
                401, Reason.UNAUTHENTICATED, INVALID_CREDENTIALS, headers=INVALID_TOKEN_CHALLENGE
            )
        return device

    # -- POST /v1/packets ---------------------------------------------------------------------

    async def post_packet(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, self._accept, self._request_seconds)

    async def _answer(
        self,
        request: web.Request,
        accept: Callable[[web.Request], Awaitable[web.Response]],
        seconds: dict[str, Any],
    ) -> web.StreamResponse:
        """``accept``'s answer, or the problem document of the whole request's refusal;
        the time taken goes to ``seconds`` (histogram children by outcome)."""
        started = time.perf_counter()
        try:
            response = await accept(request)
        except Rejection as rejection:
            self._rejections[rejection.reason].inc()
            response = problem_response(
                rejection.status,
                rejection.reason.value,
                rejection.detail,
                rejection.errors,
                rejection.headers,
            )
            if rejection.close:
                response.force_close()
        except ClientDisconnected as exc:
            # Not our failure and nobody to answer: counted apart from `internal` (which
            # pages), logged quietly. The device retries the packet.
            logger.debug("client disconnected: %s", exc)
            self._rejections[Reason.CLIENT_DISCONNECTED].inc()
            response = problem_response(
                400, Reason.CLIENT_DISCONNECTED.value, "the client closed the connection"
            )
        except RegistryUnavailableError as exc:
            logger.warning("device registry unavailable: %s", exc)
            self._rejections[Reason.REGISTRY_UNAVAILABLE].inc()
            response = problem_response(
                503,
                Reason.REGISTRY_UNAVAILABLE.value,
                "the device registry is unavailable; retry later",
                headers={"Retry-After": str(self.settings.broker_retry_after_s)},
            )
        except Exception:
            logger.exception("unexpected error on %s %s", request.method, request.path)
            self._rejections[Reason.INTERNAL].inc()
            response = problem_response(500, Reason.INTERNAL.value, "internal error; retry later")
        outcome = _OUTCOMES.get(response.status, "rejected")
        seconds[outcome].observe(time.perf_counter() - started)
        return response

    def _body_headers(self, request: web.Request) -> tuple[BodyFormat, str]:
        """The body's format and content encoding, from the headers alone (415 for ones
        not supported, 413 for a Content-Length over the limit)."""
        content_type = request.content_type
        fmt = body_format(content_type)
        if fmt is None:
            raise Rejection(
                415,
                Reason.UNSUPPORTED_MEDIA_TYPE,
                f"Content-Type must be application/json or application/msgpack, got "
                f"{content_type!r}",
                headers={"Accept-Post": ACCEPTED_TYPES},
            )
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip"):
            raise Rejection(
                415,
                Reason.UNSUPPORTED_MEDIA_TYPE,
                f"Content-Encoding {encoding!r} is not supported (identity or gzip)",
                headers={"Accept-Encoding": "gzip"},
            )
        length = request.content_length
        if length is not None and length > self.settings.max_body_bytes:
            raise self._too_large(f"Content-Length {length}")
        return fmt, encoding

    async def _accept(self, request: web.Request) -> web.Response:
        settings = self.settings
        fmt, encoding = self._body_headers(request)

        source = self.source_key(request)
        device = await self._authenticate(request, source)
        if device.revoked:
            raise Rejection(403, Reason.FORBIDDEN, f"device {device.device_id!r} is revoked")

        raw = await self._read_body(request)
        if encoding == "gzip":
            raw = self._gunzip(raw)
        result = self._validated(raw, fmt, device, source)

        n = result.num_samples
        limited = self._rate_limited(device.device_id, n)
        if limited is not None:
            raise Rejection(
                429,
                limited.reason,
                limited.detail,
                headers={"Retry-After": str(limited.retry_after)},
            )

        packet = RawPacket(
            device_id=result.device_id,
            seq=result.seq,
            first_sample_time=result.first_sample_time,
            sample_rate_hz=result.sample_rate_hz,
            samples=result.samples,
            received_at=self._clock(),
        )
        try:
            ack_s = await self.sink.send(result.device_id.encode(), packet.to_bytes())
        except BrokerUnavailableError as exc:
            self.limiter.refund(device.device_id, n)
            self._warn_broker(exc)
            raise Rejection(
                503,
                Reason.BROKER_UNAVAILABLE,
                NOT_ACKNOWLEDGED,
                headers={"Retry-After": str(settings.broker_retry_after_s)},
            ) from None
        self.metrics.kafka_ack_seconds.observe(ack_s)
        self.metrics.packets.inc()
        self.metrics.samples.inc(n)
        if result.clock_went_back_s is not None:
            self._clock_corrected(result.device_id, result.seq, result.clock_went_back_s)
        self.progress.accepted(
            result.device_id, result.seq, result.first_sample_time, self._monotonic()
        )
        # The bytes json.dumps wrote before (device ids are [A-Za-z0-9._:-]: nothing to
        # escape), without its encoder's per-call cost.
        return web.Response(
            body=b'{"device_id": "%s", "seq": %d, "samples": %d}'
            % (result.device_id.encode(), result.seq, n),
            status=202,
            content_type="application/json",
            charset="utf-8",
        )

    def _rate_limited(self, device_id: str, samples: int) -> Refused | None:
        """None if ``device_id`` may send ``samples`` more now (they are taken from its
        bucket), else the 429 saying when it may."""
        decision = self.limiter.acquire(device_id, samples)
        if decision.allowed:
            return None
        retry_after = (
            3600
            if math.isinf(decision.retry_after_s)
            else max(1, math.ceil(decision.retry_after_s))
        )
        settings = self.settings
        return Refused(
            429,
            Reason.RATE_LIMITED,
            f"device {device_id!r} exceeded {settings.rate_limit_samples_per_s:g} samples/s "
            f"(burst {settings.rate_limit_burst_samples}); retry in {retry_after} s",
            retry_after=retry_after,
        )

    def _validated(
        self, raw: bytes, fmt: BodyFormat, device: DeviceRecord, source: str
    ) -> ValidPacket:
        """The packet in body ``raw`` of ``device``'s request, or the Rejection saying why
        not. A method of its own so the parsed document (~350 objects for 50 samples) is
        freed before the request waits for Kafka: held through the wait, every in-flight
        request's document went through the garbage collector's generations.
        """
        try:
            body, exact = parse_body(raw, fmt)
        except BodyError as exc:
            raise Rejection(400, Reason.MALFORMED, str(exc)) from None
        claimed = body.get("device_id") if isinstance(body, dict) else None
        # Only a well-formed id can name another device; anything else (a lone surrogate
        # from a "\ud800" escape, say) is the packet's own 422 below. Whether the other id
        # is registered is not looked up: the answer is the unknown token's, word for word.
        if (
            isinstance(claimed, str)
            and claimed != device.device_id
            and DEVICE_ID_RE.fullmatch(claimed)
        ):
            self.auth_limit.failed(source)  # a failed authentication too
            raise Rejection(
                401, Reason.UNAUTHENTICATED, INVALID_CREDENTIALS, headers=INVALID_TOKEN_CHALLENGE
            )

        now = self._clock()
        last = self.progress.last(device.device_id)
        result = validate_packet(body, self.limits, now, last)
        if isinstance(result, Invalid) and not exact:
            # Refusals are worded from the document json.loads reads (see ingest.body).
            try:
                result = validate_packet(parse_exact(raw), self.limits, now, last)
            except BodyError as exc:
                raise Rejection(400, Reason.MALFORMED, str(exc)) from None
        if isinstance(result, Invalid):
            raise Rejection(result.status, result.reason, result.detail, result.errors)
        return result

    # -- POST /v1/packets:batch ---------------------------------------------------------------

    async def post_batch(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, self._accept_batch, self._batch_seconds)

    async def _accept_batch(self, request: web.Request) -> web.Response:
        fmt, encoding = self._body_headers(request)
        source = self.source_key(request)
        # A gateway's own credential is checked before its body is read, as a device's is.
        gateway = (
            await self._authenticate_gateway(request, source)
            if "Authorization" in request.headers
            else None
        )
        raw = await self._read_body(request)
        if encoding == "gzip":
            raw = self._gunzip(raw)
        results, records, authenticated = await self._prepare_batch(raw, fmt, source, gateway)
        del raw
        if records:
            await self._produce_batch(records, results)
        answer = batches.answer([r for r in results if r is not None])
        headers = {} if answer.retry_after is None else {"Retry-After": str(answer.retry_after)}
        response = web.Response(
            body=answer.body,
            status=answer.status,
            content_type="application/json",
            charset="utf-8",
            headers=headers,
        )
        if not authenticated and any(
            isinstance(r.outcome, Refused) and r.outcome.reason is Reason.AUTH_RATE_LIMITED
            for r in results
            if r is not None
        ):
            # A batch of nothing but guesses from a blocked address: close, as for a single
            # packet, so its next connection meets the screen at accept.
            response.force_close()
        return response

    async def _prepare_batch(
        self, raw: bytes, fmt: BodyFormat, source: str, gateway: GatewayRecord | None = None
    ) -> tuple[list[Result | None], list[tuple[int, ValidPacket, bytes]], bool]:
        """Every packet of the batch in body ``raw`` answered or made ready to send:
        ``(results, records, authenticated)``, ``results`` holding the answer of each
        packet refused so far (None for the ones in ``records``: index, packet, raw
        record), ``authenticated`` whether the gateway or any device authenticated. The
        packets' devices are authenticated by ``gateway``'s binding when the request came
        with a gateway token, else by the batch's ``tokens``. The parsed document is freed
        when this returns, before the request waits for Kafka (see :meth:`_validated`)."""
        settings = self.settings
        try:
            document, exact = parse_body(raw, fmt)
        except BodyError as exc:
            raise Rejection(400, Reason.MALFORMED, str(exc)) from None
        batch = batches.parse_batch(
            document, settings.max_batch_packets, gateway=gateway is not None
        )
        if isinstance(batch, Invalid):
            raise Rejection(batch.status, batch.reason, batch.detail, batch.errors)
        packets = batch.packets
        self.metrics.batch_packets.observe(len(packets))
        identities = [batches.identity(packet) for packet in packets]
        device_ids = {device_id for device_id, _ in identities if device_id is not None}
        devices = (
            await self._authenticate_devices(device_ids, batch.tokens, source)
            if gateway is None
            else await self._gateway_devices(device_ids, gateway)
        )
        now = self._clock()
        results: list[Result | None] = [None] * len(packets)
        records: list[tuple[int, ValidPacket, bytes]] = []
        first_of: dict[tuple[str, int], int] = {}
        # The last packet per device as the batch goes: a later packet of a device is
        # checked for a clock set back against the earlier ones of the same batch too.
        lasts: dict[str, LastAccepted | None] = {}
        exact_packets: list[Any] | None = None
        for index, (packet, (device_id, seq)) in enumerate(zip(packets, identities, strict=True)):
            if device_id is None:
                results[index] = Result(index, None, seq, batches.unidentified(packet))
                continue
            device = devices[device_id]
            if isinstance(device, Refused):
                results[index] = Result(index, device_id, seq, device)
                continue
            if seq is not None:
                first = first_of.setdefault((device_id, seq), index)
                if first != index:
                    refusal = batches.duplicate(device_id, seq, first)
                    results[index] = Result(index, device_id, seq, refusal)
                    continue
            last = lasts[device_id] if device_id in lasts else self.progress.last(device_id)
            result = validate_packet(packet, self.limits, now, last)
            if isinstance(result, Invalid) and not exact:
                # Refusals are worded from the document json.loads reads (see ingest.body).
                if exact_packets is None:
                    exact_packets = _exact_packets(raw, len(packets))
                if exact_packets:
                    result = validate_packet(exact_packets[index], self.limits, now, last)
            if isinstance(result, Invalid):
                results[index] = Result(index, device_id, seq, Refused.of(result))
                continue
            limited = self._rate_limited(device_id, result.num_samples)
            if limited is not None:
                results[index] = Result(index, device_id, seq, limited)
                continue
            value = RawPacket(
                device_id=device_id,
                seq=result.seq,
                first_sample_time=result.first_sample_time,
                sample_rate_hz=result.sample_rate_hz,
                samples=result.samples,
                received_at=self._clock(),
            ).to_bytes()
            records.append((index, result, value))
            if last is None or result.seq > last.seq:
                lasts[device_id] = LastAccepted(result.seq, result.first_sample_time)
        for result_ in results:
            if result_ is not None:
                assert isinstance(result_.outcome, Refused)
                self._rejections[result_.outcome.reason].inc()
        authenticated = gateway is not None or any(
            not isinstance(d, Refused) for d in devices.values()
        )
        return results, records, authenticated

    async def _authenticate_gateway(self, request: web.Request, source: str) -> GatewayRecord:
        """The gateway the request's token belongs to, or a 401 (429 once ``source`` has
        failed too often), or a 403 if it is revoked."""
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            self._count_failure(source)
            raise Rejection(
                401,
                Reason.UNAUTHENTICATED,
                "malformed Authorization header: expected 'Bearer <gateway token>', the token "
                "in printable ASCII (or no header, and each device's token in tokens)",
                headers={"WWW-Authenticate": 'Bearer realm="harstream"'},
            )
        gateway = await self._gateway_for_token(token, source)
        if gateway is None:
            raise Rejection(
                401,
                Reason.UNAUTHENTICATED,
                "invalid gateway credentials: the token is unknown (a batch carrying each "
                "device's token in tokens needs no Authorization header)",
                headers=INVALID_TOKEN_CHALLENGE,
            )
        if gateway.revoked:
            raise Rejection(403, Reason.FORBIDDEN, f"gateway {gateway.gateway_id!r} is revoked")
        return gateway

    async def _gateway_devices(
        self, device_ids: set[str], gateway: GatewayRecord
    ) -> dict[str, DeviceRecord | Refused]:
        """Each device's record, or the answer for its packets: 403 (not bound to
        ``gateway``, or revoked), 503 (the registry did not answer). Records found in the
        cache are answered at once; the others are looked up together."""
        devices: dict[str, DeviceRecord | Refused] = {}
        lookups: list[str] = []
        for device_id in device_ids:
            if device_id not in gateway.device_ids:
                devices[device_id] = batches.not_bound(device_id, gateway.gateway_id)
                continue
            hit, device = self._devices_by_id.get(device_id)
            if hit:
                devices[device_id] = _bound_device(device, device_id)
            else:
                lookups.append(device_id)
        if lookups:
            found = await asyncio.gather(*(self._bound_device_by_id(d) for d in lookups))
            devices.update(zip(lookups, found, strict=True))
        return devices

    async def _bound_device_by_id(self, device_id: str) -> DeviceRecord | Refused:
        try:
            device = await self._lookup(f"device:{device_id}", self.registry.get, device_id)
        except RegistryUnavailableError as exc:
            return self._registry_down(exc)
        self._devices_by_id.put(device_id, device)
        return _bound_device(device, device_id)

    async def _authenticate_devices(
        self, device_ids: set[str], tokens: dict[Any, Any], source: str
    ) -> dict[str, DeviceRecord | Refused]:
        """Each device's record, or the answer for its packets: 401 (no token for it, or
        one that does not authenticate it), 403 (revoked), 429 (``source`` has no failure
        left), 503 (the registry did not answer). Tokens found in the cache are answered
        at once; the others are looked up together, each holding a slot of ``source``
        (see :mod:`services.ingest.authgate`)."""
        devices: dict[str, DeviceRecord | Refused] = {}
        lookups: list[tuple[str, str]] = []
        for device_id in device_ids:
            if device_id not in tokens:
                devices[device_id] = self._credential_failure(
                    source, batches.missing_token(device_id)
                )
                continue
            token = presented_token(tokens[device_id])
            if token is None:
                devices[device_id] = self._credential_failure(source, _INVALID)
                continue
            hit, device = self._tokens.get(hash_token(token))
            if hit and device is not None:
                devices[device_id] = self._device_matches(device, device_id, source)
            else:
                lookups.append((device_id, token))
        if lookups:
            found = await asyncio.gather(
                *(self._batch_device(device_id, token, source) for device_id, token in lookups)
            )
            devices.update(zip((device_id for device_id, _ in lookups), found, strict=True))
        return devices

    async def _batch_device(
        self, device_id: str, token: str, source: str
    ) -> DeviceRecord | Refused:
        try:
            device = await self._device_for_token(token, source)
        except Rejection as rejection:  # 429: the address has no failure left
            retry_after = int(rejection.headers.get("Retry-After", "1"))
            return Refused(429, rejection.reason, rejection.detail, retry_after=retry_after)
        except RegistryUnavailableError as exc:
            return self._registry_down(exc)
        if device is None:
            return _INVALID
        return self._device_matches(device, device_id, source)

    def _registry_down(self, exc: RegistryUnavailableError) -> Refused:
        """The answer for a batch packet whose device the registry could not look up."""
        logger.warning("device registry unavailable: %s", exc)
        return Refused(
            503,
            Reason.REGISTRY_UNAVAILABLE,
            "the device registry is unavailable; retry later",
            retry_after=self.settings.broker_retry_after_s,
        )

    def _device_matches(
        self, device: DeviceRecord, device_id: str, source: str
    ) -> DeviceRecord | Refused:
        """``device`` if it is ``device_id``'s own and not revoked, else the answer."""
        if device.device_id != device_id:
            # A token of another device: a failed authentication too, answered word for
            # word as an unknown token.
            self.auth_limit.failed(source)
            return _INVALID
        if device.revoked:
            return Refused(403, Reason.FORBIDDEN, f"device {device_id!r} is revoked")
        return device

    def _credential_failure(self, source: str, refusal: Refused) -> Refused:
        """``refusal`` for a device whose credential could not even be looked up (counted
        as a failure of ``source``), or the 429 once ``source`` has none left."""
        try:
            self._count_failure(source)
        except Rejection as rejection:
            retry_after = int(rejection.headers.get("Retry-After", "1"))
            return Refused(429, rejection.reason, rejection.detail, retry_after=retry_after)
        return refusal

    async def _produce_batch(
        self, records: list[tuple[int, ValidPacket, bytes]], results: list[Result | None]
    ) -> None:
        """Send every record at once (the producer bridge batches concurrent records) and
        answer each packet once Kafka acknowledged it or did not in time: 202, or 503 (a
        record not acknowledged may still be written: at-least-once, as for one packet)."""
        # Tasks start in this order, so a device's records reach the producer in batch order.
        acks = await asyncio.gather(
            *(self.sink.send(packet.device_id.encode(), value) for _, packet, value in records),
            return_exceptions=True,
        )
        monotonic = self._monotonic()
        for (index, packet, _), ack in zip(records, acks, strict=True):
            outcome: Accepted | Refused
            if isinstance(ack, BaseException):
                self.limiter.refund(packet.device_id, packet.num_samples)
                if isinstance(ack, BrokerUnavailableError):
                    self._warn_broker(ack)
                    outcome = Refused(
                        503,
                        Reason.BROKER_UNAVAILABLE,
                        NOT_ACKNOWLEDGED,
                        retry_after=self.settings.broker_retry_after_s,
                    )
                else:
                    logger.error("unexpected error sending a packet of a batch", exc_info=ack)
                    outcome = Refused(500, Reason.INTERNAL, "internal error; retry later")
                self._rejections[outcome.reason].inc()
            else:
                self.metrics.kafka_ack_seconds.observe(ack)
                self.metrics.packets.inc()
                self.metrics.samples.inc(packet.num_samples)
                if packet.clock_went_back_s is not None:
                    self._clock_corrected(packet.device_id, packet.seq, packet.clock_went_back_s)
                self.progress.accepted(
                    packet.device_id, packet.seq, packet.first_sample_time, monotonic
                )
                outcome = Accepted(packet.num_samples)
            results[index] = Result(index, packet.device_id, packet.seq, outcome)

    def _warn_broker(self, exc: BaseException) -> None:
        # One line per interval, not one per refused request, while Kafka is down.
        self._broker_failures += 1
        now = self._monotonic()
        if now - self._broker_warned_at >= BROKER_WARNING_INTERVAL_S:
            logger.warning(
                "answering 503: %s (%d packets refused since the last warning)",
                exc,
                self._broker_failures,
            )
            self._broker_warned_at = now
            self._broker_failures = 0

    def _clock_corrected(self, device_id: str, seq: int, went_back_s: float) -> None:
        # A device clock set back (NTP after running fast, a user fixing it): the packet is
        # accepted, the preprocess worker re-anchors the device's time. Counted, and logged
        # at most once per interval so a device with a broken clock does not flood the log.
        self.metrics.clock_corrections.inc()
        self._clock_corrections += 1
        now = self._monotonic()
        if now - self._clock_logged_at >= BROKER_WARNING_INTERVAL_S:
            logger.info(
                "device %s: clock went back %.3f s at seq %d (accepted; %d correction(s) "
                "since the last such line)",
                device_id,
                went_back_s,
                seq,
                self._clock_corrections,
            )
            self._clock_logged_at = now
            self._clock_corrections = 0

    def _too_large(self, what: str) -> Rejection:
        return Rejection(
            413,
            Reason.TOO_LARGE,
            f"{what} exceeds the limit of {self.settings.max_body_bytes} bytes",
            headers={"Connection": "close"},
        )

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.settings.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:  # chunked uploads have no Content-Length: stop reading here
                    raise self._too_large("body")
                chunks.append(chunk)
        except RequestPayloadError as exc:  # e.g. broken chunked encoding
            raise Rejection(400, Reason.MALFORMED, f"unreadable body: {exc}") from None
        except ConnectionError as exc:  # the connection was lost mid-body
            raise ClientDisconnected(f"after {size} byte(s) of the body: {exc}") from None
        return b"".join(chunks)

    def _gunzip(self, data: bytes) -> bytes:
        try:
            return gunzip(data, self.settings.max_body_bytes)
        except GzipTooLarge:
            raise self._too_large("decompressed body") from None
        except GzipError as exc:
            raise Rejection(400, Reason.MALFORMED, f"body is not valid gzip: {exc}") from None

    # -- operational endpoints ----------------------------------------------------------------

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _request: web.Request) -> web.Response:
        broker_problem, registry_problem = await asyncio.gather(
            self.sink.check(), self._registry_problem()
        )
        ready = broker_problem is None and registry_problem is None
        return web.json_response(
            {
                "ready": ready,
                "broker": broker_problem or "ok",
                "registry": registry_problem or "ok",
            },
            status=200 if ready else 503,
        )

    async def _registry_problem(self) -> str | None:
        try:
            await self._registry_call(self.registry.ping)
        except RegistryUnavailableError as exc:
            return str(exc)
        return None

    async def metrics_endpoint(self, _request: web.Request) -> web.Response:
        """GET /metrics, on the metrics listener only (:func:`create_metrics_app`)."""
        return web.Response(
            body=generate_latest(self.metrics_registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def openapi_endpoint(self, _request: web.Request) -> web.Response:
        return web.json_response(self.openapi)

    async def docs_endpoint(self, _request: web.Request) -> web.Response:
        return web.Response(text=self.docs, content_type="text/html")

    # -- lifecycle ----------------------------------------------------------------------------

    async def on_startup(self, _app: web.Application) -> None:
        await self.sink.start()
        if self.settings.token_cache_ttl_s > 0 and self._refresher is None:
            self._refresher = asyncio.create_task(
                self._refresh_cached_lookups(), name="registry-refresh"
            )

    def begin_shutdown(self) -> None:
        """Start the shutdown clock (on SIGTERM): everything stops within shutdown_timeout_s."""
        if self._shutdown_deadline is None:
            self._shutdown_deadline = (
                self._monotonic() + self.settings.shutdown_timeout_s - EXIT_MARGIN_S
            )

    async def on_shutdown(self, _app: web.Application) -> None:
        self.begin_shutdown()

    async def on_cleanup(self, _app: web.Application) -> None:
        self.begin_shutdown()
        deadline = self._shutdown_deadline
        assert deadline is not None
        if self._refresher is not None:
            self._refresher.cancel()
        # Never an unbounded flush: records not acknowledged by the deadline were answered
        # 503 already (at-least-once), and a paused broker must not keep us from exiting.
        await self.sink.close(deadline)
        loop = asyncio.get_running_loop()
        closing = loop.run_in_executor(self._registry_pool, self.registry.close)
        try:
            await asyncio.wait_for(closing, max(0.1, deadline - self._monotonic()))
        except TimeoutError:
            logger.warning("the device registry did not close by the shutdown deadline")
        self._registry_pool.shutdown(wait=False, cancel_futures=True)

    def refused_by_parser(self, reason: str) -> None:
        """aiohttp's HTTP parser refused a request (see services.common.http_server)."""
        self.metrics.http_refusals.labels(reason=reason).inc()

    def _screened(self) -> None:
        self.metrics.rejections.labels(reason=Reason.AUTH_RATE_LIMITED.value).inc()

    def connection_limited(self, limit: str) -> None:
        """A connection was closed or refused by a listener limit (services.common.http_server)."""
        self.metrics.connection_limits.labels(limit=limit).inc()


SERVICE_KEY = web.AppKey("ingest", IngestService)

#: Runner options the app needs: it inflates gzip bodies itself, under the size limit and
#: with problem+json answers (aiohttp's own decoding refuses unknown encodings in plain text).
SERVER_OPTIONS: dict[str, Any] = {"auto_decompress": False}


def _bound_device(device: DeviceRecord | None, device_id: str) -> DeviceRecord | Refused:
    """A device bound to the gateway, or the answer for its packets (revoked, or gone
    from the registry since it was bound)."""
    if device is None:
        return Refused(403, Reason.FORBIDDEN, f"device {device_id!r} is not registered")
    if device.revoked:
        return Refused(403, Reason.FORBIDDEN, f"device {device_id!r} is revoked")
    return device


@web.middleware
async def problem_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Answer routing errors and unexpected exceptions with problem documents, never with
    a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return problem_response(exc.status, "http_error", exc.reason, headers=headers)
    except Exception:
        logger.exception("unexpected error on %s %s", request.method, request.path)
        return problem_response(500, Reason.INTERNAL.value, "internal error; retry later")


def create_app(
    settings: IngestSettings,
    registry: DeviceRegistry | None = None,
    sink: PacketSink | None = None,
    metrics_registry: CollectorRegistry | None = None,
) -> web.Application:
    """The aiohttp application; the producer starts with the app and is flushed at cleanup.

    Serve it with :data:`SERVER_OPTIONS` (``web.run_app(app, **SERVER_OPTIONS)``,
    ``await TestServer(app).start_server(**SERVER_OPTIONS)``).
    """
    service = IngestService(
        settings,
        registry or open_registry(settings.registry_url, settings.registry_table),
        sink or KafkaPacketSink(settings),
        metrics_registry or CollectorRegistry(),
    )
    # client_max_size only guards request.read(); the handler streams with its own limit.
    app = web.Application(middlewares=[problem_middleware], client_max_size=settings.max_body_bytes)
    app[SERVICE_KEY] = service
    app.router.add_post("/v1/packets", service.post_packet)
    app.router.add_post("/v1/packets:batch", service.post_batch)
    app.router.add_get("/healthz", service.healthz)
    app.router.add_get("/readyz", service.readyz)
    app.router.add_get("/openapi.json", service.openapi_endpoint)
    app.router.add_get("/docs", service.docs_endpoint)
    app.on_startup.append(service.on_startup)
    app.on_shutdown.append(service.on_shutdown)
    app.on_cleanup.append(service.on_cleanup)
    return app


def create_metrics_app(app: web.Application) -> web.Application:
    """The app of the metrics listener: GET /metrics of ``app``'s service, nothing else.

    Not on the device port: the metrics name no device, but they tell a stranger the fleet's
    size, its traffic and which refusals work; they are for Prometheus, on their own port
    (``metrics_host``, loopback unless configured)."""
    service = app[SERVICE_KEY]
    metrics_app = web.Application(middlewares=[problem_middleware], client_max_size=1024)
    metrics_app[SERVICE_KEY] = service
    metrics_app.router.add_get("/metrics", service.metrics_endpoint)
    return metrics_app


#: Connections the metrics listener serves at once: Prometheus holds one per scrape (two
#: HA replicas, a person with curl); a cap far below the device port's keeps a scrape
#: flood from costing the devices file descriptors.
METRICS_MAX_CONNECTIONS = 16
#: How long the metrics listener lets a scrape in flight finish at shutdown (seconds).
METRICS_SHUTDOWN_S = 1.0


def make_runner(
    app: web.Application,
    settings: IngestSettings,
    *,
    limits: ListenerLimits | None = None,
    **kwargs: Any,
) -> web.AppRunner:
    """The runner serving ``app``: problem documents for aiohttp's own refusals, the
    listener limits of ``settings`` (or ``limits``), the failed-authentication screen,
    :data:`SERVER_OPTIONS`, and half the shutdown budget for in-flight requests (the other
    half closes the producer)."""
    options: dict[str, Any] = {
        **SERVER_OPTIONS,
        "shutdown_timeout": settings.shutdown_timeout_s / 2,
        **kwargs,
    }
    service = app[SERVICE_KEY]
    return ProblemAppRunner(
        app,
        document=problem_document,
        on_refusal=service.refused_by_parser,
        limits=limits or settings.listener_limits,
        on_limit=service.connection_limited,
        screen=service.screen_connection,
        **options,
    )


def make_metrics_runner(metrics_app: web.Application, settings: IngestSettings) -> web.AppRunner:
    """The runner of :func:`create_metrics_app`: the device port's limits, but
    :data:`METRICS_MAX_CONNECTIONS`."""
    return make_runner(
        metrics_app,
        settings,
        limits=dataclasses.replace(
            settings.listener_limits, max_connections=METRICS_MAX_CONNECTIONS
        ),
        shutdown_timeout=METRICS_SHUTDOWN_S,
        access_log=None,
    )


#: Thresholds of the cyclic garbage collector in the serving process (CPython's: 700, 10,
#: 10). Each request allocates a few hundred container objects that die with it; with the
#: default, the young generation was collected ~200 times a second under 1,000 live
#: devices and the collector took 0.05–0.09 CPU-seconds per second (gc callbacks in a
#: bench_ingest run), ~10 % of ingest's CPU; with these, under 0.01. Memory is not at
#: stake: 20,000 young objects are a few MB.
GC_THRESHOLDS = (20_000, 20, 20)


def tune_gc() -> None:
    """Set :data:`GC_THRESHOLDS`, and move what start-up created (modules, the app, the
    settings) out of the collector's sight: it lives as long as the process."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run(settings: IngestSettings) -> None:
    """Serve until SIGTERM/SIGINT, then stop within shutdown_timeout_s: stop accepting
    connections, let in-flight requests finish (half the budget), give outstanding records
    the rest to be acknowledged and close the producer (never an unbounded flush)."""
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # kafka-python logs every reconnect attempt at ERROR; the sink reports the broker's
        # state itself (and /readyz shows it), so keep its chatter for --verbose.
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    app = create_app(settings)

    async def announce(_app: web.Application) -> None:
        logger.info(
            "ingest listening on http://%s:%d (POST /v1/packets[:batch] → topic %s; Kafka %s, "
            "profile %s; registry %s), metrics %s",
            settings.host,
            settings.port,
            settings.topics.raw,
            settings.kafka_bootstrap_servers,
            settings.kafka_profile,
            redact_url(settings.registry_url),
            f"on http://{settings.metrics_host}:{settings.metrics_port}/metrics"
            if settings.metrics_port
            else "off (metrics_port 0)",
        )

    async def farewell(_app: web.Application) -> None:
        logger.info(
            "ingest stopping: finishing in-flight requests and closing the producer (within %g s)",
            settings.shutdown_timeout_s,
        )

    app.on_startup.append(announce)
    app.on_shutdown.append(farewell)
    tune_gc()
    listeners = [
        Listener(
            make_runner(
                app,
                settings,
                access_log=logging.getLogger("aiohttp.access") if settings.access_log else None,
            ),
            settings.host,
            settings.port,
        )
    ]
    if settings.metrics_port:
        listeners.append(
            Listener(
                make_metrics_runner(create_metrics_app(app), settings),
                settings.metrics_host,
                settings.metrics_port,
            )
        )
    eventloop.run(
        serve_until_signalled(listeners, app[SERVICE_KEY].begin_shutdown), settings.event_loop
    )
    logger.info("ingest stopped")
