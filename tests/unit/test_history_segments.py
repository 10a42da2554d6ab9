"""The history segment builder: slots tile time, segments split where they should, and
at-least-once input (duplicates, replays after a restart, reordering) never counts a
window twice."""

from __future__ import annotations

import json
import random
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.history.segments import (
    DeviceState,
    Outcome,
    Segment,
    SegmentBuilder,
    SegmentConfig,
    Window,
    window_of,
)
from shared.activities import ACTIVITIES
from tests.unit.alerting_helpers import STEP_S, T0, WALKING, WINDOW_S, prediction

DEVICE = "dev-1"


def windows(labels: list[str], first: int = 0, version: int = 1) -> list[Window]:
    return [
        window_of(prediction(first + i, label, WALKING, device=DEVICE, model_version=version))
        for i, label in enumerate(labels)
    ]


def run(
    builder: SegmentBuilder, items: list[Window], stored: dict[tuple[str, float], Segment]
) -> list[Outcome]:
    outcomes = [builder.observe(DEVICE, w) for w in items]
    collect(builder, stored)
    return outcomes


def collect(builder: SegmentBuilder, stored: dict[tuple[str, float], Segment]) -> None:
    """What a checkpoint stores: the segments upserted by (device, start)."""
    segments, _ = builder.take_changes()
    for segment in segments:
        stored[(segment.device_id, segment.start)] = segment


def final(items: list[Window], config: SegmentConfig | None = None) -> list[Segment]:
    builder = SegmentBuilder(config)
    stored: dict[tuple[str, float], Segment] = {}
    run(builder, items, stored)
    builder.flush(DEVICE)
    collect(builder, stored)
    return sorted(stored.values())


def test_slot_is_the_middle_half_of_the_window() -> None:
    w = window_of(prediction(0, "WALKING", WALKING))
    assert w.start == pytest.approx(T0 + WINDOW_S / 4)
    assert w.end == pytest.approx(T0 + 3 * WINDOW_S / 4)
    assert w.end - w.start == pytest.approx(STEP_S)


def test_runs_of_one_activity_become_segments_that_tile_time() -> None:
    labels = ["WALKING"] * 10 + ["SITTING"] * 5 + ["WALKING"] * 3
    segments = final(windows(labels))
    assert [(s.activity, s.windows) for s in segments] == [
        ("WALKING", 10),
        ("SITTING", 5),
        ("WALKING", 3),
    ]
    for before, after in pairwise(segments):
        assert after.start == before.end  # no gap, no overlap
    assert segments[0].duration_s == pytest.approx(10 * STEP_S)
    assert segments[1].mean_confidence == pytest.approx(0.9)
    assert sum(s.duration_s for s in segments) == pytest.approx(len(labels) * STEP_S)


def test_model_version_change_and_long_gap_split_segments() -> None:
    items = windows(["WALKING"] * 4) + windows(["WALKING"] * 4, first=4, version=2)
    # 20 windows (25.6 s) missing: longer than max_gap_s.
    items += windows(["WALKING"] * 4, first=28, version=2)
    segments = final(items)
    assert [(s.model_version, s.windows) for s in segments] == [(1, 4), (2, 4), (2, 4)]
    assert segments[2].start - segments[1].end == pytest.approx(20 * STEP_S)


def test_small_gap_is_bridged() -> None:
    items = windows(["LAYING"] * 3) + windows(["LAYING"] * 3, first=5)  # 2 windows missing
    segments = final(items)
    assert len(segments) == 1 and segments[0].windows == 6
    assert segments[0].duration_s == pytest.approx(8 * STEP_S)


def test_duplicates_are_not_counted() -> None:
    items = windows(["WALKING"] * 6 + ["STANDING"] * 6)
    builder = SegmentBuilder()
    stored: dict[tuple[str, float], Segment] = {}
    outcomes = run(builder, [w for w in items for _ in range(2)], stored)
    assert outcomes.count(Outcome.ACCEPTED) == len(items)
    # Each copy right after its original: still buffered, so known by its window id.
    assert outcomes[1::2] == [Outcome.DUPLICATE] * len(items)
    builder.flush(DEVICE)
    collect(builder, stored)
    assert sorted(stored.values()) == final(items)


def test_a_replay_after_restoring_the_stored_state_counts_nothing_twice() -> None:
    items = windows(["WALKING"] * 20 + ["SITTING"] * 20 + ["LAYING"] * 20)
    expected = final(items)
    first = SegmentBuilder()
    stored: dict[tuple[str, float], Segment] = {}
    run(first, items[:35], stored)
    # The checkpoint: the state goes through JSON as the store keeps it.
    state = json.loads(json.dumps(first.state(DEVICE).to_dict()))  # type: ignore[union-attr]
    second = SegmentBuilder()
    second.restore(DEVICE, DeviceState.from_dict(state))
    # The restarted worker reads again from an offset committed before the checkpoint.
    outcomes = run(second, items[10:], stored)
    assert outcomes[:25].count(Outcome.ACCEPTED) == 0
    second.flush(DEVICE)
    collect(second, stored)
    assert sorted(stored.values()) == expected


def test_a_window_later_than_the_lateness_bound_is_stale() -> None:
    items = windows(["WALKING"] * 20)
    builder = SegmentBuilder(SegmentConfig(lateness_s=2.0))
    late = items.pop(3)
    for w in items:
        builder.observe(DEVICE, w)
    assert builder.observe(DEVICE, late) is Outcome.STALE


def test_the_buffer_is_bounded() -> None:
    builder = SegmentBuilder(SegmentConfig(lateness_s=1e9, max_pending=8))
    for w in windows(["WALKING"] * 50):
        builder.observe(DEVICE, w)
    state = builder.state(DEVICE)
    assert state is not None and len(state.pending) == 8
    assert state.open is not None and state.open.windows == 42


def test_a_new_timeline_with_later_times_is_not_a_replay() -> None:
    """Preprocess that lost its state starts the device at index 0 again, later in time."""
    items = windows(["WALKING"] * 5)
    restarted = [
        window_of(prediction(i, "SITTING", WALKING, device=DEVICE, t0=T0 + 600)) for i in range(5)
    ]
    assert {w.window_id for w in restarted} & {w.window_id for w in items}
    segments = final(items + restarted)
    assert [(s.activity, s.windows) for s in segments] == [("WALKING", 5), ("SITTING", 5)]


def test_state_survives_json() -> None:
    builder = SegmentBuilder()
    for w in windows(["WALKING"] * 3 + ["SITTING"] * 3):
        builder.observe(DEVICE, w)
    state = builder.state(DEVICE)
    assert state is not None
    assert DeviceState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    assert DeviceState.from_dict(DeviceState().to_dict()) == DeviceState()


def test_untake_gives_changes_back() -> None:
    builder = SegmentBuilder()
    for w in windows(["WALKING"] * 20):
        builder.observe(DEVICE, w)
    segments, states = builder.take_changes()
    assert segments and states and not builder.has_changes
    builder.untake(segments, states)
    again, again_states = builder.take_changes()
    assert again == segments and again_states == states


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Window], list[Window]]:
    """A stream of windows and the same delivered at least once: duplicated, and shuffled
    within the lateness bound."""
    n = draw(st.integers(min_value=1, max_value=80))
    labels = draw(st.lists(st.sampled_from(ACTIVITIES), min_size=n, max_size=n))
    # Runs, not noise: each label repeats a few times.
    runs = [label for label in labels for _ in range(draw(st.integers(1, 4)))][:n]
    # Some windows missing (gaps): indices skip.
    skips = draw(st.lists(st.booleans(), min_size=len(runs), max_size=len(runs)))
    items: list[Window] = []
    index = 0
    for label, skip in zip(runs, skips, strict=True):
        index += 1 + (3 if skip and draw(st.booleans()) else 0)
        items.append(window_of(prediction(index, label, WALKING, device=DEVICE)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = random.Random(seed)
    delivered = [w for w in items for _ in range(rng.choice((1, 1, 2, 3)))]
    # Bounded lateness: each copy arrives as if sent at most 3.5 s (device time) after its
    # window's time (the builder waits lateness_s = 5 s).
    keyed = sorted(((w.start + rng.uniform(0, 3.5), w) for w in delivered), key=lambda p: p[0])
    return items, [w for _, w in keyed]


@settings(max_examples=150, deadline=None)
@given(streams())
def test_at_least_once_and_reordered_delivery_gives_the_in_order_segments(
    stream: tuple[list[Window], list[Window]],
) -> None:
    items, delivered = stream
    expected = final(items)
    assert final(delivered) == expected
    assert sum(s.windows for s in expected) == len(items)


@settings(max_examples=100, deadline=None)
@given(streams(), st.data())
def test_any_checkpoint_and_replay_gives_the_same_segments(
    stream: tuple[list[Window], list[Window]], data: st.DataObject
) -> None:
    items, delivered = stream
    expected = final(items)
    cut = data.draw(st.integers(0, len(delivered)))
    back = data.draw(st.integers(0, cut))
    first = SegmentBuilder()
    stored: dict[tuple[str, float], Segment] = {}
    run(first, delivered[:cut], stored)
    state = first.state(DEVICE)
    second = SegmentBuilder()
    if state is not None:
        second.restore(DEVICE, DeviceState.from_dict(json.loads(json.dumps(state.to_dict()))))
    run(second, delivered[back:], stored)
    second.flush(DEVICE)
    collect(second, stored)
    assert sorted(stored.values()) == expected
