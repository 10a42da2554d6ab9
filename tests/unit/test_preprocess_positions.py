"""Raw-topic positions in the state table and the rewind decision (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.preprocess.positions import (
    Rewind,
    decode_position,
    encode_position,
    position_key,
    rewinds,
)
from shared.errors import StateDecodeError


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_positions_round_trip(offset: int) -> None:
    assert decode_position(encode_position(offset)) == offset


@given(st.text(min_size=1, max_size=64))
def test_position_keys_never_collide_with_a_device_key(device_id: str) -> None:
    # Device states are keyed by the UTF-8 device id; 0xff never occurs in UTF-8.
    assert position_key("harstream.raw.v1", 0)[0] == 0xFF
    assert position_key("harstream.raw.v1", 0) != device_id.encode("utf-8", "surrogatepass")


def test_position_keys_differ_per_topic_and_partition() -> None:
    keys = {position_key(t, p) for t in ("a.raw.v1", "b.raw.v1") for p in range(12)}
    assert len(keys) == 24
    assert position_key("a", 1) != position_key("a", 11)


@pytest.mark.parametrize(
    "data",
    [b"", b"HSRP", encode_position(5)[:-1], b"XXXX" + encode_position(5)[4:],
     encode_position(5)[:4] + b"\x02" + encode_position(5)[5:],
     encode_position(5)[:5] + (-3).to_bytes(8, "little", signed=True)],
)  # fmt: skip
def test_damaged_positions_are_refused(data: bytes) -> None:
    with pytest.raises(StateDecodeError):
        decode_position(data)


def test_negative_positions_cannot_be_written() -> None:
    with pytest.raises(ValueError, match="offset"):
        encode_position(-1)


def test_partitions_committed_ahead_of_or_without_a_commit_get_the_restored_position() -> None:
    committed = {0: 120, 1: 50, 2: None, 3: 9, 4: 70, 5: None}
    restored = {0: 100, 1: 60, 2: 5, 4: 70}
    moves = rewinds(committed, restored)
    assert moves == [Rewind(0, 120, 100), Rewind(2, None, 5)]
    assert [m.packets for m in moves] == [20, 0]  # nothing committed: nothing read again
    assert rewinds({}, restored) == [] and rewinds(committed, {}) == []
