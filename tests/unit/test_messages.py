"""Schemas: every message round-trips exactly, and bad bytes fail with SchemaError (never
another exception a worker would not catch)."""

from __future__ import annotations

import contextlib
import json
import struct
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import SchemaError
from shared.features import MotionFeatures, motion_features
from shared.messages import (
    Alert,
    AlertState,
    AlertType,
    DeadLetter,
    Heartbeat,
    Prediction,
    RawPacket,
    Severity,
    WindowMessage,
)
from shared.messages.codec import decode_frame, encode_frame, number
from shared.messages.raw import check_placement, encode_bundle, raw_packets, split_raw
from shared.topics import Topics

RNG = np.random.default_rng(0)
WINDOW = RNG.normal(size=(128, 9)).astype(np.float32)
FEATURES = motion_features(WINDOW)


def _window() -> WindowMessage:
    return WindowMessage(
        device_id="dev-1",
        start_index=640,
        start_time=1_700_000_012.8,
        end_time=1_700_000_015.36,
        fingerprint="0123456789abcdef",
        ingested_at=1_700_000_015.5,
        emitted_at=1_700_000_015.51,
        features=FEATURES,
        data=WINDOW,
    )


def _prediction() -> Prediction:
    return Prediction(
        window_id="dev-1:640",
        device_id="dev-1",
        start_index=640,
        start_time=1.0,
        end_time=3.56,
        label="LAYING",
        probabilities=(0.0, 0.01, 0.0, 0.02, 0.07, 0.9),
        model_name="har",
        model_version=3,
        features=FEATURES,
        ingested_at=10.0,
        window_emitted_at=10.02,
        produced_at=10.1,
        queue_wait_s=0.03,
        inference_s=0.004,
    )


def test_raw_packet_round_trip_is_bit_exact() -> None:
    samples = RNG.normal(size=(50, 6))
    packet = RawPacket("dev-1", 7, 1_700_000_000.123456, 50.0, samples, 1_700_000_001.0)
    decoded = RawPacket.from_bytes(packet.to_bytes())
    assert decoded.equals(packet)
    assert decoded.samples.dtype == np.float64


def test_window_round_trip_and_size() -> None:
    message = _window()
    data = message.to_bytes()
    decoded = WindowMessage.from_bytes(data)
    assert np.array_equal(decoded.data, WINDOW)
    assert decoded.window_id == "dev-1:640"
    assert decoded.features == FEATURES
    assert (decoded.start_time, decoded.end_time) == (message.start_time, message.end_time)
    # 4,608 bytes of float32 plus a small header: far below JSON's ~20 KB.
    assert len(data) < 5_400


def test_prediction_alert_dead_letter_round_trip() -> None:
    prediction = _prediction()
    assert Prediction.from_bytes(prediction.to_bytes()) == prediction
    assert prediction.confidence == 0.9
    assert prediction.end_to_end_s == pytest.approx(0.1)
    alert = Alert(
        "a-1",
        "dev-1",
        AlertType.FALL_SUSPECTED,
        AlertState.OPEN,
        Severity.CRITICAL,
        "impact 3.1 g then lying 30 s",
        5.0,
        5.0,
        details={"peak_acc_g": 3.1},
    )
    assert Alert.from_bytes(alert.to_bytes()) == alert
    letter = DeadLetter(
        "preprocess", "bad magic", "SchemaError", "t", 3, 42, b"dev", b"\x00\xff", 9.0
    )
    assert DeadLetter.from_bytes(letter.to_bytes()) == letter


def test_prediction_model_label_is_additive() -> None:
    labelled = replace(_prediction(), model_label="canary")
    assert Prediction.from_bytes(labelled.to_bytes()) == labelled
    # A record written before the field existed decodes as unlabelled...
    body = json.loads(_prediction().to_bytes())
    del body["model_label"]
    old = Prediction.from_bytes(json.dumps(body).encode())
    assert old == _prediction() and old.model_label == ""
    # ...and one that carries it is still what an older reader expects (same schema version).
    assert json.loads(labelled.to_bytes())["v"] == body["v"]
    with pytest.raises(SchemaError, match="model_label"):
        Prediction.from_bytes(json.dumps({**body, "model_label": 7}).encode())


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"HW",
        b"XX\x01\x00\x00\x00\x02{}",
        b"HW\x09\x00\x00\x00\x02{}",  # unknown version
        b"HW\x01\x00\x00\x10\x00{}",  # header longer than the message
        b"HW\x01\x00\x00\x00\x02[]",  # header not an object
        b"HW\x01\x00\x00\x00\x03{x}",  # header not JSON
    ],
)
def test_bad_window_frames_raise_schema_error(data: bytes) -> None:
    with pytest.raises(SchemaError):
        WindowMessage.from_bytes(data)


def test_truncated_payload_and_wrong_types_raise_schema_error() -> None:
    data = _window().to_bytes()
    with pytest.raises(SchemaError, match="float32"):
        WindowMessage.from_bytes(data[:-4])
    body = _prediction().to_bytes().replace(b'"model_version":3', b'"model_version":"3"')
    with pytest.raises(SchemaError, match="model_version"):
        Prediction.from_bytes(body)
    with pytest.raises(SchemaError):
        Prediction.from_bytes(_prediction().to_bytes().replace(b"LAYING", b"DANCING"))
    with pytest.raises(SchemaError):
        RawPacket.from_bytes(_window().to_bytes())


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_schema_error(data: bytes) -> None:
    for cls in (RawPacket, WindowMessage, Prediction, Alert, DeadLetter):
        with contextlib.suppress(SchemaError):
            cls.from_bytes(data)


def _alert() -> Alert:
    return Alert(
        "a-1", "dev-1", AlertType.INACTIVITY, AlertState.OPEN, Severity.WARNING, "still", 5.0, 5.0
    )


def _letter() -> DeadLetter:
    return DeadLetter("preprocess", "bad magic", "SchemaError", "t", 3, 42, b"k", b"v", 9.0)


def _raw() -> RawPacket:
    return RawPacket("dev-1", 7, 1_700_000_000.5, 50.0, RNG.normal(size=(4, 6)), 1_700_000_001.0)


def _reframe(data: bytes, header: dict[str, Any] | str) -> bytes:
    """``data`` (a valid frame) with its header replaced by ``header`` (a dict, or raw JSON)."""
    magic, version, head_len = struct.unpack_from(">2sBI", data)
    payload = data[7 + head_len :]
    text = header if isinstance(header, str) else json.dumps(header)
    head = text.encode()
    return struct.pack(">2sBI", magic, version, len(head)) + head + payload


def _frame_header(data: bytes) -> dict[str, Any]:
    (head_len,) = struct.unpack_from(">I", data, 3)
    header: dict[str, Any] = json.loads(data[7 : 7 + head_len])
    return header


#: Every number field a decoder converts to float, per message kind.
_FLOAT_FIELDS: dict[type, tuple[str, ...]] = {
    RawPacket: ("first_sample_time", "sample_rate_hz", "received_at"),
    WindowMessage: ("start_time", "end_time", "ingested_at", "emitted_at"),
    Prediction: (
        "start_time",
        "end_time",
        "ingested_at",
        "window_emitted_at",
        "produced_at",
        "queue_wait_s",
        "inference_s",
    ),
    Alert: ("opened_at", "updated_at"),
    DeadLetter: ("failed_at",),
}


def _valid_bytes(cls: type) -> bytes:
    makers = {
        RawPacket: _raw,
        WindowMessage: _window,
        Prediction: _prediction,
        Alert: _alert,
        DeadLetter: _letter,
    }
    return makers[cls]().to_bytes()  # type: ignore[no-any-return, operator]


def _with_field(cls: type, name: str, raw_json: str) -> bytes:
    """A valid message of ``cls`` with field ``name`` set to the JSON text ``raw_json``."""
    data = _valid_bytes(cls)
    marker = "__HOSTILE__"
    if cls in (RawPacket, WindowMessage):
        header = _frame_header(data)
        header[name] = marker
        return _reframe(data, json.dumps(header).replace(f'"{marker}"', raw_json))
    body = json.loads(data)
    body[name] = marker
    return json.dumps(body).replace(f'"{marker}"', raw_json).encode()


_HOSTILE_NUMBERS = [
    "9" * 400,  # an integer float() overflows on (OverflowError)
    "-" + "9" * 400,
    "9" * 5000,  # beyond Python's 4,300-digit int limit (ValueError in json)
    "1e400",  # json parses it to inf
    "NaN",
    "Infinity",
    "-Infinity",
    '"1.5"',
    '"nan"',
    "true",
    "null",
    "[1.5]",
    "{}",
]


@pytest.mark.parametrize("cls", list(_FLOAT_FIELDS))
@pytest.mark.parametrize("raw_json", _HOSTILE_NUMBERS)
def test_hostile_number_fields_raise_schema_error(cls: type, raw_json: str) -> None:
    for name in _FLOAT_FIELDS[cls]:
        data = _with_field(cls, name, raw_json)
        with pytest.raises(SchemaError):
            cls.from_bytes(data)  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", [WindowMessage, Prediction])
@pytest.mark.parametrize("raw_json", _HOSTILE_NUMBERS)
def test_hostile_motion_features_raise_schema_error(cls: type, raw_json: str) -> None:
    features = json.dumps(FEATURES.to_dict()).replace(json.dumps(FEATURES.peak_acc_g), raw_json, 1)
    with pytest.raises(SchemaError, match=r"peak_acc_g|JSON"):
        cls.from_bytes(_with_field(cls, "features", features))  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", ["nan", "inf", "1.5", None, True, 10**400, float("nan")])
def test_motion_features_accept_only_finite_numbers(value: Any) -> None:
    values: dict[str, Any] = {**FEATURES.to_dict(), "min_acc_g": value}
    with pytest.raises(SchemaError, match="min_acc_g"):
        MotionFeatures.from_dict(values)
    assert MotionFeatures.from_dict({**FEATURES.to_dict(), "min_acc_g": 0}).min_acc_g == 0.0


def test_motion_features_written_before_gyro_spread_existed_still_decode() -> None:
    older = {k: v for k, v in FEATURES.to_dict().items() if k != "gyro_std_rad_s"}
    decoded = MotionFeatures.from_dict(older)
    assert decoded.gyro_std_rad_s is None
    assert decoded.to_dict() == older  # and re-encode as they were written
    assert FEATURES.gyro_std_rad_s is not None
    assert MotionFeatures.from_dict(FEATURES.to_dict()) == FEATURES
    assert MotionFeatures.from_dict({**older, "gyro_std_rad_s": None}) == decoded
    with pytest.raises(SchemaError, match="gyro_std_rad_s"):
        MotionFeatures.from_dict({**older, "gyro_std_rad_s": "0.1"})


@pytest.mark.parametrize("probability", [*_HOSTILE_NUMBERS, '"a"'])
def test_hostile_probabilities_raise_schema_error(probability: str) -> None:
    data = _with_field(Prediction, "probabilities", f"[{probability},0,0,0,0,1]")
    with pytest.raises(SchemaError):
        Prediction.from_bytes(data)


def test_every_decoded_prediction_re_encodes() -> None:
    # A decoder that let NaN through made inference's to_bytes() (allow_nan=False) fail later.
    prediction = Prediction.from_bytes(_with_field(Prediction, "inference_s", "0"))
    assert Prediction.from_bytes(prediction.to_bytes()) == prediction


@pytest.mark.parametrize(
    "text", ["[" * 50_000, '{"a":' * 50_000, "[" * 50_000 + "]" * 50_000, "9" * 5000, "NaN"]
)
def test_hostile_json_documents_raise_schema_error(text: str) -> None:
    for cls in (RawPacket, WindowMessage):
        with pytest.raises(SchemaError):
            cls.from_bytes(_reframe(_valid_bytes(cls), text))
    for json_cls in (Prediction, Alert, DeadLetter):
        with pytest.raises(SchemaError):
            json_cls.from_bytes(text.encode())  # type: ignore[attr-defined]


def test_non_finite_values_anywhere_in_json_are_refused() -> None:
    # Alert details are free-form: NaN or 1e400 there would break re-encoding too.
    for raw_json in ("NaN", "1e400", "-Infinity"):
        with pytest.raises(SchemaError):
            Alert.from_bytes(_with_field(Alert, "details", f'{{"x": [{raw_json}]}}'))


def test_number_helper() -> None:
    assert number({"x": 3}, "x") == 3.0
    assert number({"x": -2.5}, "x") == -2.5
    for value in (True, "1", None, 10**400, float("inf"), float("nan")):
        with pytest.raises(SchemaError, match="'x'"):
            number({"x": value}, "x")
    with pytest.raises(SchemaError, match="missing"):
        number({}, "x")


_HOSTILE_VALUES = st.one_of(
    st.sampled_from(_HOSTILE_NUMBERS),
    st.integers(min_value=-(10**500), max_value=10**500).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
    st.text(max_size=20).map(json.dumps),
    st.integers(1, 3000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(1, 3000).map(lambda depth: "[" * depth),
)
_KINDS = st.sampled_from([RawPacket, WindowMessage, Prediction, Alert, DeadLetter])


@given(_KINDS, st.data())
def test_mutated_valid_messages_only_raise_schema_error(cls: type, data: st.DataObject) -> None:
    """A valid message with any field of its JSON header replaced by a hostile value."""
    original = _valid_bytes(cls)
    if cls in (RawPacket, WindowMessage):
        names = sorted(_frame_header(original))
    else:
        names = sorted(json.loads(original))
    name = data.draw(st.sampled_from(names))
    raw_json = data.draw(_HOSTILE_VALUES)
    if name == "features":
        inner = data.draw(st.sampled_from(sorted(FEATURES.to_dict())))
        raw_json = json.dumps({**FEATURES.to_dict(), inner: "__X__"}).replace('"__X__"', raw_json)
    with contextlib.suppress(SchemaError):
        decoded = cls.from_bytes(_with_field(cls, name, raw_json))  # type: ignore[attr-defined]
        # Whatever decodes must also re-encode (encoders refuse NaN/inf).
        decoded.to_bytes()


def test_motion_features_of_still_and_impact() -> None:
    still = np.zeros((128, 9), dtype=np.float32)
    still[:, 6] = 1.0  # gravity on x, upright
    features = motion_features(still)
    assert features.movement_energy == 0.0
    assert features.acc_std_g == 0.0
    assert features.peak_acc_g == pytest.approx(1.0)
    assert features.upright_cosine == pytest.approx(1.0)
    impact = still.copy()
    impact[60:65, 6] = 3.5
    assert motion_features(impact).peak_acc_g == pytest.approx(3.5)
    assert MotionFeatures.from_dict(features.to_dict()) == features


def test_topics_are_versioned_and_prefixed() -> None:
    topics = Topics("site-a")
    assert topics.windows == "site-a.windows.v1"
    assert topics.heartbeats == "site-a.heartbeats.v1"
    assert topics.shadow_predictions == "site-a.shadow-predictions.v1"
    assert len(set(topics.all())) == 7


def test_heartbeat_round_trip_and_hostile_bytes() -> None:
    beat = Heartbeat("ingest@host:1", 1_700_000_000.5)
    assert Heartbeat.from_bytes(beat.to_bytes()) == beat
    for bad in (
        b"",
        b"{}",
        b'{"schema":"harstream.heartbeat","v":1,"source":1,"sent_at":0}',
        RawPacket("d", 0, 0.0, 50.0, np.zeros((1, 6)), 0.0).to_bytes(),
    ):
        with pytest.raises(SchemaError):
            Heartbeat.from_bytes(bad)


_JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=8)
)
_HEADERS = st.dictionaries(
    st.text(max_size=6),
    st.recursive(
        _JSON_LEAVES,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
        max_leaves=8,
    ),
    max_size=6,
)


@given(_HEADERS)
def test_frame_headers_read_back_as_json_dumps_wrote_them(header: dict[str, Any]) -> None:
    """Frame headers are written by orjson where it gives json.dumps's document: the same
    document read back, and NaN or infinity anywhere refused as json.dumps refused it."""
    try:
        reference = json.dumps(header, separators=(",", ":"), allow_nan=False)
    except ValueError:
        with pytest.raises(ValueError, match="not JSON compliant"):
            encode_frame(b"HR", 1, header)
        return
    _, decoded, _ = decode_frame(encode_frame(b"HR", 1, header), b"HR", (1,))
    assert decoded == json.loads(reference)


def test_frame_headers_of_numpy_scalars_are_written_as_before() -> None:
    # orjson refuses numpy scalars; json.dumps writes a float64 as the float it is.
    header = {"x": np.float64(0.1), "n": 3}
    _, decoded, _ = decode_frame(encode_frame(b"HR", 1, header), b"HR", (1,))
    assert decoded == {"x": 0.1, "n": 3}
    with pytest.raises(ValueError, match="not JSON compliant"):
        encode_frame(b"HR", 1, {"x": np.float64("nan")})


def _frame(device_id: str, seq: int) -> bytes:
    return RawPacket(
        device_id, seq, 1.0e9, 50.0, np.full((3, 6), 0.5), received_at=2.0e9
    ).to_bytes()


def test_a_bundle_gives_back_its_frames_and_a_single_packet_is_itself() -> None:
    frames = [_frame("a", 1), _frame("b", 7), _frame("a", 2)]
    raw = split_raw(encode_bundle(frames, partition=5))
    assert raw.frames == tuple(frames) and raw.partition == 5 and raw.bundled
    single = split_raw(frames[0])
    assert single.frames == (frames[0],) and single.partition is None and not single.bundled


def test_raw_packets_decodes_every_packet_and_refuses_a_bundle_with_a_bad_one() -> None:
    bundle = encode_bundle([_frame("a", 1), _frame("b", 7)], partition=2)
    assert [(p.device_id, p.seq) for p in raw_packets(bundle)] == [("a", 1), ("b", 7)]
    assert [(p.device_id, p.seq) for p in raw_packets(_frame("c", 3))] == [("c", 3)]
    with pytest.raises(SchemaError):
        raw_packets(encode_bundle([_frame("a", 1), b"HR\x01junk"], partition=2))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (encode_bundle([_frame("a", 1)], 0)[:-3], "runs past the bundle"),
        (encode_bundle([_frame("a", 1)], 0) + b"\x00\x00", "inside the length"),
        (encode_bundle([_frame("a", 1)], 0).replace(b'"count":1', b'"count":2'), "header says 2"),
        (encode_bundle([], 0), "holds 0 frames"),
        (encode_bundle([_frame("a", 1)], partition=-1), "negative"),
        (None, "expected bytes"),
    ],
)
def test_a_broken_bundle_is_a_schema_error(value: Any, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        split_raw(value)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_after_a_bundle_magic_raise_only_schema_errors(tail: bytes) -> None:
    with contextlib.suppress(SchemaError):
        split_raw(b"HB\x01" + tail)


def test_a_packet_is_placed_by_its_key_and_a_bundle_by_its_partition() -> None:
    single = split_raw(_frame("a", 1))
    check_placement(single, b"a", 3, "a")
    with pytest.raises(SchemaError, match="is not the device id"):
        check_placement(single, b"b", 3, "a")
    bundle = split_raw(encode_bundle([_frame("a", 1)], partition=3))
    check_placement(bundle, None, 3, "a")
    with pytest.raises(SchemaError, match="built for partition 3 was read from 4"):
        check_placement(bundle, None, 4, "a")
    with pytest.raises(SchemaError, match="carries a key"):
        check_placement(bundle, b"a", 3, "a")
