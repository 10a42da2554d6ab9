"""The activity vocabulary of UCI HAR / HAPT and the mapping to model class indices."""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import numpy.typing as npt


class HaptLabel(IntEnum):
    """Per-sample labels as HAPT numbers them (-1: not labelled)."""

    UNLABELLED = -1
    WALKING = 1
    WALKING_UPSTAIRS = 2
    WALKING_DOWNSTAIRS = 3
    SITTING = 4
    STANDING = 5
    LAYING = 6
    STAND_TO_SIT = 7
    SIT_TO_STAND = 8
    SIT_TO_LIE = 9
    LIE_TO_SIT = 10
    STAND_TO_LIE = 11
    LIE_TO_STAND = 12


#: The six activities the model predicts, in class-index order (index 0 = WALKING).
ACTIVITIES: tuple[str, ...] = (
    "WALKING",
    "WALKING_UPSTAIRS",
    "WALKING_DOWNSTAIRS",
    "SITTING",
    "STANDING",
    "LAYING",
)
NUM_CLASSES = len(ACTIVITIES)


def class_index_of(labels: npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
    """Map HAPT labels 1..6 to class indices 0..5; anything else becomes -1."""
    labels = np.asarray(labels)
    out = labels.astype(np.int64) - 1
    out[(labels < HaptLabel.WALKING) | (labels > HaptLabel.LAYING)] = -1
    return out
