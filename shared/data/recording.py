"""One HAPT experiment: a subject's continuous 50 Hz recording with per-sample labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: HAPT was recorded at 50 Hz (Samsung Galaxy S II on the waist).
HAPT_SAMPLE_RATE_HZ = 50.0


@dataclass(frozen=True)
class Recording:
    """A continuous recording.

    Attributes:
        subject: volunteer id, 1..30.
        experiment: 1-based index of this subject's experiment (2 each, 3 for subject 10).
        samples: (n, 6) float64: acc x, y, z in g (total acceleration, gravity included),
            then gyro x, y, z in rad/s.
        labels: (n,) int16 HAPT labels per sample (see ``shared.activities.HaptLabel``).
    """

    subject: int
    experiment: int
    samples: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int16]

    @property
    def name(self) -> str:
        return f"s{self.subject:02d}e{self.experiment}"

    def __len__(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration_s(self) -> float:
        return len(self) / HAPT_SAMPLE_RATE_HZ
