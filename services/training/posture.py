"""Sitting vs standing: what tells them apart in our windows, and what a model relies on.

Two kinds of evidence, both printed by ``python -m services.training.posture MODEL_DIR ...``:

- the data: per subject, the angle between the mean gravity direction of its sitting and
  of its standing windows (the phone's tilt on the belt changes when the pelvis tips back
  on a chair), and how much more a standing body turns about the vertical (yaw sway);
- the model: its sitting/standing accuracy when the window is changed in one respect only:
  the phone turned by a fixed 20° (absolute tilt no longer where it was in training), the
  gyroscope silenced, the body's motion halved or doubled.

Nothing here is used to choose a model: it explains a chosen one, on any split.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from shared.activities import ACTIVITIES
from shared.dataset import WindowSet

SITTING = ACTIVITIES.index("SITTING")
STANDING = ACTIVITIES.index("STANDING")

Windows = npt.NDArray[np.float32]
Predict = Callable[[Windows], npt.NDArray[np.float32]]


def gravity_directions(x: Windows) -> npt.NDArray[np.float64]:
    """Unit gravity direction of each window: mean of ``total_acc - body_acc``."""
    gravity = (x[:, :, 6:9] - x[:, :, 0:3]).mean(axis=1).astype(np.float64)
    return gravity / np.maximum(np.linalg.norm(gravity, axis=1, keepdims=True), 1e-9)


def yaw_rate_spread(x: Windows) -> npt.NDArray[np.float64]:
    """Standard deviation (rad/s) of the turn rate about gravity within each window."""
    up = (x[:, :, 6:9] - x[:, :, 0:3]).astype(np.float64)
    up /= np.maximum(np.linalg.norm(up, axis=2, keepdims=True), 1e-9)
    yaw = (x[:, :, 3:6] * up).sum(axis=2)
    return yaw.std(axis=1)


@dataclass(frozen=True)
class SubjectPosture:
    """One subject's sitting and standing windows, summarised."""

    subject: int
    sitting: int
    standing: int
    #: Angle (degrees) between the mean gravity directions of sitting and of standing.
    tilt_degrees: float
    #: Median yaw-rate spread (mrad/s) while sitting and while standing.
    yaw_sitting: float
    yaw_standing: float


def subject_postures(windows: WindowSet) -> list[SubjectPosture]:
    rows = []
    directions = gravity_directions(windows.x)
    yaw = yaw_rate_spread(windows.x)
    for subject in np.unique(windows.subject):
        sit = (windows.subject == subject) & (windows.y == SITTING)
        stand = (windows.subject == subject) & (windows.y == STANDING)
        if not sit.any() or not stand.any():
            continue
        a, b = directions[sit].mean(axis=0), directions[stand].mean(axis=0)
        cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        rows.append(
            SubjectPosture(
                subject=int(subject),
                sitting=int(sit.sum()),
                standing=int(stand.sum()),
                tilt_degrees=float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))),
                yaw_sitting=1000 * float(np.median(yaw[sit])),
                yaw_standing=1000 * float(np.median(yaw[stand])),
            )
        )
    return rows


def _rotate(x: Windows, degrees: float, seed: int = 0) -> Windows:
    """Every window turned by ``degrees`` about its own random axis (fixed per seed)."""
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=(len(x), 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    k = np.zeros((len(x), 3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k -= k.transpose(0, 2, 1)
    angle = np.radians(degrees)
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)
    parts = [x[:, :, i : i + 3] @ rotation.transpose(0, 2, 1) for i in (0, 3, 6)]
    return np.concatenate(parts, axis=2).astype(np.float32)


def _scale_motion(x: Windows, factor: float) -> Windows:
    """Body acceleration and gyro scaled, gravity kept: total = gravity + factor × body."""
    out = x.copy()
    gravity = x[:, :, 6:9] - x[:, :, 0:3]
    out[:, :, 0:6] *= factor
    out[:, :, 6:9] = gravity + out[:, :, 0:3]
    return out


def _silence_gyro(x: Windows) -> Windows:
    out = x.copy()
    out[:, :, 3:6] = 0.0
    return out


#: The changes a model is probed with, each applied to every window.
PROBES: dict[str, Callable[[Windows], Windows]] = {
    "as recorded": lambda x: x,
    "phone turned 20°": lambda x: _rotate(x, 20.0),
    "gyroscope silenced": _silence_gyro,
    "body motion ×0.5": lambda x: _scale_motion(x, 0.5),
    "body motion ×2": lambda x: _scale_motion(x, 2.0),
}


@dataclass(frozen=True)
class ProbeResult:
    probe: str
    #: Accuracy over the sitting and standing windows (6-class prediction).
    accuracy: float
    #: Fraction of the sitting/standing windows predicted STANDING.
    called_standing: float


def probe_model(predict: Predict, windows: WindowSet) -> list[ProbeResult]:
    """Sitting/standing accuracy of ``predict`` under each of :data:`PROBES`."""
    still = windows.where(np.isin(windows.y, (SITTING, STANDING)))
    results = []
    for name, change in PROBES.items():
        predicted = predict(change(still.x)).argmax(axis=1)
        results.append(
            ProbeResult(
                probe=name,
                accuracy=float((predicted == still.y).mean()),
                called_standing=float((predicted == STANDING).mean()),
            )
        )
    return results


def render(
    postures: Sequence[SubjectPosture], probes: dict[str, list[ProbeResult]], split: str
) -> str:
    lines = [
        f"Sitting vs standing on the {split} subjects",
        "",
        "| subject | sitting | standing | tilt between them (°) | yaw sway sitting "
        "(mrad/s) | yaw sway standing (mrad/s) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {p.subject} | {p.sitting} | {p.standing} | {p.tilt_degrees:.1f} | "
        f"{p.yaw_sitting:.1f} | {p.yaw_standing:.1f} |"
        for p in postures
    ]
    for model, results in probes.items():
        lines += [
            "",
            f"{model}: accuracy on sitting + standing windows",
            "",
            "| window | accuracy | called standing |",
            "|---|---:|---:|",
        ]
        lines += [f"| {r.probe} | {r.accuracy:.2%} | {r.called_standing:.1%} |" for r in results]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    """``python -m services.training.posture [--split S] MODEL_DIR ...``"""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from services.training.evaluate import SavedModelPredictor, resolve_version_dir
    from shared.data.cache import HaptCache, default_cache_dir
    from shared.dataset import build_window_sets

    args = list(argv)
    split = "validation"
    if args[:1] == ["--split"]:
        split, args = args[1], args[2:]
    windows = build_window_sets(HaptCache(default_cache_dir()).load())[split]  # type: ignore[index]
    probes = {}
    for path in args:
        predictor = SavedModelPredictor(resolve_version_dir(Path(path)))
        probes[path] = probe_model(predictor.predict_proba, windows)
    print(render(subject_postures(windows), probes, split))  # noqa: T201


if __name__ == "__main__":
    main(sys.argv[1:])
