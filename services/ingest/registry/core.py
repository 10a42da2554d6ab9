"""The registry's records, its interface (:class:`DeviceRegistry`) and the pure helpers both
stores share: id and token checks, row <-> record conversion, the constant-time token
re-check and the error messages. No store I/O here: :mod:`.sqlite` and :mod:`.postgres`
do that.
"""

from __future__ import annotations

import builtins
import time
import zoneinfo
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import cache
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

from services.ingest.errors import (
    DeviceExistsError,
    GatewayExistsError,
    InvalidDeviceError,
    UnknownDeviceError,
)
from services.ingest.tokens import check_token_format, generate_token, hash_token, verify_token
from services.ingest.validation import DEVICE_ID_RE


@dataclass(frozen=True)
class DeviceRecord:
    device_id: str
    #: SHA-256 hex of the device's token.
    token_hash: str
    label: str
    #: Unix seconds.
    created_at: float
    #: Unix seconds, or None while the device may post.
    revoked_at: float | None
    #: IANA time zone of the wearer (``Europe/Paris``): where its days start and end.
    timezone: str = "UTC"

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def public(self) -> dict[str, Any]:
        """The record without its token hash (for listings)."""
        data = asdict(self)
        del data["token_hash"]
        return data


@dataclass(frozen=True)
class GatewayRecord:
    gateway_id: str
    #: SHA-256 hex of the gateway's token.
    token_hash: str
    label: str
    #: Unix seconds.
    created_at: float
    #: Unix seconds, or None while the gateway may forward.
    revoked_at: float | None
    #: The devices whose packets this gateway's token authenticates.
    device_ids: frozenset[str]

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def public(self) -> dict[str, Any]:
        """The record without its token hash (for listings), device ids sorted."""
        return {
            "gateway_id": self.gateway_id,
            "label": self.label,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "device_ids": sorted(self.device_ids),
        }


class NewDevice(NamedTuple):
    """A device to register with :meth:`DeviceRegistry.add_many`."""

    device_id: str
    label: str = ""
    #: The device's token; None: one is generated.
    token: str | None = None
    #: IANA time zone name (checked with :func:`check_timezone`).
    timezone: str = "UTC"


class DeviceRegistry(Protocol):
    """Blocking registry operations (thread-safe)."""

    def add(
        self, device_id: str, label: str = "", token: str | None = None, timezone: str = "UTC"
    ) -> tuple[DeviceRecord, str]:
        """Register a device; returns its record and its token (generated unless given).
        :class:`DeviceExistsError` if the id (or the given token) is already registered."""
        ...

    def add_many(self, devices: Sequence[NewDevice]) -> list[tuple[DeviceRecord, str]]:
        """Register ``devices`` in one transaction: all of them, or (any id or given token
        already registered, or repeated among them) none, with :class:`DeviceExistsError`
        naming one. Returns each one's record and token, in order."""
        ...

    def get(self, device_id: str) -> DeviceRecord | None: ...

    def find_by_token(self, token: str) -> DeviceRecord | None:
        """The device this token belongs to (revoked or not), or None."""
        ...

    def find_by_token_hashes(self, token_hashes: Sequence[str]) -> dict[str, DeviceRecord]:
        """The devices (revoked or not) whose token hashes are among ``token_hashes``, by
        hash; a hash of no device is absent. For re-reading cached lookups in one call: a
        cached hash was checked against its token when the token was first looked up."""
        ...

    def get_many(self, device_ids: Sequence[str]) -> dict[str, DeviceRecord]:
        """The registered devices among ``device_ids``, by id (revoked or not)."""
        ...

    def list(self) -> list[DeviceRecord]: ...

    def revoke(self, device_id: str) -> DeviceRecord:
        """Mark a device revoked (idempotent); :class:`UnknownDeviceError` if absent."""
        ...

    def set_timezone(self, device_id: str, timezone: str) -> DeviceRecord:
        """Set the device's IANA time zone (:class:`InvalidDeviceError` if unknown);
        :class:`UnknownDeviceError` if the device is absent."""
        ...

    def add_gateway(
        self, gateway_id: str, device_ids: Sequence[str], label: str = "", token: str | None = None
    ) -> tuple[GatewayRecord, str]:
        """Register a gateway bound to ``device_ids`` (each a registered device, else
        :class:`UnknownDeviceError`); returns its record and its token (generated unless
        given). :class:`GatewayExistsError` if the id or the token is already registered
        (for a gateway or a device)."""
        ...

    def get_gateway(self, gateway_id: str) -> GatewayRecord | None: ...

    def find_gateway_by_token(self, token: str) -> GatewayRecord | None:
        """The gateway this token belongs to (revoked or not), or None."""
        ...

    # builtins.list: in a class body, "list" is the class's own list method.
    def list_gateways(self) -> builtins.list[GatewayRecord]: ...

    def bind_gateway(
        self, gateway_id: str, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> GatewayRecord:
        """Bind the devices ``add`` (registered ones, else :class:`UnknownDeviceError`) to
        the gateway and unbind ``remove``; :class:`UnknownGatewayError` if it is absent."""
        ...

    def revoke_gateway(self, gateway_id: str) -> GatewayRecord:
        """Mark a gateway revoked (idempotent); :class:`UnknownGatewayError` if absent."""
        ...

    def ping(self) -> None:
        """Raise :class:`RegistryUnavailableError` unless the store answers."""
        ...

    def close(self) -> None: ...


DEFAULT_TIMEZONE = "UTC"


@cache
def _known_timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_timezone(name: str) -> str:
    """``name`` if it is an IANA time zone this system knows (``Europe/Paris``, ``UTC``),
    else :class:`InvalidDeviceError`. Membership of the tz database's list, not a ZoneInfo
    lookup: a lookup would also take file-like names the registry should not store."""
    if name not in _known_timezones():
        raise InvalidDeviceError(
            f"time zone {name!r} is not an IANA time zone name such as 'Europe/Paris' or 'UTC'"
        )
    return name


# -- checks shared by devices and gateways ----------------------------------------------------


def _check_id(kind: Literal["device", "gateway"], id_: str) -> None:
    """:class:`InvalidDeviceError` unless ``id_`` follows ``DEVICE_ID_RE`` (device and
    gateway ids alike); ``kind`` names which in the message."""
    if not DEVICE_ID_RE.fullmatch(id_):
        raise InvalidDeviceError(f"{kind} id {id_!r} must be 1–64 characters of [A-Za-z0-9._:-]")


def _token_or_new(token: str | None) -> str:
    """``token`` if it is well formed (else :class:`InvalidDeviceError`); a new one if None."""
    if token is None:
        return generate_token()
    problem = check_token_format(token)
    if problem:
        raise InvalidDeviceError(problem)
    return token


R = TypeVar("R", DeviceRecord, GatewayRecord)


def _matching(record: R | None, token: str) -> R | None:
    # The lookup is by hash equality in the store; re-check in constant time so the
    # answer never depends on a store's collation or comparison quirks. A miss compares
    # against a dummy, so found and not found cost the same.
    if verify_token(token, None if record is None else record.token_hash):
        return record
    return None


# -- devices ----------------------------------------------------------------------------------


def _check_new_device(device_id: str, token: str | None) -> str:
    _check_id("device", device_id)
    return _token_or_new(token)


def _new_records(devices: Sequence[NewDevice]) -> list[tuple[DeviceRecord, str]]:
    """Records and tokens of ``devices``, checked as :meth:`DeviceRegistry.add` checks one,
    and against each other (a repeated id or token would fail the transaction anyway; here
    it is named)."""
    now = time.time()
    out = []
    ids: set[str] = set()
    hashes: set[str] = set()
    for device in devices:
        token = _check_new_device(device.device_id, device.token)
        record = DeviceRecord(
            device.device_id,
            hash_token(token),
            device.label,
            now,
            None,
            check_timezone(device.timezone),
        )
        if device.device_id in ids:
            raise DeviceExistsError(f"device {device.device_id!r} is listed twice")
        if record.token_hash in hashes:
            raise DeviceExistsError(f"device {device.device_id!r} repeats another one's token")
        ids.add(device.device_id)
        hashes.add(record.token_hash)
        out.append((record, token))
    return out


def _row(record: DeviceRecord) -> tuple[Any, ...]:
    return (
        record.device_id,
        record.token_hash,
        record.label,
        record.created_at,
        None,
        record.timezone,
    )


_COLUMNS = "device_id, token_hash, label, created_at, revoked_at, timezone"
#: Added after the first release: registries created before it get it on open (ALTER).
_TIMEZONE_COLUMN = f"timezone TEXT NOT NULL DEFAULT '{DEFAULT_TIMEZONE}'"


def _record(row: Any) -> DeviceRecord:
    device_id, token_hash, label, created_at, revoked_at, timezone = row
    return DeviceRecord(
        device_id=device_id,
        token_hash=token_hash,
        label=label,
        created_at=float(created_at),
        revoked_at=None if revoked_at is None else float(revoked_at),
        timezone=timezone,
    )


def _exists_error(device_id: str, message: str) -> DeviceExistsError:
    if "token_hash" in message:
        return DeviceExistsError("that token is already registered for another device")
    return DeviceExistsError(f"device {device_id!r} is already registered")


def _no_gateway_token(added: Sequence[tuple[DeviceRecord, str]], gateway_hashes: set[str]) -> None:
    """:class:`DeviceExistsError` if a new device's token is a gateway's: one secret must
    not authenticate both (the gateways are few, so their hashes are read whole)."""
    for record, _ in added:
        if record.token_hash in gateway_hashes:
            raise DeviceExistsError(
                f"device {record.device_id!r}: that token is already registered for a gateway"
            )


# -- gateways ---------------------------------------------------------------------------------

_GATEWAY_COLUMNS = "gateway_id, token_hash, label, created_at, revoked_at, device_ids"


def _check_new_gateway(gateway_id: str, device_ids: Sequence[str], token: str | None) -> str:
    _check_id("gateway", gateway_id)
    _check_device_ids(device_ids)
    return _token_or_new(token)


def _check_device_ids(device_ids: Sequence[str]) -> None:
    for device_id in device_ids:
        _check_id("device", device_id)


def _unknown_devices(wanted: Sequence[str], registered: set[str]) -> UnknownDeviceError | None:
    missing = sorted(set(wanted) - registered)
    if not missing:
        return None
    shown = ", ".join(repr(m) for m in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return UnknownDeviceError(
        f"no device {shown}{more} in the registry: register devices before binding them "
        "to a gateway"
    )


def _encode_ids(device_ids: frozenset[str]) -> str:
    # Device ids hold no spaces (DEVICE_ID_RE), so one sorted, space-separated column keeps
    # a gateway in one row: its token lookup is one indexed read.
    return " ".join(sorted(device_ids))


def _gateway_row(record: GatewayRecord) -> tuple[Any, ...]:
    return (
        record.gateway_id,
        record.token_hash,
        record.label,
        record.created_at,
        record.revoked_at,
        _encode_ids(record.device_ids),
    )


def _gateway_record(row: Any) -> GatewayRecord:
    gateway_id, token_hash, label, created_at, revoked_at, device_ids = row
    return GatewayRecord(
        gateway_id=gateway_id,
        token_hash=token_hash,
        label=label,
        created_at=float(created_at),
        revoked_at=None if revoked_at is None else float(revoked_at),
        device_ids=frozenset(device_ids.split()),
    )


def _gateway_exists(gateway_id: str, message: str) -> GatewayExistsError:
    if "token_hash" in message:
        return GatewayExistsError("that token is already registered")
    return GatewayExistsError(f"gateway {gateway_id!r} is already registered")


def _rebound(record: GatewayRecord, add: Sequence[str], remove: Sequence[str]) -> GatewayRecord:
    return replace(record, device_ids=(record.device_ids | frozenset(add)) - frozenset(remove))
