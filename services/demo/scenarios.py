"""Synthetic scenarios spliced from real HAPT segments (pure).

HAPT has no falls, so a fall is built the way fall-detection studies often do: real walking,
then an impact (a short acceleration burst of several g with a rotation burst), then real
lying. ``get_up_after_s`` appends the person getting up again (real lie-to-stand and
walking), which must cancel a pending fall alert if it happens within the confirmation wait.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shared.activities import HaptLabel
from shared.data.recording import Recording
from shared.errors import HarstreamError

RATE_HZ = 50.0


class ScenarioError(HarstreamError):
    """The recordings do not contain a long enough segment of an activity."""


@dataclass(frozen=True)
class Segment:
    samples: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int16]


def find_segment(recordings: Sequence[Recording], label: HaptLabel, seconds: float) -> Segment:
    """``seconds`` of ``label``. HAPT's labelled runs last ~15-20 s, so longer spans join
    consecutive runs (of the same recording first, then of the next ones)."""
    need = round(seconds * RATE_HZ)
    samples: list[npt.NDArray[np.float64]] = []
    labels: list[npt.NDArray[np.int16]] = []
    have = 0
    for rec in recordings:
        for start, stop in _runs(rec.labels, int(label)):
            samples.append(rec.samples[start:stop])
            labels.append(rec.labels[start:stop])
            have += stop - start
            if have >= need:
                return Segment(np.concatenate(samples)[:need], np.concatenate(labels)[:need])
    raise ScenarioError(f"no {seconds:.0f} s of {label.name} in {len(recordings)} recordings")


def impact(seconds: float = 0.2, peak_g: float = 3.5) -> Segment:
    """A fall's impact: a half-sine burst of ``peak_g`` on the vertical (x) axis plus a
    sideways jolt and a fast rotation."""
    n = max(3, round(seconds * RATE_HZ))
    shape = np.sin(np.linspace(0.0, np.pi, n))
    samples = np.zeros((n, 6))
    samples[:, 0] = 1.0 + (peak_g - 1.0) * shape
    samples[:, 1] = 1.5 * shape
    samples[:, 3:6] = 4.0 * shape[:, None]
    return Segment(samples, np.full(n, HaptLabel.UNLABELLED, dtype=np.int16))


def fall_scenario(
    recordings: Sequence[Recording],
    walk_s: float = 20.0,
    lie_s: float = 60.0,
    get_up_after_s: float | None = None,
) -> Segment:
    """Walking → impact → lying for ``lie_s`` (→ getting up and walking again)."""
    parts = [find_segment(recordings, HaptLabel.WALKING, walk_s), impact()]
    if get_up_after_s is None:
        parts.append(find_segment(recordings, HaptLabel.LAYING, lie_s))
    else:
        parts.append(find_segment(recordings, HaptLabel.LAYING, get_up_after_s))
        parts.append(_lie_to_stand(recordings))
        parts.append(find_segment(recordings, HaptLabel.WALKING, walk_s))
    return Segment(
        np.concatenate([p.samples for p in parts]), np.concatenate([p.labels for p in parts])
    )


def _lie_to_stand(recordings: Sequence[Recording]) -> Segment:
    for rec in recordings:
        runs = _runs(rec.labels, int(HaptLabel.LIE_TO_STAND))
        if runs:
            start, stop = runs[0]
            return Segment(rec.samples[start:stop], rec.labels[start:stop])
    raise ScenarioError("no LIE_TO_STAND transition in the recordings")


def _runs(labels: npt.NDArray[np.int16], value: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each maximal run of ``value``."""
    hit = np.concatenate([[False], labels == value, [False]])
    edges = np.flatnonzero(np.diff(hit.astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))
