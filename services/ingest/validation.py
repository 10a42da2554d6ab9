"""Packet validation: a parsed body (JSON or MessagePack) → a validated packet, or precise
errors.

Pure: no HTTP, no Kafka. The HTTP layer maps :attr:`Invalid.status` and :attr:`Invalid.reason`
to its answer and metrics. Checks run in phases and stop after the first phase that fails,
so a body with wrong types is not also told about its values:

1. types (400 ``malformed``): object, required fields, JSON types, rows are arrays of numbers;
2. shape and fields (422): device id pattern, seq range, packet size, 6 values per row;
3. values (422): finite, physically possible, plausible sample rate and time.

``samples`` is an array of rows of 6 numbers; in a MessagePack body it may instead be one
``bin`` of packed little-endian float32, row after row (24 bytes a row). float32 holds
every value an IMU's 16-bit converter gives exactly, and becomes float64 exactly, so the
raw record holds exactly the values sent either way; unpacking it is one ``frombuffer``
instead of a Python object per value.

A packet whose device time starts before the device's last accepted packet although its seq
is higher is a clock that was set back: it is accepted and reported
(:attr:`ValidPacket.clock_went_back_s`), not refused. Refusing it lost every packet until
real time caught up with the clock's old reading (up to ``max_future_skew_s``), and the
preprocess worker handles it: a device-time jump between consecutive packets is a gap
there, its filters restart and its time is re-anchored.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.messages.raw import SAMPLE_WIDTH

#: Device ids: 1–64 characters of ``[A-Za-z0-9._:-]`` (also the Kafka key).
DEVICE_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
#: Python's ``$`` also matches before a final newline: match the whole string instead.
DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN.removeprefix("^").removesuffix("$"))
#: Largest sequence number (it travels as a signed 64-bit integer downstream).
MAX_SEQ = 2**63 - 1
#: 2000-01-01T00:00:00Z: a device clock before this was never set.
EARLIEST_SAMPLE_TIME = 946_684_800.0
#: Integers beyond ±2**53 do not survive the float64 conversion exactly, and are far
#: beyond any physical limit anyway.
_MAX_EXACT_INT = 2**53
#: Error lists are capped so a 2000-row packet of NaNs gets a short answer.
MAX_ERRORS = 20
#: Packed samples (MessagePack ``bin``): little-endian float32, 6 per row.
PACKED_DTYPE = np.dtype("<f4")
PACKED_ROW_BYTES = SAMPLE_WIDTH * PACKED_DTYPE.itemsize

ACC_COLUMNS = ("acc_x", "acc_y", "acc_z")
GYRO_COLUMNS = ("gyro_x", "gyro_y", "gyro_z")


class Reason(StrEnum):
    """Why a request (or a packet of a batch) was refused; the ``reason`` label of the
    rejections metric."""

    MALFORMED = "malformed"
    INVALID_FIELD = "invalid_field"
    INVALID_SHAPE = "invalid_shape"
    NON_FINITE = "non_finite"
    OUT_OF_RANGE = "out_of_range"
    BAD_RATE = "bad_rate"
    BAD_TIMESTAMP = "bad_timestamp"
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    #: Too many failed authentications from the request's source address.
    AUTH_RATE_LIMITED = "auth_rate_limited"
    BROKER_UNAVAILABLE = "broker_unavailable"
    REGISTRY_UNAVAILABLE = "registry_unavailable"
    #: The client closed the connection before its body was read (nobody gets the answer).
    CLIENT_DISCONNECTED = "client_disconnected"
    #: A packet of a batch with the device id and seq of an earlier packet of that batch.
    DUPLICATE = "duplicate"
    INTERNAL = "internal"


@dataclass(frozen=True)
class FieldError:
    """One problem with one field, row or value."""

    #: JSON path of the offending value: ``seq``, ``samples[3]``, ``samples[3][4]``, ``$``.
    field: str
    message: str
    reason: Reason


@dataclass(frozen=True)
class PacketLimits:
    """What a packet may contain."""

    max_samples: int = 2000
    #: Largest |acc| per axis (g).
    acc_limit_g: float = 16.0
    #: Largest |gyro| per axis (rad/s).
    gyro_limit_rad_s: float = 35.0
    min_sample_rate_hz: float = 10.0
    max_sample_rate_hz: float = 400.0
    #: How far ``first_sample_time`` may be ahead of the server clock (s).
    max_future_skew_s: float = 300.0


@dataclass(frozen=True)
class LastAccepted:
    """The device's most recent accepted packet (highest seq so far)."""

    seq: int
    first_sample_time: float


@dataclass(frozen=True, eq=False)
class ValidPacket:
    device_id: str
    seq: int
    #: Device-clock time of the first sample (Unix seconds).
    first_sample_time: float
    sample_rate_hz: float
    #: ``(n, 6)`` float64: acc xyz (g), gyro xyz (rad/s), exactly the values sent.
    samples: npt.NDArray[np.float64]
    #: Seconds the device clock went back: the packet's seq is above the last accepted one
    #: but it starts that much before it. None when time moved forward.
    clock_went_back_s: float | None = None

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[0])


@dataclass(frozen=True)
class Invalid:
    """A refused packet: the errors of the first failing phase, in body order."""

    errors: tuple[FieldError, ...]
    #: How many errors were found in that phase (``errors`` holds at most MAX_ERRORS).
    total: int

    @property
    def reason(self) -> Reason:
        return self.errors[0].reason

    @property
    def status(self) -> int:
        """400 for wrong types, 422 for well-formed but invalid content."""
        return 400 if self.reason is Reason.MALFORMED else 422

    @property
    def detail(self) -> str:
        first = self.errors[0]
        more = f" (and {self.total - 1} more)" if self.total > 1 else ""
        return f"{first.field}: {first.message}{more}"


class _Errors:
    def __init__(self) -> None:
        self.items: list[FieldError] = []
        self.total = 0

    def add(self, field: str, message: str, reason: Reason) -> None:
        self.total += 1
        if len(self.items) < MAX_ERRORS:
            self.items.append(FieldError(field, message, reason))

    def __bool__(self) -> bool:
        return self.total > 0

    def result(self) -> Invalid:
        return Invalid(tuple(self.items), self.total)


_JSON_TYPES = {type(None): "null", bool: "boolean", int: "number", float: "number"}
_JSON_TYPES |= {list: "array", dict: "object", bytes: "binary"}


def describe_type(value: Any) -> str:
    """How a parsed value reads in an error message."""
    if isinstance(value, str):
        return f"string {value[:20]!r}"
    return _JSON_TYPES.get(type(value), type(value).__name__)


_json_type = describe_type


def _is_number(value: Any) -> bool:
    # bool is an int subclass in Python but never a number in a packet.
    return type(value) is float or type(value) is int


def _as_float(value: int | float) -> float | None:
    """A JSON number as a float, or None for an integer too large for float64 (``1e400``
    written out in digits): ``float()`` would raise OverflowError."""
    try:
        return float(value)
    except OverflowError:
        return None


def validate_packet(
    body: Any, limits: PacketLimits, now: float, last: LastAccepted | None = None
) -> ValidPacket | Invalid:
    """Check a parsed body (a JSON or MessagePack document).

    ``now`` is the server's Unix time; ``last`` the device's last accepted packet, used to
    notice a newer packet (higher seq) that starts before it: a clock set back, reported in
    :attr:`ValidPacket.clock_went_back_s`. Lower seqs are retries or reordering: the
    preprocess worker deduplicates and reorders.
    """
    return _valid_fast(body, limits, now, last) or _validate(body, limits, now, last)


def _valid_fast(  # noqa: PLR0911 - None as soon as anything is off
    body: Any, limits: PacketLimits, now: float, last: LastAccepted | None
) -> ValidPacket | None:
    """The packet if it is valid, checked with a few whole-array operations; None if
    anything is off, and :func:`_validate` then finds and words the errors.

    The per-value walk of :func:`_validate` cost ~60 µs of a 50-sample packet's CPU; here
    the types are collected by ``map(type, ...)`` in C and the values are checked on one
    numpy array. Whatever this accepts, :func:`_validate` accepts with the same result
    (``tests/unit/test_ingest_validation.py`` checks both on generated bodies).
    """
    if type(body) is not dict:
        return None
    device_id = body.get("device_id")
    seq = body.get("seq")
    first_time = body.get("first_sample_time")
    rate = body.get("sample_rate_hz")
    samples = body.get("samples")
    if (
        type(device_id) is not str
        or type(seq) is not int
        or not 0 <= seq <= MAX_SEQ
        or not DEVICE_ID_RE.fullmatch(device_id)
    ):
        return None
    # Exact float64 values only: an int beyond 2**53 is not (and far outside every limit).
    if type(first_time) is float:
        time_value = first_time
    elif type(first_time) is int and -_MAX_EXACT_INT <= first_time <= _MAX_EXACT_INT:
        time_value = float(first_time)
    else:
        return None
    if type(rate) is float:
        rate_value = rate
    elif type(rate) is int and -_MAX_EXACT_INT <= rate <= _MAX_EXACT_INT:
        rate_value = float(rate)
    else:
        return None
    # NaN fails every comparison, infinities fail the bounds.
    if not (
        limits.min_sample_rate_hz <= rate_value <= limits.max_sample_rate_hz
        and EARLIEST_SAMPLE_TIME <= time_value <= now + limits.max_future_skew_s
    ):
        return None
    array = _rows_fast(samples, limits) if type(samples) is list else None
    if array is None:
        if type(samples) is not bytes:
            return None
        array = _packed(samples, limits.max_samples)
        if array is None:
            return None
    # NaN compares false, so finite values within the limits are exactly the ones kept;
    # ints beyond 2**53 are beyond the limits too.
    if not (np.abs(array) <= _limit_row(limits)).all():
        return None
    went_back_s = None
    if last is not None and seq > last.seq and time_value < last.first_sample_time:
        went_back_s = last.first_sample_time - time_value
    return ValidPacket(device_id, seq, time_value, rate_value, array, went_back_s)


_NUMBER_TYPES = frozenset((float, int))


def _rows_fast(samples: list[Any], limits: PacketLimits) -> npt.NDArray[np.float64] | None:
    """Rows of 6 numbers as a float64 array, or None if anything is off."""
    if not 0 < len(samples) <= limits.max_samples or set(map(type, samples)) != {list}:
        return None
    kinds = set(map(type, itertools.chain.from_iterable(samples)))
    if not kinds <= _NUMBER_TYPES:
        return None
    try:
        array = np.asarray(samples, dtype=np.float64)
    except (ValueError, OverflowError):  # ragged rows; an int beyond float64
        return None
    if array.shape != (len(samples), SAMPLE_WIDTH):
        return None
    return array


def _packed(samples: bytes, max_samples: int) -> npt.NDArray[np.float64] | None:
    """Packed float32 rows as a float64 array (exact), or None if the size is not 1 to
    ``max_samples`` whole rows."""
    rows, rest = divmod(len(samples), PACKED_ROW_BYTES)
    if rest or not 0 < rows <= max_samples:
        return None
    return np.frombuffer(samples, dtype=PACKED_DTYPE).reshape(rows, SAMPLE_WIDTH).astype(np.float64)


def _limit_row(limits: PacketLimits) -> npt.NDArray[np.float64]:
    return np.array([limits.acc_limit_g] * 3 + [limits.gyro_limit_rad_s] * 3)


def _validate(  # noqa: PLR0911 - one return per validation phase
    body: Any, limits: PacketLimits, now: float, last: LastAccepted | None = None
) -> ValidPacket | Invalid:
    """The reference validation: every check, every error worded (see the module docstring)."""
    if not isinstance(body, dict):
        errors = _Errors()
        errors.add("$", f"expected an object, got {_json_type(body)}", Reason.MALFORMED)
        return errors.result()

    types = _Errors()
    device_id = body.get("device_id")
    seq = body.get("seq")
    first_time = body.get("first_sample_time")
    rate = body.get("sample_rate_hz")
    samples = body.get("samples")
    for name, value, ok, expected in (
        ("device_id", device_id, isinstance(device_id, str), "a string"),
        ("seq", seq, type(seq) is int, "an integer"),
        ("first_sample_time", first_time, _is_number(first_time), "a number (Unix seconds)"),
        ("sample_rate_hz", rate, _is_number(rate), "a number (Hz)"),
        (
            "samples",
            samples,
            isinstance(samples, list | bytes),
            "an array of [ax, ay, az, gx, gy, gz] (or, in MessagePack, a bin of packed "
            "little-endian float32)",
        ),
    ):
        if name not in body:
            types.add(name, f"is required ({expected})", Reason.MALFORMED)
        elif not ok:
            types.add(name, f"must be {expected}, got {_json_type(value)}", Reason.MALFORMED)
    if types:
        return types.result()
    assert isinstance(device_id, str) and isinstance(seq, int)
    assert isinstance(samples, list | bytes)
    time_value = _as_float(first_time)  # type: ignore[arg-type]
    rate_value = _as_float(rate)  # type: ignore[arg-type]

    shape = _Errors()
    if not DEVICE_ID_RE.fullmatch(device_id):
        shape.add("device_id", "must be 1–64 characters of [A-Za-z0-9._:-]", Reason.INVALID_FIELD)
    if seq < 0 or seq > MAX_SEQ:
        shape.add("seq", f"must be between 0 and {MAX_SEQ}, got {seq}", Reason.INVALID_FIELD)
    values = _Errors()
    if isinstance(samples, bytes):
        rows = _packed_rows(samples, limits, shape)
        if shape:
            return shape.result()
        assert rows is not None
        return _check_values(
            device_id, seq, time_value, rate_value, rows, limits, now, last, values
        )
    n = len(samples)
    if n == 0:
        shape.add("samples", "must hold at least one sample", Reason.INVALID_SHAPE)
    elif n > limits.max_samples:
        shape.add(
            "samples",
            f"holds {n} samples, at most {limits.max_samples} are accepted per packet",
            Reason.INVALID_SHAPE,
        )
        return shape.result()  # don't walk an oversized packet's rows

    # One pass over the rows finds type errors (reported alone, as 400), wrong row
    # lengths and integers too large to convert.
    row_types = _Errors()
    for i, row in enumerate(samples):
        if type(row) is not list:
            row_types.add(
                f"samples[{i}]",
                f"must be an array of {SAMPLE_WIDTH} numbers, got {_json_type(row)}",
                Reason.MALFORMED,
            )
            continue
        if len(row) != SAMPLE_WIDTH:
            shape.add(
                f"samples[{i}]",
                f"has {len(row)} values, expected {SAMPLE_WIDTH} (acc xyz in g, gyro xyz in rad/s)",
                Reason.INVALID_SHAPE,
            )
        for j, value in enumerate(row):
            kind = type(value)
            if kind is float:
                continue
            if kind is int:
                if not -_MAX_EXACT_INT <= value <= _MAX_EXACT_INT:
                    values.add(
                        f"samples[{i}][{j}]",
                        "is far outside the physical range",
                        Reason.OUT_OF_RANGE,
                    )
                continue
            row_types.add(
                f"samples[{i}][{j}]", f"must be a number, got {_json_type(value)}", Reason.MALFORMED
            )
    if row_types:
        return row_types.result()
    if shape:
        return shape.result()

    array = None
    if not values:  # integers beyond ±2**53 were found: don't convert
        array = np.asarray(samples, dtype=np.float64)
    return _check_values(device_id, seq, time_value, rate_value, array, limits, now, last, values)


def _packed_rows(
    samples: bytes, limits: PacketLimits, shape: _Errors
) -> npt.NDArray[np.float64] | None:
    """Packed float32 rows as float64, or None with the reason added to ``shape``."""
    rows, rest = divmod(len(samples), PACKED_ROW_BYTES)
    if rest:
        shape.add(
            "samples",
            f"packed samples are {len(samples)} bytes, not whole rows of {PACKED_ROW_BYTES} "
            f"({SAMPLE_WIDTH} little-endian float32: acc xyz in g, gyro xyz in rad/s)",
            Reason.INVALID_SHAPE,
        )
    elif rows == 0:
        shape.add("samples", "must hold at least one sample", Reason.INVALID_SHAPE)
    elif rows > limits.max_samples:
        shape.add(
            "samples",
            f"holds {rows} samples, at most {limits.max_samples} are accepted per packet",
            Reason.INVALID_SHAPE,
        )
    return None if shape else _packed(samples, limits.max_samples)


def _check_values(
    device_id: str,
    seq: int,
    time_value: float | None,
    rate_value: float | None,
    array: npt.NDArray[np.float64] | None,
    limits: PacketLimits,
    now: float,
    last: LastAccepted | None,
    values: _Errors,
) -> ValidPacket | Invalid:
    """Phase 3 (values) of :func:`_validate`, for rows already read into ``array`` (None:
    integers too large to convert were found, reported in ``values`` already)."""
    for field, value in (("first_sample_time", time_value), ("sample_rate_hz", rate_value)):
        if value is None:
            values.add(field, "is far outside any plausible range", Reason.OUT_OF_RANGE)
        elif not math.isfinite(value):
            values.add(field, "must be finite", Reason.NON_FINITE)
    if array is not None:
        _check_samples(array, limits, values)
    rate = math.nan if rate_value is None else rate_value  # nan: reported above
    if math.isfinite(rate) and not limits.min_sample_rate_hz <= rate <= limits.max_sample_rate_hz:
        values.add(
            "sample_rate_hz",
            f"{rate:g} Hz is outside [{limits.min_sample_rate_hz:g}, "
            f"{limits.max_sample_rate_hz:g}] Hz",
            Reason.BAD_RATE,
        )
    first_time = math.nan if time_value is None else time_value  # nan: reported above
    went_back_s = None
    if math.isfinite(first_time):
        if first_time < EARLIEST_SAMPLE_TIME:
            values.add(
                "first_sample_time",
                f"{first_time:.3f} is before 2000-01-01: is the device clock set?",
                Reason.BAD_TIMESTAMP,
            )
        elif first_time > now + limits.max_future_skew_s:
            values.add(
                "first_sample_time",
                f"lies {first_time - now:.1f} s in the future (at most "
                f"{limits.max_future_skew_s:g} s of clock skew is accepted)",
                Reason.BAD_TIMESTAMP,
            )
        elif last is not None and seq > last.seq and first_time < last.first_sample_time:
            went_back_s = last.first_sample_time - first_time
    if values:
        return values.result()
    assert array is not None
    return ValidPacket(device_id, seq, first_time, rate, array, went_back_s)


def _check_samples(array: npt.NDArray[np.float64], limits: PacketLimits, errors: _Errors) -> None:
    finite = np.isfinite(array)
    if not finite.all():
        for i, j in np.argwhere(~finite)[:MAX_ERRORS]:
            errors.add(f"samples[{i}][{j}]", "must be finite", Reason.NON_FINITE)
        errors.total += int((~finite).sum()) - min(int((~finite).sum()), MAX_ERRORS)
        return
    limit = np.array([limits.acc_limit_g] * 3 + [limits.gyro_limit_rad_s] * 3)
    outside = np.abs(array) > limit
    if outside.any():
        positions = np.argwhere(outside)
        for i, j in positions[:MAX_ERRORS]:
            if j < 3:
                message = f"{ACC_COLUMNS[j]} = {array[i, j]:g} g exceeds ±{limits.acc_limit_g:g} g"
            else:
                message = (
                    f"{GYRO_COLUMNS[j - 3]} = {array[i, j]:g} rad/s exceeds "
                    f"±{limits.gyro_limit_rad_s:g} rad/s"
                )
            errors.add(f"samples[{i}][{j}]", message, Reason.OUT_OF_RANGE)
        errors.total += len(positions) - min(len(positions), MAX_ERRORS)
