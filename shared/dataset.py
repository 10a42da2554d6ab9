"""Training-set builder: HAPT recordings → labelled windows, through the streaming core.

Each recording is fed to :class:`StreamingPreprocessor` as one device stream, so the windows a
model learns from are made by exactly the code that makes them live. A window is labelled
when all of its 128 samples carry the same basic activity (1..6); windows that straddle two
activities, postural transitions or unlabelled stretches get class -1 and are left out of
the splits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from shared.activities import ACTIVITIES, NUM_CLASSES, class_index_of
from shared.data.recording import Recording
from shared.data.splits import Split, split_of
from shared.dsp import PreprocessingConfig, StreamingPreprocessor, Windows

#: Window counts of the official UCI HAR release, for comparison.
UCI_HAR_WINDOW_COUNTS: dict[str, int] = {"train": 7352, "test": 2947}


@dataclass(frozen=True)
class WindowSet:
    """Labelled windows with where they came from.

    Attributes:
        x: (n, 128, 9) float32 windows (channels: ``shared.dsp.CHANNELS``).
        y: (n,) int64 class index 0..5 (``ACTIVITIES``), -1 where the window is not pure.
        subject: (n,) subject of each window.
        experiment: (n,) experiment number within the subject.
        start: (n,) first sample index of each window in its recording.
    """

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]
    subject: npt.NDArray[np.int64]
    experiment: npt.NDArray[np.int64]
    start: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def where(self, mask: npt.NDArray[np.bool_]) -> WindowSet:
        return WindowSet(
            self.x[mask], self.y[mask], self.subject[mask], self.experiment[mask], self.start[mask]
        )

    def labelled(self) -> WindowSet:
        return self.where(self.y >= 0)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.y[self.y >= 0], minlength=NUM_CLASSES)
        return {name: int(c) for name, c in zip(ACTIVITIES, counts, strict=True)}

    @classmethod
    def concat(cls, parts: Iterable[WindowSet]) -> WindowSet:
        items = list(parts)
        return cls(
            *(
                np.concatenate([getattr(p, f) for p in items])
                for f in ("x", "y", "subject", "experiment", "start")
            )
        )


def window_labels(
    labels: npt.NDArray[np.integer], starts: npt.NDArray[np.int64], size: int
) -> npt.NDArray[np.int64]:
    """Class index of each window starting at ``starts``, or -1 unless all samples agree."""
    if starts.size == 0:
        return np.zeros(0, dtype=np.int64)
    spans = labels[starts[:, None] + np.arange(size)[None, :]]
    pure = (spans == spans[:, :1]).all(axis=1)
    classes = class_index_of(spans[:, 0])
    return np.where(pure, classes, -1)


def windows_of_recording(recording: Recording, preprocessor: StreamingPreprocessor) -> WindowSet:
    """All windows of one recording (labelled or not), as the stream worker would emit them."""
    _, windows = preprocessor.process(preprocessor.new_state(), recording.samples)
    return _window_set(recording, windows, preprocessor.config.window_size)


def _window_set(recording: Recording, windows: Windows, size: int) -> WindowSet:
    n = len(windows)
    return WindowSet(
        x=windows.data,
        y=window_labels(recording.labels, windows.start_indices, size),
        subject=np.full(n, recording.subject, dtype=np.int64),
        experiment=np.full(n, recording.experiment, dtype=np.int64),
        start=windows.start_indices,
    )


def build_window_sets(
    recordings: Iterable[Recording],
    config: PreprocessingConfig | None = None,
    train_step: int | None = None,
) -> dict[Split, WindowSet]:
    """Labelled windows per split (train / validation / test subjects).

    ``train_step`` (samples) cuts the *training* split with a smaller step than the
    configuration's (more overlapping windows: augmentation); validation and test always use
    the configuration's step, as the live stream does. Filtering is the same either way.
    """
    config = config or PreprocessingConfig()
    stream = StreamingPreprocessor(config)
    train = stream
    if train_step is not None and train_step != config.window_step:
        train = StreamingPreprocessor(replace(config, window_step=train_step))
    parts: dict[Split, list[WindowSet]] = {"train": [], "validation": [], "test": []}
    for rec in recordings:
        split = split_of(rec.subject)
        pre = train if split == "train" else stream
        parts[split].append(windows_of_recording(rec, pre).labelled())
    return {split: WindowSet.concat(items) for split, items in parts.items() if items}
