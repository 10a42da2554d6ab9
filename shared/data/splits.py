"""The subject split of UCI HAR, plus a validation split drawn from training subjects only."""

from __future__ import annotations

from typing import Literal

Split = Literal["train", "validation", "test"]

#: UCI HAR's test subjects (9 of 30, ~30% of the windows).
TEST_SUBJECTS: frozenset[int] = frozenset({2, 4, 9, 10, 12, 13, 18, 20, 24})
#: Four of UCI HAR's 21 training subjects, held out to select checkpoints and stop training.
#: Chosen once, spread over the id range; never changed, so figures stay comparable.
VALIDATION_SUBJECTS: frozenset[int] = frozenset({5, 14, 22, 28})
TRAIN_SUBJECTS: frozenset[int] = frozenset(set(range(1, 31)) - TEST_SUBJECTS - VALIDATION_SUBJECTS)


def split_of(subject: int) -> Split:
    """Which split a subject's recordings belong to."""
    if subject in TEST_SUBJECTS:
        return "test"
    if subject in VALIDATION_SUBJECTS:
        return "validation"
    if 1 <= subject <= 30:
        return "train"
    raise ValueError(f"HAPT has subjects 1..30, not {subject}")
